/// One sampling algorithm over a fixed list of timesteps. Schedulers hold no network and draw no
/// random numbers: the pipeline passes variance noise in when `needsNoise` says so.
public protocol Scheduler {
    /// The timesteps visited, in order.
    var timesteps: [Int] { get }
    /// Whether step `index` adds variance noise of the sample's shape.
    func needsNoise(at index: Int) -> Bool
    /// prev[i] = x_{t-1} from the model output at step `index`; predOriginal (if given) receives x_0.
    /// `count` elements form `batch` equal samples (thresholding works per sample).
    func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              noise: UnsafePointer<Float>?, count: Int, batch: Int,
              prev: UnsafeMutablePointer<Float>, predOriginal: UnsafeMutablePointer<Float>?)
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
