/// diffusers `EulerAncestralDiscreteScheduler`: an Euler step down to σ_down, then fresh noise of
/// standard deviation σ_up (k-diffusion's sample_euler_ancestral, η = 1).
public final class EulerAncestralDiscreteScheduler: SigmaScheduler {
    public let config: SchedulerConfig
    public let timesteps: [Float]
    /// σ of each iteration, then 0.
    public let sigmas: [Float]
    public let initNoiseSigma: Float

    public init(config: SchedulerConfig, steps: Int) throws {
        if config.predictionType == .sample {
            // diffusers raises NotImplementedError for it
            throw DiffusionError(.unsupported, "prediction_type \"sample\" is not supported by euler_a (supported: epsilon, v_prediction)")
        }
        self.config = config
        let schedule = try DiscreteSigmas(config: config, steps: steps)
        timesteps = schedule.timesteps.map { Float($0) }
        sigmas = schedule.sigmas.map { Float($0) } + [0]
        initNoiseSigma = SigmaSchedule.initNoiseSigma(sigmas, spacing: config.timestepSpacing)
    }

    /// Every step draws noise (even the last, where σ_up = 0).
    public func needsNoise(at index: Int) -> Bool { true }

    public func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>?, shape: SampleShape,
                     prev: UnsafeMutablePointer<Float>) {
        // 1. x_0 from the model output
        let sigma = sigmas[index], sigmaTo = sigmas[index + 1]
        let prediction = SigmaPrediction(config.predictionType, sigma: sigma)
        // σ_up = sqrt(σ_to² (σ² − σ_to²) / σ²), σ_down = sqrt(σ_to² − σ_up²)
        let sigmaUp = (sigmaTo * sigmaTo * (sigma * sigma - sigmaTo * sigmaTo) / (sigma * sigma)).squareRoot()
        let sigmaDown = (sigmaTo * sigmaTo - sigmaUp * sigmaUp).squareRoot()
        // 2. ODE derivative, Euler step to σ_down, then + σ_up z
        let dt = sigmaDown - sigma
        for i in 0..<shape.count {
            let x = sample[i]
            let derivative = (x - prediction.x0(modelOutput[i], x)) / sigma
            var p = x + derivative * dt
            if let noise { p = p + noise[i] * sigmaUp }
            prev[i] = p
        }
    }

    /// add_noise: x_0 + σ ε at the iteration's σ.
}
