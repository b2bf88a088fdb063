/// diffusers `UniPCMultistepScheduler` (Zhao et al. 2023): a multistep predictor (UniP) of order
/// 1–3 and, from the second step on, a corrector (UniC) that refines the previous step's result with
/// the model output at the new sample, both in λ = log(α_t / σ_t) with B(h) = h (bh1) or e^h − 1
/// (bh2). The small linear systems of the coefficients are solved in float32 as torch does.
public final class UniPCMultistepScheduler: MultistepScheduler {
    public enum SolverType: String { case bh1, bh2 }

    static let name = "UniPCMultistepScheduler"

    public let config: SchedulerConfig
    public let timesteps: [Float]
    /// σ of every iteration and the final σ (float32, diffusers' `sigmas`).
    public let sigmas: [Float]
    public let solverOrder: Int
    public let solverType: SolverType
    /// Whether the solver integrates x_0 predictions (true) or ε.
    public let predictX0: Bool
    let lowerOrderFinal: Bool
    /// Steps whose result is not corrected in the following step (diffusers' disable_corrector).
    let disableCorrector: Set<Int>
    let levels: [Multistep.Level]

    // Multistep state: the converted outputs (newest first; one slot more than diffusers'
    // model_outputs, as the new output is stored before the corrector reads the old ones),
    // last_sample (scratch 0), lower_order_nums, this_order, the index expected next.
    private let buffers: Multistep.Buffers
    private var lowerOrderNums = 0
    private var thisOrder = 0
    private var hasLastSample = false
    private var nextIndex: Int? = nil

    public init(config: SchedulerConfig, steps: Int) throws {
        let name = Self.name
        guard steps >= 1, steps <= config.numTrainTimesteps else {
            throw DiffusionError(.invalidArgument, "steps \(steps) must be between 1 and num_train_timesteps (\(config.numTrainTimesteps))")
        }
        let r = config.reader
        let (order, karras, final) = try Multistep.commonSettings(r, scheduler: name, offKeys: [
            "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas", "use_dynamic_shifting"])
        var typeName = try r.string("solver_type", "bh2")
        if ["midpoint", "heun", "logrho"].contains(typeName) { typeName = "bh2" }   // as diffusers registers them
        guard let solverType = SolverType(rawValue: typeName) else {
            throw Multistep.unsupported("solver_type", typeName, name, supported: "bh1, bh2")
        }
        let predictX0 = try r.bool("predict_x0", true)
        let lowerOrderFinal = try r.bool("lower_order_final", true)
        let disable = try r.ints("disable_corrector", [])
        for key in ["solver_p", "shift_terminal"] {
            if let v = r.json[key], !v.isNull { throw Multistep.unsupported(key, v.serialized, name, supported: "null") }
        }
        // sigma_min / sigma_max: the Karras range (default: the training σ range)
        var range: (min: Double?, max: Double?) = (nil, nil)
        for key in ["sigma_min", "sigma_max"] {
            guard let v = r.json[key], !v.isNull else { continue }
            guard let d = v.doubleValue, d.isFinite, d > 0 else {
                throw DiffusionError(.invalidFile, "\(key) must be a positive number or null, got \(v.serialized)")
            }
            if key == "sigma_min" { range.min = d } else { range.max = d }
        }

        let schedule = Multistep.schedule(config: config, steps: steps, lastTimestep: config.numTrainTimesteps,
                                          karras: karras, karrasRange: range, karrasFinal: true, finalSigma: final)
        try Multistep.validate(schedule, config: config, steps: steps, solverOrder: order, karras: karras, scheduler: name)

        // Settings that diffusers runs into NaN or a singular system in the last step (its order
        // when run from the start is 1 with lower_order_final, else min(solver_order, steps)).
        let n = schedule.timesteps.count, sig = schedule.sigmas
        let lastOrder = lowerOrderFinal ? 1 : min(order, n)
        if final == .zero {
            // σ = 0: h = λ_t − λ_s = ∞
            let why = "the last step goes to σ = 0, where diffusers' update gives NaN or a singular system; use final_sigmas_type \"sigma_min\""
            if !predictX0 {
                throw DiffusionError(.unsupported, "final_sigmas_type \"zero\" with predict_x0 false is not supported by \(name): \(why)")
            }
            if solverType == .bh1 {
                throw DiffusionError(.unsupported, "final_sigmas_type \"zero\" with solver_type \"bh1\" is not supported by \(name): \(why)")
            }
            if lastOrder > 1 {
                throw DiffusionError(.unsupported, "final_sigmas_type \"zero\" with lower_order_final false and solver_order \(order) is not supported by \(name): \(why)")
            }
        } else if lastOrder == 3 && !(sig[n] < sig[n - 1]) {
            // the final σ equals the last step's (σ_min = the last Karras σ): h = 0, 0/0 in the system
            throw DiffusionError(.unsupported, "final_sigmas_type \"sigma_min\"\(karras ? " with use_karras_sigmas true" : ""), lower_order_final false and solver_order 3 is not supported by \(name) for \(steps) steps: the last step spans no noise range (its σ is the final σ) and diffusers' order-3 update gives NaN")
        }

        self.config = config
        self.solverOrder = order
        self.solverType = solverType
        self.predictX0 = predictX0
        self.lowerOrderFinal = lowerOrderFinal
        self.disableCorrector = Set(disable)
        timesteps = schedule.timesteps.map(Float.init)
        sigmas = sig
        levels = sig.map(Multistep.Level.init)
        buffers = Multistep.Buffers(history: order + 1, scratch: 2)
    }

    public func needsNoise(at index: Int) -> Bool { false }

    public func step(index i: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>?, shape: SampleShape,
                     prev: UnsafeMutablePointer<Float>) {
        let count = shape.count, n = timesteps.count
        precondition(i >= 0 && i < n, "step index \(i) out of 0..<\(n)")
        // A run starts afresh wherever the indices are not consecutive (a new run or img2img).
        if i != nextIndex || count != buffers.count {
            buffers.resize(count)
            lowerOrderNums = 0
            hasLastSample = false
        }
        nextIndex = i + 1

        // convert_model_output, stored as the newest output
        let converted = buffers.push()
        if predictX0 {
            Multistep.dataPrediction(config: config, modelOutput: modelOutput, sample: sample, level: levels[i],
                                     count: count, batch: shape.batch, into: converted)
        } else {
            Multistep.noisePrediction(config: config, modelOutput: modelOutput, sample: sample, level: levels[i],
                                      count: count, batch: shape.batch, threshold: false,
                                      scratch: buffers.scratch(1), into: converted)
        }

        // UniC: correct this sample with the new output (order of the previous step); the corrected
        // sample becomes last_sample and the predictor's input.
        if i > 0 && !disableCorrector.contains(i - 1) && hasLastSample {
            correct(index: i, order: thisOrder, count: count, into: buffers.scratch(1))
            buffers.swapScratch(0, 1)
        } else {
            buffers.scratch(0).update(from: sample, count: count)
        }
        hasLastSample = true

        // UniP, with warm-up and lower orders at the end
        let wanted = lowerOrderFinal ? min(solverOrder, n - i) : solverOrder
        thisOrder = min(wanted, lowerOrderNums + 1)
        predict(index: i, order: thisOrder, sample: UnsafePointer(buffers.scratch(0)), count: count, prev: prev)
        if lowerOrderNums < solverOrder { lowerOrderNums += 1 }
    }

    /// The coefficients shared by UniP and UniC for a step from level s0 to t of order p, with the
    /// earlier levels of the stored outputs: r_k = (λ_k − λ_s0) / h, hh = −h (x_0) or h (ε),
    /// h φ_1 = expm1(hh), B(h), R = (r_k^(j−1)) with r_p = 1, b_j = h φ_j j! / B(h) (float32).
    private func coefficients(t: Multistep.Level, s0: Multistep.Level, earlier: [Multistep.Level], order p: Int)
        -> (hPhi1: Float, bh: Float, rks: [Float], r: [[Float]], b: [Float]) {
        let h = t.lambda - s0.lambda
        let rks = earlier.map { ($0.lambda - s0.lambda) / h } + [1]
        let hh = predictX0 ? -h : h
        let hPhi1 = Multistep.expm1_32(hh)
        var hPhiK = hPhi1 / hh - 1
        var factorial = 1
        let bh = solverType == .bh1 ? hh : Multistep.expm1_32(hh)
        var rows: [[Float]] = [], b: [Float] = []
        for j in 1...p {
            rows.append(rks.map { j == 1 ? 1 : j == 2 ? $0 : $0 * $0 })   // torch.pow(rks, j − 1), j ≤ 3
            b.append(hPhiK * Float(factorial) / bh)
            factorial *= j + 1
            hPhiK = hPhiK / hh - Float(1 / Double(factorial))
        }
        return (hPhi1, bh, rks, rows, b)
    }

    /// multistep_uni_p_bh_update: x_t = x_t_ − c B(h) Σ_k ρ_k D1_k with
    /// x_t_ = σ_t/σ_s0 x − α_t h φ_1 m0 (x_0; for ε: α_t/α_s0 x − σ_t h φ_1 m0), D1_k = (m_k − m0) / r_k,
    /// ρ = 0.5 (order 2) or R[:-1, :-1]⁻¹ b[:-1] (order 3).
    private func predict(index i: Int, order p: Int, sample x: UnsafePointer<Float>, count: Int,
                         prev: UnsafeMutablePointer<Float>) {
        let t = levels[i + 1], s0 = levels[i]
        let c = coefficients(t: t, s0: s0, earlier: (1..<p).map { levels[i - $0] }, order: p)
        let rhos: [Float] = p == 1 ? [] : p == 2 ? [0.5]
            : Multistep.solve(c.r.prefix(p - 1).map { Array($0.prefix(p - 1)) }, Array(c.b.prefix(p - 1)))
        let (cx, cm, cb) = predictX0 ? (t.sigma / s0.sigma, t.alpha * c.hPhi1, t.alpha * c.bh)
                                     : (t.alpha / s0.alpha, t.sigma * c.hPhi1, t.sigma * c.bh)
        let m0 = UnsafePointer(buffers.output(0))
        switch p {
        case 1:
            for k in 0..<count { prev[k] = cx * x[k] - cm * m0[k] }
        case 2:
            let m1 = UnsafePointer(buffers.output(1))
            let r1 = c.rks[0], rho1 = rhos[0]
            for k in 0..<count {
                let res = rho1 * ((m1[k] - m0[k]) / r1)
                prev[k] = (cx * x[k] - cm * m0[k]) - cb * res
            }
        default:
            let m1 = UnsafePointer(buffers.output(1)), m2 = UnsafePointer(buffers.output(2))
            let r1 = c.rks[0], r2 = c.rks[1], rho1 = rhos[0], rho2 = rhos[1]
            for k in 0..<count {
                let res = rho1 * ((m1[k] - m0[k]) / r1) + rho2 * ((m2[k] - m0[k]) / r2)
                prev[k] = (cx * x[k] - cm * m0[k]) - cb * res
            }
        }
    }

    /// multistep_uni_c_bh_update: the step from last_sample at σ_{i−1} to σ_i redone with the new
    /// output m_t: x_t = x_t_ − c B(h) (Σ_k ρ_k D1_k + ρ_p (m_t − m0)), ρ = 0.5 (order 1) or R⁻¹ b.
    private func correct(index i: Int, order p: Int, count: Int, into out: UnsafeMutablePointer<Float>) {
        let t = levels[i], s0 = levels[i - 1]
        let c = coefficients(t: t, s0: s0, earlier: (1..<p).map { levels[i - $0 - 1] }, order: p)
        let rhos: [Float] = p == 1 ? [0.5] : Multistep.solve(c.r, c.b)
        let (cx, cm, cb) = predictX0 ? (t.sigma / s0.sigma, t.alpha * c.hPhi1, t.alpha * c.bh)
                                     : (t.alpha / s0.alpha, t.sigma * c.hPhi1, t.sigma * c.bh)
        // outputs: 0 = m_t (this step's), 1 = m0 (the previous step's), k + 1 = m_k
        let mt = UnsafePointer(buffers.output(0)), m0 = UnsafePointer(buffers.output(1))
        let x = UnsafePointer(buffers.scratch(0))
        let rhoT = rhos[p - 1]
        switch p {
        case 1:
            for k in 0..<count { out[k] = (cx * x[k] - cm * m0[k]) - cb * (rhoT * (mt[k] - m0[k])) }
        case 2:
            let m1 = UnsafePointer(buffers.output(2))
            let r1 = c.rks[0], rho1 = rhos[0]
            for k in 0..<count {
                let res = rho1 * ((m1[k] - m0[k]) / r1)
                out[k] = (cx * x[k] - cm * m0[k]) - cb * (res + rhoT * (mt[k] - m0[k]))
            }
        default:
            let m1 = UnsafePointer(buffers.output(2)), m2 = UnsafePointer(buffers.output(3))
            let r1 = c.rks[0], r2 = c.rks[1], rho1 = rhos[0], rho2 = rhos[1]
            for k in 0..<count {
                let res = rho1 * ((m1[k] - m0[k]) / r1) + rho2 * ((m2[k] - m0[k]) / r2)
                out[k] = (cx * x[k] - cm * m0[k]) - cb * (res + rhoT * (mt[k] - m0[k]))
            }
        }
    }
}
