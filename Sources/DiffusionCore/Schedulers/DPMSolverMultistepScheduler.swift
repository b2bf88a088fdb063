#if canImport(Glibc)
import Glibc
#endif

/// diffusers `DPMSolverMultistepScheduler`: the multistep DPM-Solver++ (Lu et al. 2022b, data
/// prediction), its SDE variant, and the original noise-prediction DPM-Solver (Lu et al. 2022a);
/// exponential integrators in λ = log(α_t / σ_t) of order 1–3 that reuse the previous steps' outputs.
/// Coefficients are float32 scalars and every update is evaluated term by term in diffusers' order.
public final class DPMSolverMultistepScheduler: MultistepScheduler {
    public enum Algorithm: String {
        case dpmSolverPP = "dpmsolver++", sdeDPMSolverPP = "sde-dpmsolver++"
        case dpmSolver = "dpmsolver", sdeDPMSolver = "sde-dpmsolver"
        /// Whether the solver integrates x_0 predictions (the ++ variants) rather than ε.
        var predictsData: Bool { self == .dpmSolverPP || self == .sdeDPMSolverPP }
        var isSDE: Bool { self == .sdeDPMSolverPP || self == .sdeDPMSolver }
    }
    public enum SolverType: String { case midpoint, heun }

    static let name = "DPMSolverMultistepScheduler"

    public let config: SchedulerConfig
    public let timesteps: [Float]
    /// σ of every iteration and the final σ (float32, diffusers' `sigmas`).
    public let sigmas: [Float]
    public let algorithm: Algorithm
    public let solverOrder: Int
    public let solverType: SolverType
    let lowerOrderFinal: Bool
    let eulerAtFinal: Bool
    let finalSigma: Multistep.FinalSigma
    let levels: [Multistep.Level]

    // Multistep state: the converted outputs (model_outputs), lower_order_nums, the index expected next.
    private let buffers: Multistep.Buffers
    private var lowerOrderNums = 0
    private var nextIndex: Int? = nil

    public init(config: SchedulerConfig, steps: Int) throws {
        let name = Self.name
        guard steps >= 1, steps <= config.numTrainTimesteps else {
            throw DiffusionError(.invalidArgument, "steps \(steps) must be between 1 and num_train_timesteps (\(config.numTrainTimesteps))")
        }
        let r = config.reader
        let (order, karras, final) = try Multistep.commonSettings(r, scheduler: name, offKeys: [
            "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas", "use_dynamic_shifting"])
        var algorithmName = try r.string("algorithm_type", "dpmsolver++")
        if algorithmName == "deis" { algorithmName = "dpmsolver++" }   // as diffusers registers it
        guard let algorithm = Algorithm(rawValue: algorithmName) else {
            throw Multistep.unsupported("algorithm_type", algorithmName, name,
                                        supported: "dpmsolver++, sde-dpmsolver++, dpmsolver, sde-dpmsolver")
        }
        var typeName = try r.string("solver_type", "midpoint")
        if ["logrho", "bh1", "bh2"].contains(typeName) { typeName = "midpoint" }   // as diffusers registers them
        guard let solverType = SolverType(rawValue: typeName) else {
            throw Multistep.unsupported("solver_type", typeName, name, supported: "midpoint, heun")
        }
        if let v = try r.optionalString("variance_type", nil), v == "learned" || v == "learned_range" {
            throw Multistep.unsupported("variance_type", v, name, supported: "null")
        }
        if !algorithm.predictsData && final == .zero {
            throw DiffusionError(.unsupported, "final_sigmas_type \"zero\" with algorithm_type \"\(algorithmName)\" is not supported by \(name) (diffusers refuses it; use final_sigmas_type \"sigma_min\")")
        }
        if algorithm == .sdeDPMSolver && order == 3 {
            throw DiffusionError(.unsupported, "solver_order 3 with algorithm_type \"sde-dpmsolver\" is not supported by \(name) (diffusers has no third-order sde-dpmsolver update)")
        }
        if karras && config.betaSchedule == "squaredcos_cap_v2" {
            throw DiffusionError(.unsupported, "use_karras_sigmas true with beta_schedule \"squaredcos_cap_v2\" is not supported by \(name) (diffusers truncates the Karras timesteps of this schedule to a run of repeated values, 998, 998, ..., and its loop runs past the end)")
        }

        // lambda_min_clipped: timesteps stop below the first one whose λ_t falls under the clip
        // (last_timestep = T − searchsorted(flip(λ_t), clip), in float32).
        let clip = try Multistep.extendedDouble(r, "lambda_min_clipped") ?? -.infinity
        guard !clip.isNaN else { throw DiffusionError(.invalidFile, "lambda_min_clipped must be a number, got NaN") }
        let clip32 = Float(clip)
        let clipped = config.alphasCumprod().reduce(0) { n, a in
            n + (Multistep.log32(a.squareRoot()) - Multistep.log32((1 - a).squareRoot()) < clip32 ? 1 : 0)
        }
        let lastTimestep = config.numTrainTimesteps - clipped
        if !karras && lastTimestep < 1 {
            throw DiffusionError(.invalidArgument, "lambda_min_clipped \(clip) clips every timestep of \(name)")
        }

        let schedule = Multistep.schedule(config: config, steps: steps, lastTimestep: lastTimestep, karras: karras,
                                          karrasFinal: false, finalSigma: final)
        try Multistep.validate(schedule, config: config, steps: steps, solverOrder: order, karras: karras, scheduler: name)
        let lowerOrderFinal = try r.bool("lower_order_final", true)
        let eulerAtFinal = try r.bool("euler_at_final", false)

        // The last step's order when run from the start. Over a zero-length last interval (σ_min
        // final = the last Karras σ) diffusers' third-order and heun updates give 0/0 = NaN.
        let n = schedule.timesteps.count, sig = schedule.sigmas
        let lastOrder = order == 1 || n < 2 || eulerAtFinal || (lowerOrderFinal && n < 15) || final == .zero ? 1
                      : order == 2 || n < 3 ? 2 : 3
        if !(sig[n] < sig[n - 1]) && (lastOrder == 3 || (lastOrder == 2 && solverType == .heun)) {
            throw DiffusionError(.unsupported, "final_sigmas_type \"sigma_min\"\(karras ? " with use_karras_sigmas true" : "") and a last step of order \(lastOrder) (solver_order \(order), solver_type \(solverType.rawValue)) is not supported by \(name) for \(steps) steps: the last step spans no noise range (its σ is the final σ) and diffusers' update gives NaN (use lower_order_final true with fewer than 15 steps, euler_at_final true, or solver_order 2 with midpoint)")
        }

        self.config = config
        self.algorithm = algorithm
        self.solverOrder = order
        self.solverType = solverType
        self.lowerOrderFinal = lowerOrderFinal
        self.eulerAtFinal = eulerAtFinal
        self.finalSigma = final
        timesteps = schedule.timesteps.map(Float.init)
        sigmas = sig
        levels = sig.map(Multistep.Level.init)
        buffers = Multistep.Buffers(history: order, scratch: 1)
    }


    /// The SDE variants draw noise in every step (also the last, where its weight is 0).
    public func needsNoise(at index: Int) -> Bool { algorithm.isSDE }

    public func step(index i: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>?, shape: SampleShape,
                     prev: UnsafeMutablePointer<Float>) {
        let count = shape.count, n = timesteps.count
        precondition(i >= 0 && i < n, "step index \(i) out of 0..<\(n)")
        // A run starts afresh wherever the indices are not consecutive (a new run or img2img).
        if i != nextIndex || count != buffers.count {
            buffers.resize(count)
            lowerOrderNums = 0
        }
        nextIndex = i + 1

        // lower orders in the final steps (stability for few steps; a zero final σ forces order 1)
        let finalFirstOrder = i == n - 1 && (eulerAtFinal || (lowerOrderFinal && n < 15) || finalSigma == .zero)
        let secondLastLower = i == n - 2 && lowerOrderFinal && n < 15

        // convert_model_output into the newest history slot
        let m0 = buffers.push()
        if algorithm.predictsData {
            Multistep.dataPrediction(config: config, modelOutput: modelOutput, sample: sample, level: levels[i],
                                     count: count, batch: shape.batch, into: m0)
        } else {
            Multistep.noisePrediction(config: config, modelOutput: modelOutput, sample: sample, level: levels[i],
                                      count: count, batch: shape.batch, threshold: config.thresholding,
                                      scratch: buffers.scratch(0), into: m0)
        }

        let order = solverOrder == 1 || lowerOrderNums < 1 || finalFirstOrder ? 1
                  : solverOrder == 2 || lowerOrderNums < 2 || secondLastLower ? 2 : 3
        update(order: order, index: i, sample: sample, noise: algorithm.isSDE ? noise : nil, count: count, prev: prev)
        if lowerOrderNums < solverOrder { lowerOrderNums += 1 }
    }

    /// dpm_solver_first_order_update / multistep_dpm_solver_{second,third}_order_update:
    /// x_t = c_x x + k0 D0 + k1 D1 + k2 D2 (+ k_n z), the signed float32 coefficients as diffusers
    /// forms them, D0 = m0, D1 and D2 the divided differences of the stored outputs in λ.
    private func update(order: Int, index i: Int, sample x: UnsafePointer<Float>, noise z: UnsafePointer<Float>?,
                        count: Int, prev: UnsafeMutablePointer<Float>) {
        typealias M = Multistep
        let t = levels[i + 1], s0 = levels[i]
        let h = t.lambda - s0.lambda
        let cx: Float, k0: Float, k1: Float, k2: Float, kn: Float
        let midpoint = solverType == .midpoint
        switch algorithm {
        case .dpmSolverPP:
            let em1 = M.exp32(-h) - 1
            cx = t.sigma / s0.sigma
            k0 = -(t.alpha * em1)
            k1 = order == 2 && midpoint ? -(0.5 * (t.alpha * em1)) : t.alpha * (em1 / h + 1)
            k2 = -(t.alpha * ((em1 + h) / (h * h) - 0.5))
            kn = 0
        case .sdeDPMSolverPP:
            let e2 = M.exp32(-2 * h)
            let one = 1 - e2
            cx = t.sigma / s0.sigma * M.exp32(-h)
            k0 = t.alpha * one
            k1 = order == 2 && midpoint ? 0.5 * (t.alpha * one) : t.alpha * (one / (-2 * h) + 1)
            k2 = t.alpha * ((one - 2 * h) / ((2 * h) * (2 * h)) - 0.5)
            kn = t.sigma * one.squareRoot()
        case .dpmSolver:
            let em1 = M.exp32(h) - 1
            cx = t.alpha / s0.alpha
            k0 = -(t.sigma * em1)
            k1 = order == 2 && midpoint ? -(0.5 * (t.sigma * em1)) : -(t.sigma * (em1 / h - 1))
            k2 = -(t.sigma * ((em1 - h) / (h * h) - 0.5))
            kn = 0
        case .sdeDPMSolver:
            let em1 = M.exp32(h) - 1
            cx = t.alpha / s0.alpha
            k0 = -(2 * (t.sigma * em1))
            k1 = midpoint ? -(t.sigma * em1) : -(2 * (t.sigma * (em1 / h - 1)))
            k2 = 0
            kn = t.sigma * (M.exp32(2 * h) - 1).squareRoot()
        }
        let m0 = UnsafePointer(buffers.output(0))
        switch order {
        case 1:
            for k in 0..<count { prev[k] = cx * x[k] + k0 * m0[k] }
        case 2:
            // r0 = h_0 / h, D1 = (1 / r0)(m0 − m1)
            let m1 = UnsafePointer(buffers.output(1))
            let r0 = (s0.lambda - levels[i - 1].lambda) / h
            let inv0 = 1 / r0
            for k in 0..<count {
                let d1 = inv0 * (m0[k] - m1[k])
                prev[k] = cx * x[k] + k0 * m0[k] + k1 * d1
            }
        default:
            // D1 = D1_0 + r0 / (r0 + r1) (D1_0 − D1_1), D2 = (D1_0 − D1_1) / (r0 + r1)
            let m1 = UnsafePointer(buffers.output(1)), m2 = UnsafePointer(buffers.output(2))
            let s1 = levels[i - 1], s2 = levels[i - 2]
            let r0 = (s0.lambda - s1.lambda) / h, r1 = (s1.lambda - s2.lambda) / h
            let inv0 = 1 / r0, inv1 = 1 / r1, w = r0 / (r0 + r1), inv01 = 1 / (r0 + r1)
            for k in 0..<count {
                let d10 = inv0 * (m0[k] - m1[k]), d11 = inv1 * (m1[k] - m2[k])
                let diff = d10 - d11
                let d1 = d10 + w * diff, d2 = inv01 * diff
                prev[k] = cx * x[k] + k0 * m0[k] + k1 * d1 + k2 * d2
            }
        }
        if let z { for k in 0..<count { prev[k] = prev[k] + kn * z[k] } }
    }
}
