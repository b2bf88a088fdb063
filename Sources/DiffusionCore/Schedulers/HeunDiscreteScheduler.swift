/// diffusers `HeunDiscreteScheduler`: Heun's second-order method on the probability-flow ODE in σ
/// (Karras et al. 2022, Algorithm 1). Each inference step but the last is two iterations: an Euler step
/// σ_i → σ_{i+1}, then a correction that averages the derivatives at both ends; the last is Euler to 0.
public final class HeunDiscreteScheduler: SigmaScheduler {
    public let config: SchedulerConfig
    /// [t_0, t_1, t_1, ..., t_{n−1}, t_{n−1}]: 2n − 1 iterations.
    public let timesteps: [Float]
    /// [σ_0, σ_1, σ_1, ..., σ_{n−1}, σ_{n−1}, 0], the σ of each iteration then 0.
    public let sigmas: [Float]
    public let initNoiseSigma: Float
    public var order: Int { 2 }

    // The first-order iteration's derivative, dt and sample, kept for the correction that follows.
    private var prevDerivative: [Float] = []
    private var dt: Float = 0
    private var firstSample: [Float] = []

    public init(config: SchedulerConfig, steps: Int) throws {
        let karras = try DiscreteSigmas.readKarras(config, scheduler: "heun")
        self.config = config
        var schedule = try DiscreteSigmas(config: config, steps: steps)
        if karras { schedule.useKarras(steps: steps) }
        let s = schedule.sigmas.map { Float($0) } + [0]
        let t = schedule.timesteps.map { Float($0) }
        // every σ but the first and last twice; every timestep but the first twice
        sigmas = [s[0]] + s[1..<(s.count - 1)].flatMap { [$0, $0] } + [0]
        timesteps = [t[0]] + t.dropFirst().flatMap { [$0, $0] }
        initNoiseSigma = SigmaSchedule.initNoiseSigma(sigmas, spacing: config.timestepSpacing)
    }

    public func needsNoise(at index: Int) -> Bool { false }

    /// Even iterations are first order, odd ones the correction (diffusers' state_in_first_order: every
    /// run starts at an even iteration, img2img's begin being t_start × order).
    public func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>?, shape: SampleShape,
                     prev: UnsafeMutablePointer<Float>) {
        let count = shape.count
        let clip = config.clipSample, range = Float(config.clipSampleRange)
        if index % 2 == 0 {
            // first order: σ = sigmas[i] (σ̂ = σ, γ = 0), σ_next = sigmas[i + 1]
            let sigma = sigmas[index]
            let prediction = SigmaPrediction(config.predictionType, sigma: sigma)
            // 2. ODE derivative (x − x_0) / σ̂, 3. dt = σ_next − σ̂; kept for the correction
            dt = sigmas[index + 1] - sigma
            if prevDerivative.count != count {
                prevDerivative = [Float](repeating: 0, count: count)
                firstSample = [Float](repeating: 0, count: count)
            }
            for i in 0..<count {
                let x = sample[i]
                var x0 = prediction.x0(modelOutput[i], x)
                if clip { x0 = min(max(x0, -range), range) }
                let derivative = (x - x0) / sigma
                prevDerivative[i] = derivative
                firstSample[i] = x
                prev[i] = x + derivative * dt
            }
        } else {
            // second order: the model was evaluated at σ_next = sigmas[i]; d = (d_first + d_next) / 2,
            // applied from the first-order iteration's sample over its dt
            precondition(prevDerivative.count == count, "heun: correction step \(index) without its first-order step")
            let sigmaNext = sigmas[index]
            let prediction = SigmaPrediction(config.predictionType, sigma: sigmaNext)
            for i in 0..<count {
                let x = sample[i]
                var x0 = prediction.x0(modelOutput[i], x)
                if clip { x0 = min(max(x0, -range), range) }
                let derivative = (prevDerivative[i] + (x - x0) / sigmaNext) / 2
                prev[i] = firstSample[i] + derivative * dt
            }
        }
    }

    /// add_noise: x_0 + σ ε at the iteration's σ.
}
