/// diffusers `DDIMScheduler` (Song et al., formula 12 of the DDIM paper).
public final class DDIMScheduler: Scheduler {
    public let config: SchedulerConfig
    public let alphasCumprod: [Float]
    public let timesteps: [Float]
    public let eta: Float
    let steps: [Int]
    let finalAlphaCumprod: Float
    let stepRatio: Int

    public init(config: SchedulerConfig, steps: Int, eta: Float) throws {
        guard eta.isFinite, eta >= 0 else { throw DiffusionError(.invalidArgument, "eta \(eta) must be a finite number >= 0") }
        self.config = config
        self.eta = eta
        alphasCumprod = config.alphasCumprod()
        self.steps = try config.timesteps(steps: steps)
        timesteps = self.steps.map(Float.init)
        finalAlphaCumprod = config.setAlphaToOne ? 1 : alphasCumprod[0]
        stepRatio = config.numTrainTimesteps / steps
    }

    public func alphaProd(at index: Int) -> Float { alphasCumprod[steps[index]] }
    public func needsNoise(at index: Int) -> Bool { eta > 0 }

    public func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>?, shape: SampleShape,
                     prev: UnsafeMutablePointer<Float>) {
        step(index: index, modelOutput: modelOutput, sample: sample, noise: noise, count: shape.count,
             batch: shape.batch, prev: prev, predOriginal: nil)
    }

    /// The step, optionally also writing the predicted x_0.
    public func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, count: Int, batch: Int,
                     prev: UnsafeMutablePointer<Float>, predOriginal: UnsafeMutablePointer<Float>?) {
        // 1. previous step value: t - num_train_timesteps // num_inference_steps, whatever the spacing
        let t = steps[index]
        let prevT = t - stepRatio
        // 2. alphas and betas
        let alphaProd = alphasCumprod[t]
        let alphaProdPrev = prevT >= 0 ? alphasCumprod[prevT] : finalAlphaCumprod
        let betaProd = 1 - alphaProd
        let betaProdPrev = 1 - alphaProdPrev
        // 3. predicted x0, 4. clipped or thresholded (eps stays the model's)
        let x0 = predOriginal ?? prev
        config.predictOriginal(modelOutput: modelOutput, sample: sample, count: count, batch: batch,
                               alphaProd: alphaProd, betaProd: betaProd, into: x0)
        // 5. σ_t(η) = η sqrt((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_{t-1})
        let variance = (betaProdPrev / betaProd) * (1 - alphaProd / alphaProdPrev)
        let std = eta * variance.squareRoot()
        let directionCoeff = (1 - alphaProdPrev - std * std).squareRoot()
        let x0Coeff = alphaProdPrev.squareRoot()
        for i in 0..<count {
            let eps = predictOriginal(config.predictionType, modelOutput: modelOutput[i], sample: sample[i],
                                      alphaProd: alphaProd, betaProd: betaProd).eps
            // 6. direction pointing to x_t, 7. x_{t-1} without noise, then + σ_t z
            var x = x0Coeff * x0[i] + directionCoeff * eps
            if eta > 0, let noise { x = x + std * noise[i] }
            prev[i] = x
        }
    }
}
