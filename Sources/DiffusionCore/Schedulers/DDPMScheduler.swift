#if canImport(Glibc)
import Glibc
#endif

/// diffusers `DDPMScheduler` (Ho et al. ancestral sampling, Algorithm 2), with the learned
/// variances of improved DDPM (Nichol & Dhariwal): variance_type learned / learned_range make the
/// model output 2C channels per sample, the prediction and then v.
public final class DDPMScheduler: Scheduler {
    public let config: SchedulerConfig
    public let alphasCumprod: [Float]
    public let timesteps: [Float]
    let steps: [Int]
    let learned: Bool

    public init(config: SchedulerConfig, steps: Int) throws {
        let supported = ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]
        guard supported.contains(config.varianceType) else {
            throw DiffusionError(.unsupported, "variance_type \"\(config.varianceType)\" is not supported by ddpm (supported: \(supported.joined(separator: ", ")))")
        }
        self.config = config
        alphasCumprod = config.alphasCumprod()
        self.steps = try config.timesteps(steps: steps)
        timesteps = self.steps.map(Float.init)
        learned = config.varianceType.hasPrefix("learned")
    }

    public var guidesByMeanShift: Bool { true }
    public var modelOutputChannelFactor: Int { learned ? 2 : 1 }
    public func alphaProd(at index: Int) -> Float { alphasCumprod[steps[index]] }
    /// Noise is added whenever t > 0 (diffusers checks the timestep, not the step index).
    public func needsNoise(at index: Int) -> Bool { steps[index] > 0 }

    public func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>?, shape: SampleShape,
                     prev: UnsafeMutablePointer<Float>) {
        step(index: index, modelOutput: modelOutput, sample: sample, noise: noise, meanShift: meanShift,
             count: shape.count, batch: shape.batch, prev: prev, predOriginal: nil)
    }

    /// The step, optionally also writing the predicted x_0. `count` and `batch` describe the sample;
    /// with a learned variance each sample's model output is 2 × count / batch values (NCHW: the
    /// prediction's channels, then v's).
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
        // 2. predicted x0, 3. clipped or thresholded; a learned variance splits each sample's output
        // into the prediction and v along the channels
        let per = count / batch, outPer = per * modelOutputChannelFactor
        let x0 = predOriginal ?? prev
        for b in 0..<batch {
            config.predictOriginal(modelOutput: modelOutput + b * outPer, sample: sample + b * per, count: per,
                                   batch: 1, alphaProd: alphaProd, betaProd: betaProd, into: x0 + b * per)
        }
        // 4. coefficients of x0 and x_t in the posterior mean μ̃_t (formula 7 of the DDPM paper)
        let x0Coeff = (alphaProdPrev.squareRoot() * currentBeta) / betaProd
        let sampleCoeff = currentAlpha.squareRoot() * betaProdPrev / betaProd
        // 6. variance of the step: the posterior variance β̃_t (clamped to 1e-20), β_t, or learned
        let small = max((1 - alphaProdPrev) / (1 - alphaProd) * currentBeta, 1e-20)
        let noise = t > 0 ? noise : nil
        guard learned else {
            let variance: Float, std: Float
            switch config.varianceType {
            case "fixed_large": (variance, std) = (currentBeta, currentBeta.squareRoot())
            case "fixed_small_log": (variance, std) = (expf(logf(small)), expf(0.5 * logf(small)))
            default: (variance, std) = (small, small.squareRoot())
            }
            for i in 0..<count {
                // 5. μ̃_t (+ Σ s∇log p(y|x_t), Dhariwal & Nichol Algorithm 1), then 6. + σ_t z when t > 0
                var x = x0Coeff * x0[i] + sampleCoeff * sample[i]
                if let meanShift { x = x + variance * meanShift[i] }
                if let noise { x = x + std * noise[i] }
                prev[i] = x
            }
            return
        }
        // learned: Σ = v; learned_range: log Σ = f log β_t + (1 − f) log β̃_t with f = (v + 1) / 2
        let range = config.varianceType == "learned_range"
        let minLog = logf(small), maxLog = logf(currentBeta)
        for b in 0..<batch {
            let v = modelOutput + b * outPer + per
            for k in 0..<per {
                let i = b * per + k
                var x = x0Coeff * x0[i] + sampleCoeff * sample[i]
                if range {
                    let frac = (v[k] + 1) / 2
                    let logVariance = frac * maxLog + (1 - frac) * minLog
                    if let meanShift { x = x + expf(logVariance) * meanShift[i] }
                    if let noise { x = x + expf(0.5 * logVariance) * noise[i] }
                } else {
                    if let meanShift { x = x + v[k] * meanShift[i] }
                    if let noise { x = x + v[k].squareRoot() * noise[i] }
                }
                prev[i] = x
            }
        }
    }
}
