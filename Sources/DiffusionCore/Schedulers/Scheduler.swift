/// The shape a scheduler steps: `batch` samples of channels × height × width, float32 NCHW.
public struct SampleShape: Equatable, Sendable {
    public var batch: Int, channels: Int, height: Int, width: Int
    public init(batch: Int, channels: Int, height: Int, width: Int) {
        self.batch = batch; self.channels = channels; self.height = height; self.width = width
    }
    public var count: Int { batch * perSample }
    public var perSample: Int { channels * height * width }
}

/// One sampling algorithm over a fixed list of iterations, the way a diffusers pipeline drives its
/// scheduler: for iteration i, model input = sample / inputDivisor(at: i), model evaluated at
/// timesteps[i], then step(index: i, ...). Schedulers hold no network and draw no random numbers:
/// the sampler passes fresh noise in when `needsNoise(at:)` says so, in diffusers' order.
/// Multistep schedulers keep state: step is called once per iteration, with consecutive indices
/// from the first iteration run (0, or later for img2img).
public protocol Scheduler: AnyObject {
    /// The settings the scheduler was built from.
    var config: SchedulerConfig { get }
    /// The model timestep of each iteration, in order (Heun and PNDM's Runge–Kutta warm-up evaluate
    /// the model more than once per inference step, so iterations may exceed the steps asked for).
    var timesteps: [Float] { get }
    /// Iterations per inference step (diffusers' `order`; img2img skips t_start × order iterations).
    var order: Int { get }
    /// The standard deviation of the start sample: x_T = unit noise × initNoiseSigma.
    var initNoiseSigma: Float { get }
    /// Output channels per input channel the model must have (2 for learned variances).
    var modelOutputChannelFactor: Int { get }
    /// Whether this scheduler applies classifier guidance as a shift of its mean (DDPM) rather than
    /// through the eps-form of the model output.
    var guidesByMeanShift: Bool { get }
    /// scale_model_input: the model sees sample / inputDivisor(at: i) (a float32 division, as diffusers).
    func inputDivisor(at index: Int) -> Float
    /// ᾱ of iteration i's noise level (sqrt(ᾱ) x_0 + sqrt(1 − ᾱ) ε is the model input's form).
    func alphaProd(at index: Int) -> Float
    /// Whether step `index` takes fresh standard normal noise of the sample's shape.
    func needsNoise(at index: Int) -> Bool
    /// prev = the sample after iteration `index`. `modelOutput` has modelOutputChannelFactor ×
    /// shape.channels channels per sample. `meanShift` (only when guidesByMeanShift) is s·∇log p(y|x_t),
    /// added to the mean scaled by the step's variance.
    func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              noise: UnsafePointer<Float>?, meanShift: UnsafePointer<Float>?, shape: SampleShape,
              prev: UnsafeMutablePointer<Float>)
    /// add_noise: `original` noised to the level of iteration `index` (img2img's start).
    func addNoise(original: UnsafePointer<Float>, noise: UnsafePointer<Float>, count: Int, index: Int,
                  into out: UnsafeMutablePointer<Float>)
}

extension Scheduler {
    public var order: Int { 1 }
    public var initNoiseSigma: Float { 1 }
    public var modelOutputChannelFactor: Int { 1 }
    public var guidesByMeanShift: Bool { false }
    public func inputDivisor(at index: Int) -> Float { 1 }

    /// Variance-preserving add_noise: sqrt(ᾱ) x_0 + sqrt(1 − ᾱ) ε (DDPM, DDIM, PNDM, LCM).
    public func addNoise(original: UnsafePointer<Float>, noise: UnsafePointer<Float>, count: Int, index: Int,
                         into out: UnsafeMutablePointer<Float>) {
        let a = alphaProd(at: index)
        let sa = a.squareRoot(), sb = (1 - a).squareRoot()
        for i in 0..<count { out[i] = sa * original[i] + sb * noise[i] }
    }
}

/// x_0 (and eps) from the model output for each prediction type, in diffusers' operation order.
@inline(__always)
func predictOriginal(_ type: SchedulerConfig.PredictionType, modelOutput m: Float, sample x: Float,
                     alphaProd a: Float, betaProd b: Float) -> (x0: Float, eps: Float) {
    switch type {
    case .epsilon:
        // x0 = (x_t - sqrt(1 - ᾱ) eps) / sqrt(ᾱ)
        return ((x - b.squareRoot() * m) / a.squareRoot(), m)
    case .sample:
        return (m, (x - a.squareRoot() * m) / b.squareRoot())
    case .vPrediction:
        // x0 = sqrt(ᾱ) x_t - sqrt(1 - ᾱ) v;  eps = sqrt(ᾱ) v + sqrt(1 - ᾱ) x_t
        return (a.squareRoot() * x - b.squareRoot() * m, a.squareRoot() * m + b.squareRoot() * x)
    }
}

extension SchedulerConfig {
    /// x0 for every element from the model output (steps 2–3 of diffusers' step): predicted,
    /// then clipped or thresholded.
    func predictOriginal(modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>, count: Int, batch: Int,
                         alphaProd: Float, betaProd: Float, into x0: UnsafeMutablePointer<Float>) {
        for i in 0..<count {
            x0[i] = DiffusionCore.predictOriginal(predictionType, modelOutput: modelOutput[i], sample: sample[i],
                                                  alphaProd: alphaProd, betaProd: betaProd).x0
        }
        limitPredictedOriginal(x0, count: count, batch: batch)
    }

    /// Clips or dynamically thresholds predicted x0 in place (thresholding wins, as in diffusers).
    func limitPredictedOriginal(_ x0: UnsafeMutablePointer<Float>, count: Int, batch: Int) {
        if thresholding {
            let per = count / batch
            var sorted = [Float](repeating: 0, count: per)
            for b in 0..<batch {
                let x = x0 + b * per
                for i in 0..<per { sorted[i] = abs(x[i]) }
                sorted.sort()
                // s = quantile(|x0|, ratio) with linear interpolation in float32 (torch.quantile),
                // clamped to [1, sample_max_value]; then x0 = clamp(x0, -s, s) / s
                let rank = Float(dynamicThresholdingRatio) * Float(per - 1)
                let below = min(Int(rank), per - 1), above = min(below + 1, per - 1)
                let w = rank - Float(below)
                let lo = sorted[below], hi = sorted[above]
                let q = w < 0.5 ? lo + w * (hi - lo) : hi - (hi - lo) * (1 - w)
                let s = min(max(q, 1), Float(sampleMaxValue))
                for i in 0..<per { x[i] = min(max(x[i], -s), s) / s }
            }
        } else if clipSample {
            let r = Float(clipSampleRange)
            for i in 0..<count { x0[i] = min(max(x0[i], -r), r) }
        }
    }
}
