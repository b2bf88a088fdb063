#if canImport(Glibc)
import Glibc
#endif

/// diffusers `EulerDiscreteScheduler`: Euler's method on the probability-flow ODE in σ
/// (Karras et al. 2022, Algorithm 2 with s_churn = 0, so no noise is ever drawn).
public final class EulerDiscreteScheduler: SigmaScheduler {
    public let config: SchedulerConfig
    public let timesteps: [Float]
    /// σ of each iteration, then the final σ (0, or σ_min with final_sigmas_type "sigma_min").
    public let sigmas: [Float]
    public let initNoiseSigma: Float

    public init(config: SchedulerConfig, steps: Int) throws {
        let r = config.reader
        let name = "euler"
        let karras = try DiscreteSigmas.readKarras(config, scheduler: name)
        let interpolation = try r.string("interpolation_type", "linear")
        guard ["linear", "log_linear"].contains(interpolation) else {
            throw DiffusionError(.unsupported, "interpolation_type \"\(interpolation)\" is not supported by \(name) (supported: linear, log_linear)")
        }
        let finalSigmas = try r.string("final_sigmas_type", "zero")
        guard ["zero", "sigma_min"].contains(finalSigmas) else {
            throw DiffusionError(.unsupported, "final_sigmas_type \"\(finalSigmas)\" is not supported by \(name) (supported: zero, sigma_min)")
        }
        let timestepType = try r.string("timestep_type", "discrete")
        guard ["discrete", "continuous"].contains(timestepType) else {
            throw DiffusionError(.unsupported, "timestep_type \"\(timestepType)\" is not supported by \(name) (supported: discrete, continuous)")
        }
        let sigmaMin = try r.optionalDouble("sigma_min"), sigmaMax = try r.optionalDouble("sigma_max")
        for (key, v) in [("sigma_min", sigmaMin), ("sigma_max", sigmaMax)] where v.map({ $0 <= 0 }) == true {
            throw DiffusionError(.invalidFile, "\(key) must be a number > 0, got \(v!)")
        }
        self.config = config

        var schedule = try DiscreteSigmas(config: config, steps: steps)
        if interpolation == "log_linear" { schedule.useLogLinear(steps: steps) }
        if karras { schedule.useKarras(steps: steps, sigmaMin: sigmaMin, sigmaMax: sigmaMax) }
        let last = finalSigmas == "sigma_min" ? schedule.training[0] : 0
        sigmas = schedule.sigmas.map { Float($0) } + [last]
        if timestepType == "continuous" && config.predictionType == .vPrediction {
            // timesteps = 0.25 log σ of every σ but the final one (float32)
            timesteps = sigmas.dropLast().map { 0.25 * Float(log(Double($0))) }
        } else {
            timesteps = schedule.timesteps.map { Float($0) }
        }
        initNoiseSigma = SigmaSchedule.initNoiseSigma(sigmas, spacing: config.timestepSpacing)
    }

    public func needsNoise(at index: Int) -> Bool { false }

    public func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>?, shape: SampleShape,
                     prev: UnsafeMutablePointer<Float>) {
        // σ̂ = σ (γ = 0); x_0 from the model output; d = (x − x_0) / σ̂; x' = x + d (σ_next − σ̂)
        let sigma = sigmas[index]
        let prediction = SigmaPrediction(config.predictionType, sigma: sigma)
        let dt = sigmas[index + 1] - sigma
        for i in 0..<shape.count {
            let x = sample[i]
            let derivative = (x - prediction.x0(modelOutput[i], x)) / sigma
            prev[i] = x + derivative * dt
        }
    }

    /// add_noise: x_0 + σ ε at the iteration's σ.
}
