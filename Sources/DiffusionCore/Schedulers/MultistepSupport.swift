#if canImport(Glibc)
import Glibc
#endif

/// What diffusers' DPMSolverMultistepScheduler and UniPCMultistepScheduler share: the noise
/// schedule of set_timesteps (int64 timesteps, float32 σ with a final σ appended), the
/// variance-preserving view of a noise level (α_t, σ_t, λ_t), the conversion of the model output to
/// x_0 or ε, and the buffers of the multistep history.
enum Multistep {
    // MARK: float32 scalar math as torch does it on 0-dim tensors

    /// torch.log / exp / expm1 of a float32 scalar. torch's kernels are not glibc's logf/expf/expm1f;
    /// the correctly rounded value agrees with them far more often (expm1 always, log and exp in
    /// all but ~1% of arguments, then by one ulp).
    @inline(__always) static func log32(_ x: Float) -> Float { Float(log(Double(x))) }
    @inline(__always) static func exp32(_ x: Float) -> Float { Float(exp(Double(x))) }
    @inline(__always) static func expm1_32(_ x: Float) -> Float { Float(expm1(Double(x))) }

    /// A noise level σ of the variance-exploding view seen as the variance-preserving process
    /// x_t = α_t x_0 + σ_t ε: α_t = 1 / sqrt(σ² + 1), σ_t = σ α_t, λ_t = log α_t − log σ_t
    /// (diffusers' _sigma_to_alpha_sigma_t and the λ of the solvers, float32). torch's float32 sqrt
    /// (MKL's on x86) is not correctly rounded either: α_t, and the training σ, can differ from
    /// torch's by one ulp, which UniPC's noise-prediction form amplifies to ~1e-6 relative.
    struct Level {
        let alpha: Float, sigma: Float, lambda: Float
        init(_ s: Float) {
            alpha = 1 / (s * s + 1).squareRoot()
            sigma = s * alpha
            lambda = Multistep.log32(alpha) - Multistep.log32(sigma)
        }
    }

    // MARK: the schedule

    enum FinalSigma: String { case zero, sigmaMin = "sigma_min" }

    /// timesteps[i] is the model timestep of iteration i; sigmas has one more value (the final level).
    struct Schedule {
        var timesteps: [Int]
        var sigmas: [Float]
    }

    /// set_timesteps of both classes: N + 1 points spaced over [0, lastTimestep) with the last one
    /// dropped (linspace, leading) or trailing points, σ interpolated from the training σ (float64,
    /// stored as float32); or Karras σ (float64) between σ_min and σ_max with timesteps
    /// round(_sigma_to_t(σ)). The final σ is 0 or sigmaMin (karrasFinal: the last Karras σ, as
    /// UniPC takes it; DPM-Solver takes the first training σ).
    static func schedule(config: SchedulerConfig, steps n: Int, lastTimestep: Int, karras: Bool,
                         karrasRange: (min: Double?, max: Double?) = (nil, nil), karrasFinal: Bool,
                         finalSigma: FinalSigma) -> Schedule {
        let train = SigmaSchedule.trainingSigmas(config.alphasCumprod())
        var timesteps = spacedTimesteps(config: config, steps: n, lastTimestep: lastTimestep)
        let levels: [Double]
        if karras {
            // np.log of the float32 training σ; Karras between in_sigmas[-1] = σ_0 and in_sigmas[0] = σ_T
            let logSigmas = train.map(log32)
            levels = SigmaSchedule.karras(sigmaMin: karrasRange.min ?? Double(train[0]),
                                          sigmaMax: karrasRange.max ?? Double(train[train.count - 1]), count: n)
            timesteps = levels.map {
                Int(SigmaSchedule.timestep(forSigma: $0, logSigmas: logSigmas).rounded(.toNearestOrEven))
            }
        } else {
            levels = timesteps.map { SigmaSchedule.interpolate(Double($0), train) }
        }
        let last: Float
        switch finalSigma {
        case .zero: last = 0
        case .sigmaMin: last = karras && karrasFinal ? Float(levels[levels.count - 1]) : train[0]
        }
        return Schedule(timesteps: timesteps, sigmas: levels.map { Float($0) } + [last])
    }

    /// The int64 timesteps of timestep_spacing (before any Karras replacement).
    static func spacedTimesteps(config: SchedulerConfig, steps n: Int, lastTimestep last: Int) -> [Int] {
        switch config.timestepSpacing {
        case .linspace:
            // np.linspace(0, last - 1, n + 1).round()[::-1][:-1]
            let points = SigmaSchedule.linspace(0, Double(last - 1), n + 1).map { Int($0.rounded(.toNearestOrEven)) }
            return Array(points.reversed().dropLast())
        case .leading:
            // (arange(n + 1) * (last // (n + 1)))[::-1][:-1] + steps_offset
            let ratio = last / (n + 1)
            return (1...n).reversed().map { $0 * ratio + config.stepsOffset }
        case .trailing:
            // np.arange(last, 0, -num_train / n).round() - 1; numpy's arange has ceil(last / ratio)
            // values start + i (x_1 - x_0) (sometimes n + 1 of them)
            let ratio = Double(config.numTrainTimesteps) / Double(n)
            let start = Double(last)
            let count = Int(((0 - start) / -ratio).rounded(.up))
            let delta = (start - ratio) - start
            return (0..<max(count, 0)).map { i in
                Int((i == 0 ? start : start + Double(i) * delta).rounded(.toNearestOrEven)) - 1
            }
        }
    }

    /// Checks what makes diffusers' loop fail or its solver divide by zero: the first timestep
    /// repeated (diffusers then starts at the second and runs past the end) and a noise level
    /// repeated within the steps (h = 0 in a multistep update). Timesteps just outside the training
    /// range are kept, as diffusers keeps them (trailing spacing can end at -1, σ clamped to σ_0).
    static func validate(_ s: Schedule, config: SchedulerConfig, steps: Int, solverOrder: Int,
                         karras: Bool, scheduler: String) throws {
        let t = s.timesteps
        guard !t.isEmpty else {
            throw DiffusionError(.invalidArgument, "\(scheduler): \(steps) steps give no timesteps")
        }
        if t.count > 1 && t[0] == t[1] {
            let what = karras ? "use_karras_sigmas true with beta_schedule \"\(config.betaSchedule)\""
                              : "timestep_spacing \"\(config.timestepSpacing.rawValue)\" with \(steps) steps"
            throw DiffusionError(.unsupported, "\(what) is not supported by \(scheduler): the timesteps start with \(t[0]) repeated, and diffusers' loop then starts at the second and runs past the end")
        }
        if solverOrder > 1 {
            for i in 1..<t.count where !(s.sigmas[i] < s.sigmas[i - 1]) {
                throw DiffusionError(.invalidArgument, "\(scheduler): \(steps) steps repeat a noise level (timesteps \(t[i - 1]) and \(t[i])), where the multistep update divides by zero; use fewer steps")
            }
        }
    }

    // MARK: settings

    /// DiffusionError(.unsupported) for a setting value this library does not run.
    static func unsupported(_ key: String, _ value: String, _ scheduler: String, supported: String) -> DiffusionError {
        DiffusionError(.unsupported, "\(key) \"\(value)\" is not supported by \(scheduler) (supported: \(supported))")
    }

    /// The settings both classes read: solver_order (1–3), use_karras_sigmas, final_sigmas_type,
    /// and the schedule variants this library does not implement (refused when switched on).
    static func commonSettings(_ r: ConfigReader, scheduler: String, offKeys: [String])
        throws -> (order: Int, karras: Bool, final: FinalSigma) {
        for key in offKeys where try r.bool(key, false) {
            throw unsupported(key, "true", scheduler, supported: "false")
        }
        let order = try r.int("solver_order", 2, min: 1)
        guard order <= 3 else { throw unsupported("solver_order", "\(order)", scheduler, supported: "1, 2, 3") }
        let finalName = try r.string("final_sigmas_type", "zero")
        guard let final = FinalSigma(rawValue: finalName) else {
            throw unsupported("final_sigmas_type", finalName, scheduler, supported: "zero, sigma_min")
        }
        return (order, try r.bool("use_karras_sigmas", false), final)
    }

    /// A number setting that may be null (nil), a number, or a string "inf" / "-inf" / "Infinity"
    /// / "-Infinity" (strict JSON has no infinities; diffusers writes a bare -Infinity).
    static func extendedDouble(_ r: ConfigReader, _ key: String) throws -> Double? {
        guard let v = r.json[key], !v.isNull else { return nil }
        if let d = v.doubleValue { return d }
        switch v.stringValue {
        case "inf", "Infinity", "+inf": return .infinity
        case "-inf", "-Infinity": return -.infinity
        default: throw DiffusionError(.invalidFile, "\(key) must be a number (or \"inf\" / \"-inf\"), got \(v.serialized)")
        }
    }

    // MARK: model output conversion

    /// convert_model_output to x_0 (DPM-Solver++, UniPC predict_x0): from ε, v or x_0 at level l,
    /// then dynamically thresholded when `thresholding` is on (clip_sample is no setting here).
    static func dataPrediction(config: SchedulerConfig, modelOutput m: UnsafePointer<Float>, sample x: UnsafePointer<Float>,
                               level l: Level, count: Int, batch: Int, into out: UnsafeMutablePointer<Float>) {
        let a = l.alpha, s = l.sigma
        switch config.predictionType {
        case .epsilon: for i in 0..<count { out[i] = (x[i] - s * m[i]) / a }
        case .vPrediction: for i in 0..<count { out[i] = a * x[i] - s * m[i] }
        case .sample: out.update(from: m, count: count)
        }
        if config.thresholding { config.limitPredictedOriginal(out, count: count, batch: batch) }
    }

    /// convert_model_output to ε (DPM-Solver, UniPC with predict_x0 false). With `threshold` (DPM-Solver
    /// only) x_0 = (x − σ_t ε) / α_t is thresholded and ε recomputed from it; `scratch` holds x_0.
    static func noisePrediction(config: SchedulerConfig, modelOutput m: UnsafePointer<Float>, sample x: UnsafePointer<Float>,
                                level l: Level, count: Int, batch: Int, threshold: Bool,
                                scratch: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        let a = l.alpha, s = l.sigma
        switch config.predictionType {
        case .epsilon: out.update(from: m, count: count)
        case .sample: for i in 0..<count { out[i] = (x[i] - a * m[i]) / s }
        case .vPrediction: for i in 0..<count { out[i] = a * m[i] + s * x[i] }
        }
        guard threshold else { return }
        for i in 0..<count { scratch[i] = (x[i] - s * out[i]) / a }
        config.limitPredictedOriginal(scratch, count: count, batch: batch)
        for i in 0..<count { out[i] = (x[i] - a * scratch[i]) / s }
    }

    /// add_noise: α_t x_0 + σ_t ε at level l (img2img's start).
    static func addNoise(level l: Level, original: UnsafePointer<Float>, noise: UnsafePointer<Float>, count: Int,
                         into out: UnsafeMutablePointer<Float>) {
        for k in 0..<count { out[k] = l.alpha * original[k] + l.sigma * noise[k] }
    }

    // MARK: state

    /// Buffers of `count` floats, reused across steps: the converted model outputs of the last
    /// steps (newest first) and scratch space.
    final class Buffers {
        private(set) var count = 0
        private var history: [UnsafeMutablePointer<Float>] = []
        private var spare: [UnsafeMutablePointer<Float>] = []

        init(history depth: Int, scratch: Int) {
            history = (0..<depth).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: 0) }
            spare = (0..<scratch).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: 0) }
        }

        deinit { (history + spare).forEach { $0.deallocate() } }

        /// Sizes every buffer for `n` floats (contents are lost when the size changes).
        func resize(_ n: Int) {
            guard n != count else { return }
            count = n
            for k in history.indices { history[k].deallocate(); history[k] = .allocate(capacity: n) }
            for k in spare.indices { spare[k].deallocate(); spare[k] = .allocate(capacity: n) }
        }

        /// The k-th newest stored output (0 = the newest; diffusers' model_outputs[-(k + 1)]).
        func output(_ k: Int) -> UnsafeMutablePointer<Float> { history[k] }

        /// Shifts the history (the oldest buffer becomes the newest) and returns the buffer to fill.
        func push() -> UnsafeMutablePointer<Float> {
            history.insert(history.removeLast(), at: 0)
            return history[0]
        }

        func scratch(_ k: Int) -> UnsafeMutablePointer<Float> { spare[k] }

        func swapScratch(_ a: Int, _ b: Int) { spare.swapAt(a, b) }
    }

    /// torch.linalg.solve(a, b) of a tiny float32 system as LAPACK's getrf + getrs compute it: LU
    /// with partial pivoting (multipliers by the pivot's reciprocal), forward and back substitution.
    static func solve(_ a: [[Float]], _ b: [Float]) -> [Float] {
        var a = a, x = b
        let n = b.count
        var perm = Array(0..<n)
        for c in 0..<n {
            var p = c
            for r in (c + 1)..<n where abs(a[r][c]) > abs(a[p][c]) { p = r }
            if p != c { a.swapAt(p, c); perm.swapAt(p, c) }
            let recip = 1 / a[c][c]
            for r in (c + 1)..<n {
                a[r][c] *= recip
                for j in (c + 1)..<n { a[r][j] -= a[r][c] * a[c][j] }
            }
        }
        x = perm.map { b[$0] }
        for k in 0..<n { for i in (k + 1)..<n { x[i] -= x[k] * a[i][k] } }
        for k in stride(from: n - 1, through: 0, by: -1) {
            x[k] /= a[k][k]
            for i in 0..<k { x[i] -= x[k] * a[i][k] }
        }
        return x
    }
}

/// DPM-Solver and UniPC: variance-preserving noise levels (α_t, σ_t) from the σ schedule.
protocol MultistepScheduler: Scheduler {
    var sigmas: [Float] { get }
    var levels: [Multistep.Level] { get }
}

extension MultistepScheduler {
    /// ᾱ of iteration i's noise level: α_t² = 1 / (1 + σ_i²).
    public func alphaProd(at index: Int) -> Float { 1 / (sigmas[index] * sigmas[index] + 1) }
    /// add_noise: α_t x_0 + σ_t ε at the iteration's level.
    public func addNoise(original: UnsafePointer<Float>, noise: UnsafePointer<Float>, count: Int, index: Int,
                         into out: UnsafeMutablePointer<Float>) {
        Multistep.addNoise(level: levels[index], original: original, noise: noise, count: count, into: out)
    }
}
