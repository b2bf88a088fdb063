#if canImport(Glibc)
import Glibc
#endif

/// What the k-diffusion style schedulers (Euler, Euler ancestral, Heun, LMS) share: their inference
/// timesteps and noise levels as diffusers' set_timesteps computes them, the x_0 of a model output at
/// noise level σ, and the settings they refuse.
extension SigmaSchedule {
    /// The inference timesteps in float32: linspace = np.linspace(0, T − 1, n, dtype=float32)[::-1];
    /// leading = (arange(n) × (T // n))[::-1] + steps_offset; trailing = np.arange(T, 0, −T/n).round() − 1.
    /// Trailing keeps numpy's arange exactly (its length ceil(T / (T/n)) may be n + 1, and its values
    /// are T + i·((T − T/n) − T)), so the .5 ties round as numpy rounds them.
    static func spacedTimesteps(_ config: SchedulerConfig, steps n: Int) -> [Float] {
        let T = config.numTrainTimesteps
        switch config.timestepSpacing {
        case .linspace:
            return linspace(0, Double(T - 1), n).reversed().map { Float($0) }
        case .leading:
            let ratio = T / n
            return (0..<n).reversed().map { Float($0 * ratio) + Float(config.stepsOffset) }
        case .trailing:
            let ratio = Double(T) / Double(n)
            let count = Int((Double(-T) / -ratio).rounded(.up))
            let first = Double(T), second = Double(T) - ratio
            let delta = second - first
            return (0..<count).map { i -> Float in
                let v = i == 0 ? first : i == 1 ? second : first + Double(i) * delta
                return Float(v.rounded(.toNearestOrEven)) - 1
            }
        }
    }

    /// log σ of the training levels in float32 (np.log of the float32 array).
    static func logSigmas(_ sigmas: [Float]) -> [Float] {
        sigmas.map { Float(log(Double($0))) }
    }

    /// init_noise_sigma: max σ for linspace and trailing spacing, else sqrt(max σ² + 1) (float32).
    static func initNoiseSigma(_ sigmas: [Float], spacing: SchedulerConfig.Spacing) -> Float {
        let m = sigmas.max() ?? 0
        return spacing == .leading ? (m * m + 1).squareRoot() : m
    }
}

/// diffusers' set_timesteps of Euler, Euler ancestral, Heun and LMS up to the final σ: timesteps by
/// the config's spacing, σ = np.interp(timesteps, arange(T), σ_train) in float64, optionally replaced by
/// Karras σ with their fractional timesteps (_sigma_to_t). The classes append the final σ and round
/// everything to float32.
struct DiscreteSigmas {
    /// The training σ (float32, ascending in t).
    let training: [Float]
    /// One per inference step (float64 before diffusers rounds them to float32).
    var timesteps: [Double]
    /// One per inference step (float64 before diffusers rounds them to float32).
    var sigmas: [Double]

    init(config: SchedulerConfig, steps: Int) throws {
        let T = config.numTrainTimesteps
        guard steps >= 1, steps <= T else {
            throw DiffusionError(.invalidArgument, "steps \(steps) must be between 1 and num_train_timesteps (\(T))")
        }
        let training = SigmaSchedule.trainingSigmas(config.alphasCumprod())
        let ts = SigmaSchedule.spacedTimesteps(config, steps: steps)
        self.training = training
        timesteps = ts.map(Double.init)
        sigmas = ts.map { SigmaSchedule.interpolate(Double($0), training) }
    }

    /// interpolation_type "log_linear" (Euler): n + 1 levels exp(torch.linspace(log σ_max, log σ_min, n + 1))
    /// in float32; the timesteps stay those of the spacing.
    mutating func useLogLinear(steps: Int) {
        let logs = SigmaSchedule.logSigmas(training)
        sigmas = torchLinspace(logs[logs.count - 1], logs[0], steps + 1).map { Double(Float(exp(Double($0)))) }
    }

    /// _convert_to_karras: n Karras levels from sigmaMax (default the first σ) down to sigmaMin
    /// (default the last), float64; the timesteps become _sigma_to_t of each.
    mutating func useKarras(steps: Int, sigmaMin: Double? = nil, sigmaMax: Double? = nil) {
        let lo = sigmaMin ?? sigmas[sigmas.count - 1], hi = sigmaMax ?? sigmas[0]
        sigmas = SigmaSchedule.karras(sigmaMin: lo, sigmaMax: hi, count: steps)
        let logs = SigmaSchedule.logSigmas(training)
        timesteps = sigmas.map { SigmaSchedule.timestep(forSigma: $0, logSigmas: logs) }
    }

    /// Reads the class's sigma settings: use_karras_sigmas; use_exponential_sigmas and use_beta_sigmas
    /// (diffusers has them, we do not) are refused when true.
    static func readKarras(_ config: SchedulerConfig, scheduler: String) throws -> Bool {
        let r = config.reader
        for key in ["use_exponential_sigmas", "use_beta_sigmas"] where try r.bool(key, false) {
            throw DiffusionError(.unsupported, "\(key) \"true\" is not supported by \(scheduler) (supported: use_karras_sigmas or the default schedule)")
        }
        return try r.bool("use_karras_sigmas", false)
    }
}

/// x_0 from the model output at noise level σ, in diffusers' float32 operation order:
/// epsilon x − σ m; v_prediction m · (−σ / sqrt(σ² + 1)) + x / (σ² + 1); sample m.
struct SigmaPrediction {
    let type: SchedulerConfig.PredictionType
    let sigma: Float
    let vOut: Float, vDiv: Float

    init(_ type: SchedulerConfig.PredictionType, sigma: Float) {
        self.type = type
        self.sigma = sigma
        vDiv = sigma * sigma + 1
        vOut = -sigma / vDiv.squareRoot()
    }

    @inline(__always) func x0(_ m: Float, _ x: Float) -> Float {
        switch type {
        case .epsilon: return x - sigma * m
        case .vPrediction: return m * vOut + x / vDiv
        case .sample: return m
        }
    }
}

extension ConfigReader {
    /// A number, or nil when absent or null.
    func optionalDouble(_ key: String) throws -> Double? {
        guard let v = json[key], !v.isNull else { return nil }
        return try double(key, 0)
    }
}

/// The k-diffusion schedulers (Euler, Euler ancestral, Heun, LMS): x = x_0 + σ ε, one σ per
/// iteration plus the final one.
protocol SigmaScheduler: Scheduler {
    var sigmas: [Float] { get }
}

extension SigmaScheduler {
    /// scale_model_input: x / sqrt(σ² + 1) (a float32 division, as diffusers).
    public func inputDivisor(at index: Int) -> Float { (sigmas[index] * sigmas[index] + 1).squareRoot() }
    /// ᾱ of the iteration's level: 1 / (1 + σ²).
    public func alphaProd(at index: Int) -> Float { 1 / (1 + sigmas[index] * sigmas[index]) }
    /// add_noise: x_0 + σ_index ε.
    public func addNoise(original: UnsafePointer<Float>, noise: UnsafePointer<Float>, count: Int, index: Int,
                         into out: UnsafeMutablePointer<Float>) {
        let sigma = sigmas[index]
        for i in 0..<count { out[i] = original[i] + noise[i] * sigma }
    }
}
