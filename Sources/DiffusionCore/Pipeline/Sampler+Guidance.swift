/// Classifier-free guidance (one batch of two, unconditional first, as diffusers), its rescale,
/// and classifier guidance in the eps form: how a step turns the network into one prediction.
extension Sampler {
    /// eps' = eps − sqrt(1 − ᾱ) s ∇log p(y|x_t) (Dhariwal & Nichol, Algorithm 2), written in the
    /// model's prediction type: v moves by Δeps / sqrt(ᾱ), x_0 by −sqrt(1 − ᾱ) / sqrt(ᾱ) Δeps.
    func applyEpsilonGuidance(_ grad: [Float], scale: Float, index: Int, to output: Tensor) {
        let a = scheduler.alphaProd(at: index)
        let b = (1 - a).squareRoot()
        let factor: Float
        switch scheduler.config.predictionType {
        case .epsilon: factor = 1
        case .vPrediction: factor = 1 / a.squareRoot()
        case .sample: factor = -b / a.squareRoot()
        }
        let per = shape.perSample, outPer = output.count / batch
        for n in 0..<batch {
            for k in 0..<per { output.data[n * outPer + k] += factor * (-b * scale * grad[n * per + k]) }
        }
    }

    /// The network's output, its temporaries in the sampler's arena.
    private func predict(_ x: Tensor, timesteps: [Float], conditioning: Conditioning) throws -> Tensor {
        guard let arena else { return try network.predict(x, timesteps: timesteps, conditioning: conditioning, threads: threads) }
        return try arena.evaluate { try network.predict(x, timesteps: timesteps, conditioning: conditioning, threads: threads) }
    }

    /// The network's output for the model input x, with classifier-free guidance when the scale is
    /// not 1: out = out_uncond + scale (out_cond − out_uncond), both halves evaluated as one batch
    /// (unconditional first, as diffusers). With learned variances (2C output channels) only the
    /// first C are guided; the variance channels come from the conditional half (as GLIDE and DiT).
    func evaluate(_ x: Tensor, timestep t: Float) throws -> Tensor {
        guard guides, let unconditional else {
            do {
                return try predict(x, timesteps: [Float](repeating: t, count: batch), conditioning: conditional)
            } catch let e as DiffusionError where model == nil {
                throw DiffusionError(e.code, "denoiser at step \(stepIndex + 1) (timestep \(t)): \(e.message)")
            }
        }
        let doubled = try Tensor.concatenatedBatch([x, x])
        let out = try predict(doubled, timesteps: [Float](repeating: t, count: 2 * batch),
                              conditioning: .batch(unconditional, conditional))
        let guided = try Tensor(n: batch, c: out.c, h: height, w: width)
        let half = guided.count, s = guidanceScale
        let outPer = half / batch, guidedPer = shape.perSample
        for b in 0..<batch {
            for k in 0..<outPer {
                let i = b * outPer + k
                let u = out.data[i], c = out.data[half + i]
                guided.data[i] = k < guidedPer ? u + s * (c - u) : c
            }
        }
        if guidanceRescale > 0 { rescaleGuided(guided, conditional: out.data + half) }
        return guided
    }

    /// diffusers' rescale_noise_cfg: per sample, std over (C, H, W) with Bessel's correction, as torch.
    func rescaleGuided(_ guided: Tensor, conditional text: UnsafePointer<Float>) {
        let per = guided.count / batch, r = guidanceRescale
        func std(_ p: UnsafePointer<Float>) -> Double {
            var mean = 0.0
            for k in 0..<per { mean += Double(p[k]) }
            mean /= Double(per)
            var ss = 0.0
            for k in 0..<per { let d = Double(p[k]) - mean; ss += d * d }
            return (ss / Double(max(per - 1, 1))).squareRoot()
        }
        for b in 0..<batch {
            let g = guided.data + b * per
            let factor = Float(std(text + b * per) / std(UnsafePointer(g)))
            for k in 0..<per { g[k] = r * (g[k] * factor) + (1 - r) * g[k] }
        }
    }
}
