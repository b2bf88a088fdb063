/// diffusers `PNDMScheduler` (Liu et al., pseudo numerical methods): a Runge–Kutta warm-up (PRK) of
/// three full steps, four model evaluations each, then linear multistep (PLMS, Adams–Bashforth on
/// the model outputs). With skip_prk_steps (Stable Diffusion's setting) PLMS starts at once, its
/// second iteration re-evaluating the first step's end (a Heun-like correction).
///
/// Like diffusers, the step kind and the multistep history follow a counter of the steps taken,
/// not the iteration index; `order` is diffusers' class attribute 1 (img2img skips t_start
/// iterations of the interleaved list, as diffusers' pipelines do).
public final class PNDMScheduler: Scheduler {
    public let config: SchedulerConfig
    public let alphasCumprod: [Float]
    public let timesteps: [Float]
    public let skipPRKSteps: Bool
    let steps: [Int]
    /// Iterations run as Runge–Kutta stages (12, or 0 with skip_prk_steps).
    let prkIterations: Int
    /// num_train_timesteps // num_inference_steps.
    let stepRatio: Int
    let finalAlphaCumprod: Float
    /// Runge–Kutta stages and PLMS steps taken so far (diffusers' `counter`).
    private(set) var counter = 0
    /// Model outputs kept for PLMS (diffusers' `ets`, at most 4, oldest first).
    private var ets: [[Float]] = []
    /// The sample a Runge–Kutta step (or the first PLMS step) started from.
    private var curSample: [Float] = []
    /// The weighted sum of a Runge–Kutta step's model outputs.
    private var rkSum: [Float] = []
    /// The combined model output of the current step.
    private var combined: [Float] = []

    public init(config: SchedulerConfig, steps: Int) throws {
        let r = config.reader
        skipPRKSteps = try r.bool("skip_prk_steps", false)
        guard config.predictionType != .sample else {
            throw DiffusionError(.unsupported, "prediction_type \"sample\" is not supported by pndm (supported: epsilon, v_prediction)")
        }
        // The Runge–Kutta warm-up spans the 4 largest timesteps (diffusers fails on fewer).
        guard skipPRKSteps || steps >= 4 else {
            throw DiffusionError(.invalidArgument, "steps \(steps) must be at least 4 for pndm with skip_prk_steps false")
        }
        self.config = config
        alphasCumprod = config.alphasCumprod()
        finalAlphaCumprod = config.setAlphaToOne ? 1 : alphasCumprod[0]
        stepRatio = config.numTrainTimesteps / steps
        // The spacing's timesteps, ascending (the same values as DDPM's for every spacing).
        let base = Array(try config.timesteps(steps: steps).reversed())
        var list: [Int]
        if skipPRKSteps {
            // base[:-1] + base[-2:-1] + base[-1:], reversed: the second largest timestep twice
            list = Array(base.dropLast()) + base.suffix(2)
            list.reverse()
            prkIterations = 0
        } else {
            // The 4 largest timesteps with half steps between them, every point but the ends twice:
            // t, t-h/2, t-h/2, t-h, t-h, ... (12 iterations), then PLMS from the 4th largest down.
            let half = stepRatio / 2
            var points: [Int] = []
            for t in base.suffix(4) { points += [t, t + half] }
            points.removeLast()
            var prk: [Int] = []
            for p in points { prk += [p, p] }
            prk = Array(prk.dropFirst().dropLast())
            list = prk.reversed() + base.dropLast(3).reversed()
            prkIterations = prk.count
        }
        self.steps = list
        timesteps = list.map(Float.init)
    }

    public func alphaProd(at index: Int) -> Float { alphasCumprod[steps[index]] }
    public func needsNoise(at index: Int) -> Bool { false }

    public func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
                     noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>?, shape: SampleShape,
                     prev: UnsafeMutablePointer<Float>) {
        let count = shape.count
        if combined.count != count { combined = [Float](repeating: 0, count: count) }
        let output = UnsafeBufferPointer(start: modelOutput, count: count)
        let t = steps[index]
        let c = counter
        counter += 1
        var fromStart = false
        var t0 = t, prevT = t - stepRatio
        if c < prkIterations {
            // step_prk: every stage steps from the stage-0 sample at the stage-0 timestep to
            // t - h/2 (even stages) or t (odd stages); the last with (k1 + 2 k2 + 2 k3 + k4) / 6.
            prevT = t - (c % 2 == 1 ? 0 : stepRatio / 2)
            t0 = steps[c / 4 * 4]
            fromStart = true
            switch c % 4 {
            case 0:
                rkSum = output.map { Float(1.0 / 6.0) * $0 }
                ets.append(Array(output))
                curSample = Array(UnsafeBufferPointer(start: sample, count: count))
                for i in 0..<count { combined[i] = output[i] }
            case 1, 2:
                for i in 0..<count {
                    rkSum[i] = rkSum[i] + Float(1.0 / 3.0) * output[i]
                    combined[i] = output[i]
                }
            default:
                for i in 0..<count { combined[i] = rkSum[i] + Float(1.0 / 6.0) * output[i] }
            }
        } else {
            // step_plms: Adams–Bashforth of order len(ets) (1–4) on the stored model outputs.
            if c != 1 {
                if ets.count == 4 { ets.removeFirst() }
                ets.append(Array(output))
            } else {
                // skip_prk's second iteration redoes the first step with the mean of both outputs.
                prevT = t
                t0 = t + stepRatio
            }
            let e = ets
            if e.count == 1 && c == 0 {
                curSample = Array(UnsafeBufferPointer(start: sample, count: count))
                for i in 0..<count { combined[i] = output[i] }
            } else if e.count == 1 && c == 1 {
                fromStart = true
                for i in 0..<count { combined[i] = (output[i] + e[0][i]) / 2 }
            } else if e.count == 2 {
                for i in 0..<count { combined[i] = (3 * e[1][i] - e[0][i]) / 2 }
            } else if e.count == 3 {
                for i in 0..<count { combined[i] = (23 * e[2][i] - 16 * e[1][i] + 5 * e[0][i]) / 12 }
            } else {
                for i in 0..<count {
                    combined[i] = Float(1.0 / 24.0) * (55 * e[3][i] - 59 * e[2][i] + 37 * e[1][i] - 9 * e[0][i])
                }
            }
        }
        if fromStart {
            curSample.withUnsafeBufferPointer { previousSample($0.baseAddress!, t: t0, prevT: prevT, count: count, into: prev) }
        } else {
            previousSample(sample, t: t0, prevT: prevT, count: count, into: prev)
        }
    }

    /// _get_prev_sample: x_{t-δ} from x_t and the combined model output (formula 9 of the PNDM paper).
    private func previousSample(_ x: UnsafePointer<Float>, t: Int, prevT: Int, count: Int,
                                into prev: UnsafeMutablePointer<Float>) {
        let alphaProd = alphasCumprod[t]
        let alphaProdPrev = prevT >= 0 ? alphasCumprod[prevT] : finalAlphaCumprod
        let betaProd = 1 - alphaProd
        let betaProdPrev = 1 - alphaProdPrev
        let v = config.predictionType == .vPrediction
        let sa = alphaProd.squareRoot(), sb = betaProd.squareRoot()
        let sampleCoeff = (alphaProdPrev / alphaProd).squareRoot()
        let denom = alphaProd * betaProdPrev.squareRoot() + (alphaProd * betaProd * alphaProdPrev).squareRoot()
        let diff = alphaProdPrev - alphaProd
        for i in 0..<count {
            // v_prediction: eps = sqrt(ᾱ_t) v + sqrt(1 − ᾱ_t) x_t
            let eps = v ? sa * combined[i] + sb * x[i] : combined[i]
            prev[i] = sampleCoeff * x[i] - diff * eps / denom
        }
    }
}
