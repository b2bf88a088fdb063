/// diffusers `LCMScheduler` (Luo et al., latent consistency models): each step maps x_t to the
/// consistency function's x_0 estimate c_skip(t) x_t + c_out(t) x̂_0, then noises it afresh to the
/// next timestep (the last step returns the estimate itself).
public final class LCMScheduler: Scheduler {
    public let config: SchedulerConfig
    public let alphasCumprod: [Float]
    public let timesteps: [Float]
    /// The distillation schedule's length: the timesteps are taken from its k·i − 1 points.
    public let originalInferenceSteps: Int
    /// The factor timesteps are scaled by in c_skip and c_out.
    public let timestepScaling: Double
    let steps: [Int]

    public init(config: SchedulerConfig, steps: Int) throws {
        let r = config.reader
        let n = config.numTrainTimesteps
        originalInferenceSteps = try r.int("original_inference_steps", 50, min: 1)
        timestepScaling = try r.double("timestep_scaling", 10)
        guard originalInferenceSteps <= n else {
            throw DiffusionError(.invalidArgument, "original_inference_steps \(originalInferenceSteps) must be at most num_train_timesteps (\(n))")
        }
        guard steps >= 1, steps <= originalInferenceSteps else {
            throw DiffusionError(.invalidArgument, "steps \(steps) must be between 1 and original_inference_steps (\(originalInferenceSteps)) for lcm")
        }
        self.config = config
        alphasCumprod = config.alphasCumprod()
        // The distillation schedule k·i − 1 (i = original_steps … 1, k = n // original_steps); the
        // inference timesteps sit at floor(linspace(0, original_steps, steps, endpoint=False)) in it
        // (timestep_spacing and steps_offset play no part).
        let original = originalInferenceSteps, k = n / original
        let stride = Double(original) / Double(steps)
        self.steps = (0..<steps).map { j in (original - Int((Double(j) * stride).rounded(.down))) * k - 1 }
        timesteps = self.steps.map(Float.init)
    }

    public func alphaProd(at index: Int) -> Float { alphasCumprod[steps[index]] }
    /// Noise is drawn in every step but the last.
    public func needsNoise(at index: Int) -> Bool { index != steps.count - 1 }

    /// c_skip = σ_d² / ((t s)² + σ_d²), c_out = t s / sqrt((t s)² + σ_d²), σ_d = 0.5, in float32
    /// (diffusers multiplies the int64 timestep tensor by timestep_scaling).
    func boundaryScalings(_ t: Int) -> (cSkip: Float, cOut: Float) {
        let scaled = Float(t) * Float(timestepScaling)
        let sq = scaled * scaled + 0.25
        return (0.25 / sq, scaled / sq.squareRoot())
    }

    public func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>?, shape: SampleShape,
                     prev: UnsafeMutablePointer<Float>) {
        // 1. the previous timestep is the next in the list (the last step stays at t)
        let t = steps[index]
        let last = index == steps.count - 1
        let prevT = last ? t : steps[index + 1]
        // 2. alphas and betas
        let alphaProd = alphasCumprod[t]
        let alphaProdPrev = alphasCumprod[prevT]
        let betaProd = 1 - alphaProd
        let betaProdPrev = 1 - alphaProdPrev
        // 3. boundary-condition scalings, 4. predicted x0, 5. clipped or thresholded
        let (cSkip, cOut) = boundaryScalings(t)
        let count = shape.count
        config.predictOriginal(modelOutput: modelOutput, sample: sample, count: count, batch: shape.batch,
                               alphaProd: alphaProd, betaProd: betaProd, into: prev)
        // 6. denoised = c_out x̂_0 + c_skip x_t; 7. + fresh noise at the next level except in the last step
        let sa = alphaProdPrev.squareRoot(), sb = betaProdPrev.squareRoot()
        for i in 0..<count {
            let denoised = cOut * prev[i] + cSkip * sample[i]
            if last {
                prev[i] = denoised
            } else {
                prev[i] = sa * denoised + sb * (noise?[i] ?? 0)
            }
        }
    }
}
