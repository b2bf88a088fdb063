/// diffusers `LMSDiscreteScheduler`: the linear multistep method (order 4, step()'s default) on the
/// probability-flow ODE in σ (k-diffusion's sample_lms). Each coefficient is the integral over
/// [σ_i, σ_{i+1}] of a Lagrange basis polynomial through the last σ's.
public final class LMSDiscreteScheduler: SigmaScheduler {
    public let config: SchedulerConfig
    public let timesteps: [Float]
    /// σ of each iteration, then 0.
    public let sigmas: [Float]
    public let initNoiseSigma: Float
    /// The multistep order (diffusers' step(order=4)).
    public let lmsOrder = 4

    // The derivatives of the last iterations, newest first (diffusers' self.derivatives reversed).
    private var derivatives: [[Float]] = []
    private var lastIndex = -1

    public init(config: SchedulerConfig, steps: Int) throws {
        let karras = try DiscreteSigmas.readKarras(config, scheduler: "lms")
        self.config = config
        var schedule = try DiscreteSigmas(config: config, steps: steps)
        if karras { schedule.useKarras(steps: steps) }
        timesteps = schedule.timesteps.map { Float($0) }
        let sigmas = schedule.sigmas.map { Float($0) } + [0]
        self.sigmas = sigmas
        // The LMS coefficients interpolate through the previous noise levels: a repeated level divides
        // by zero (diffusers computes NaN there).
        if let i = sigmas.indices.dropLast().first(where: { !(sigmas[$0] > sigmas[$0 + 1]) }) {
            throw DiffusionError(.invalidArgument, "lms needs strictly decreasing noise levels; with these settings sigma[\(i)] = \(sigmas[i]) and sigma[\(i + 1)] = \(sigmas[i + 1]) (fewer steps, or another beta schedule)")
        }
        initNoiseSigma = SigmaSchedule.initNoiseSigma(sigmas, spacing: config.timestepSpacing)
    }

    public func needsNoise(at index: Int) -> Bool { false }

    /// get_lms_coefficient: ∫ from σ_t to σ_{t+1} of Π_{k ≠ j} (τ − σ_{t−k}) / (σ_{t−j} − σ_{t−k}) dτ,
    /// k < order. diffusers integrates with scipy's quad; the integrand is a polynomial of degree
    /// order − 1 ≤ 3, so 3-point Gauss–Legendre in double is exact (up to rounding).
    func coefficient(order: Int, t: Int, j: Int) -> Double {
        let a = Double(sigmas[t]), b = Double(sigmas[t + 1])
        let half = (b - a) / 2, mid = (a + b) / 2
        let r = (3.0 / 5.0).squareRoot()
        let nodes: [(Double, Double)] = [(-r, 5.0 / 9.0), (0, 8.0 / 9.0), (r, 5.0 / 9.0)]
        var sum = 0.0
        for (x, w) in nodes {
            let tau = mid + half * x
            var prod = 1.0
            for k in 0..<order where k != j {
                prod *= (tau - Double(sigmas[t - k])) / (Double(sigmas[t - j]) - Double(sigmas[t - k]))
            }
            sum += w * prod
        }
        return sum * half
    }

    public func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>?, shape: SampleShape,
                     prev: UnsafeMutablePointer<Float>) {
        let count = shape.count
        // a run that does not continue the last one starts without history (as after set_timesteps)
        if index != lastIndex + 1 { derivatives.removeAll() }
        lastIndex = index
        let sigma = sigmas[index]
        let prediction = SigmaPrediction(config.predictionType, sigma: sigma)
        // 1–2. x_0, then the ODE derivative (x − x_0) / σ, kept for the next steps (at most `order`)
        var derivative = derivatives.count == lmsOrder ? derivatives.removeLast() : [Float](repeating: 0, count: count)
        if derivative.count != count { derivative = [Float](repeating: 0, count: count) }
        for i in 0..<count {
            let x = sample[i]
            derivative[i] = (x - prediction.x0(modelOutput[i], x)) / sigma
        }
        derivatives.insert(derivative, at: 0)
        // 3. coefficients of order min(i + 1, 4); diffusers zips them with the derivatives it has
        // (fewer than the order only when a run starts late, as img2img does)
        let order = min(index + 1, lmsOrder)
        let used = min(order, derivatives.count)
        var coeffs = [Float](repeating: 0, count: used)
        for j in 0..<used { coeffs[j] = Float(coefficient(order: order, t: index, j: j)) }
        // 4. x' = x + Σ_j c_j d_{i−j}, summed in that order (float32)
        for i in 0..<count {
            var acc = coeffs[0] * derivatives[0][i]
            for j in 1..<used { acc = acc + coeffs[j] * derivatives[j][i] }
            prev[i] = sample[i] + acc
        }
    }

    /// add_noise: x_0 + σ ε at the iteration's σ.
}
