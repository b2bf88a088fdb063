#if canImport(Glibc)
import Glibc
#endif

/// diffusers `DDPMScheduler` (Ho et al. ancestral sampling, Algorithm 2).
public final class DDPMScheduler: Scheduler {
    public let config: SchedulerConfig
    public let alphasCumprod: [Float]
    public let timesteps: [Float]
    let steps: [Int]

    public init(config: SchedulerConfig, steps: Int) throws {
        guard ["fixed_small", "fixed_small_log", "fixed_large"].contains(config.varianceType) else {
            throw DiffusionError(.unsupported, "variance_type \"\(config.varianceType)\" is not supported by ddpm (supported: fixed_small, fixed_small_log, fixed_large)")
        }
        self.config = config
        alphasCumprod = config.alphasCumprod()
        self.steps = try config.timesteps(steps: steps)
        timesteps = self.steps.map(Float.init)
    }

    public var guidesByMeanShift: Bool { true }
    public func alphaProd(at index: Int) -> Float { alphasCumprod[steps[index]] }
    /// Noise is added whenever t > 0 (diffusers checks the timestep, not the step index).
    public func needsNoise(at index: Int) -> Bool { steps[index] > 0 }

    public func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>?, shape: SampleShape,
                     prev: UnsafeMutablePointer<Float>) {
        step(index: index, modelOutput: modelOutput, sample: sample, noise: noise, meanShift: meanShift,
             count: shape.count, batch: shape.batch, prev: prev, predOriginal: nil)
    }

    /// The step, optionally also writing the predicted x_0.
    public func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>? = nil, count: Int, batch: Int,
                     prev: UnsafeMutablePointer<Float>, predOriginal: UnsafeMutablePointer<Float>?) {
        // 1. previous timestep and the alphas/betas at t and t-1
        let t = steps[index]
        let prevT = index + 1 < steps.count ? steps[index + 1] : -1
        let alphaProd = alphasCumprod[t]
        let alphaProdPrev: Float = prevT >= 0 ? alphasCumprod[prevT] : 1
        let betaProd = 1 - alphaProd
        let betaProdPrev = 1 - alphaProdPrev
        let currentAlpha = alphaProd / alphaProdPrev
        let currentBeta = 1 - currentAlpha
        // 2. predicted x0, 3. clipped or thresholded
        let x0 = predOriginal ?? prev
        config.predictOriginal(modelOutput: modelOutput, sample: sample, count: count, batch: batch,
                               alphaProd: alphaProd, betaProd: betaProd, into: x0)
        // 4. coefficients of x0 and x_t in the posterior mean μ̃_t (formula 7 of the DDPM paper)
        let x0Coeff = (alphaProdPrev.squareRoot() * currentBeta) / betaProd
        let sampleCoeff = currentAlpha.squareRoot() * betaProdPrev / betaProd
        // 6. variance of the step
        let small = max((1 - alphaProdPrev) / (1 - alphaProd) * currentBeta, 1e-20)
        let variance: Float
        switch config.varianceType {
        case "fixed_large": variance = currentBeta
        case "fixed_small_log": variance = expf(logf(small))
        default: variance = small
        }
        let std: Float
        switch config.varianceType {
        case "fixed_large": std = currentBeta.squareRoot()
        case "fixed_small_log": std = expf(0.5 * logf(small))
        default: std = small.squareRoot()
        }
        for i in 0..<count {
            // 5. μ̃_t (+ Σ s∇log p(y|x_t), Dhariwal & Nichol Algorithm 1), then 6. + σ_t z when t > 0
            var x = x0Coeff * x0[i] + sampleCoeff * sample[i]
            if let meanShift { x = x + variance * meanShift[i] }
            if t > 0, let noise { x = x + std * noise[i] }
            prev[i] = x
        }
    }
}
