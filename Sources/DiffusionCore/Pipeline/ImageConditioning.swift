/// Starting from an image (img2img) and inpainting, in the order diffusers' pipelines work and
/// draw their random numbers (StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline).
extension DiffusionModel {
    private func checkImage(_ image: Tensor, _ sampler: Sampler, _ what: String) throws {
        let f = info.vaeScaleFactor
        guard image.c == imageChannels, image.h == sampler.height * f, image.w == sampler.width * f,
              image.n == 1 || image.n == sampler.batch else {
            throw DiffusionError(.invalidArgument, "\(what) is \(image.n)x\(image.c)x\(image.h)x\(image.w); expected 1 or \(sampler.batch) images of \(imageChannels)x\(sampler.height * f)x\(sampler.width * f) (the sampler's size)")
        }
        guard image.data.allFinite(image.count) else { throw DiffusionError(.invalidArgument, "\(what) holds non-finite values") }
    }

    /// One image repeated to the batch, or the batch as it is.
    private func batched(_ x: Tensor, _ batch: Int) throws -> Tensor {
        x.n == batch ? x : try Tensor.concatenatedBatch([Tensor](repeating: x, count: batch))
    }

    /// img2img: x_0 = the image (pixel model) or its VAE latents (latent model, the posterior
    /// sample drawn before the start noise), noised to the level `strength` picks.
    public func setInitImage(_ image: Tensor, strength: Double, on sampler: Sampler) throws {
        try checkImage(image, sampler, "the init image")
        guard let latent else {
            return try image.data.withMemoryRebound(to: Float.self, capacity: image.count) {
                try sampler.setInitImage($0, count: image.count, strength: strength)
            }
        }
        var x0: Tensor? = nil
        try sampler.redrawNoise(before: { g in
            var generator: TorchGenerator? = g
            x0 = try batched(try latent.encode(image, generator: &generator, threads: threads), sampler.batch)
            g = generator ?? g
        }, after: { _ in })
        guard let x0 else { return }
        try sampler.setInitImage(x0.data, count: x0.count, strength: strength)
    }

    /// Inpainting (white = repaint): `mask` holds 1 or batch planes of the image's height × width,
    /// values in [0, 1] (binarised at 0.5). A 9-channel UNet gets the mask and the masked image's
    /// latents as extra channels; a 4-channel UNet blends the known region back after each step.
    public func setInpainting(image: Tensor, mask: [Float], strength: Double, on sampler: Sampler) throws {
        guard let latent, let unet = conditionUNet else {
            throw DiffusionError(.unsupported, "inpainting needs a latent (Stable Diffusion) pipeline")
        }
        try checkImage(image, sampler, "the image to inpaint")
        let f = info.vaeScaleFactor, ih = image.h, iw = image.w, plane = ih * iw
        guard mask.count == plane || mask.count == sampler.batch * plane else {
            throw DiffusionError(.invalidArgument, "the mask has \(mask.count) values; expected \(ih)x\(iw) (one plane) or \(sampler.batch) planes")
        }
        guard mask.allSatisfy({ $0.isFinite }) else { throw DiffusionError(.invalidArgument, "the mask holds non-finite values") }
        let masks = mask.count / plane
        // Binarised (≥ 0.5 repaints); masked image = image · (mask < 0.5).
        let binary = mask.map { $0 < 0.5 ? Float(0) : 1 }
        let masked = try Tensor(n: max(image.n, masks), c: image.c, h: ih, w: iw)
        for n in 0..<masked.n {
            for c in 0..<image.c {
                for i in 0..<plane {
                    let pixel = image.data[((image.n == 1 ? 0 : n) * image.c + c) * plane + i]
                    masked.data[(n * image.c + c) * plane + i] = pixel * (1 - binary[(masks == 1 ? 0 : n) * plane + i])
                }
            }
        }
        // The mask at latent size: nearest, latent cell (y, x) reads pixel (y·f, x·f).
        let (h, w) = (sampler.height, sampler.width)
        var latentMask = [Float](repeating: 0, count: sampler.batch * h * w)
        for n in 0..<sampler.batch {
            for y in 0..<h { for x in 0..<w { latentMask[(n * h + y) * w + x] = binary[(masks == 1 ? 0 : n) * plane + y * f * iw + x * f] } }
        }
        let nineChannels = unet.config.extraChannels > 0
        guard nineChannels || unet.config.inChannels == unet.config.outChannels else {
            throw DiffusionError(.unsupported, "inpainting with a UNet of \(unet.config.inChannels) input channels")
        }
        if nineChannels, unet.config.extraChannels != 1 + info.latentChannels {
            throw DiffusionError(.unsupported, "an inpainting UNet takes x_t, the mask and the masked image's latents (\(2 * info.latentChannels + 1) channels); this one takes \(unet.config.inChannels)")
        }
        var imageLatents: Tensor? = nil, maskedLatents: Tensor? = nil
        let needsImage = !nineChannels || strength < 1
        try sampler.redrawNoise(before: { g in
            guard needsImage else { return }
            var generator: TorchGenerator? = g
            imageLatents = try batched(try latent.encode(image, generator: &generator, threads: threads), sampler.batch)
            g = generator ?? g
        }, after: { g in
            var generator: TorchGenerator? = g
            maskedLatents = try batched(try latent.encode(masked, generator: &generator, threads: threads), sampler.batch)
            g = generator ?? g
        })
        try sampler.setStrength(strength, imageLatents: imageLatents?.copyToArray())
        if nineChannels, let maskedLatents {
            let maskTensor = try Tensor(n: sampler.batch, c: 1, h: h, w: w)
            latentMask.withUnsafeBufferPointer { maskTensor.data.update(from: $0.baseAddress!, count: $0.count) }
            sampler.setExtraChannels(try concatChannels(maskTensor, maskedLatents))
        } else if let imageLatents {
            try sampler.setBlend(imageLatents: imageLatents.copyToArray(), mask: latentMask)
        }
    }
}
