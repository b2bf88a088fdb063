/// One sampling algorithm over a fixed list of timesteps. Schedulers hold no network and draw no
/// random numbers: the pipeline passes variance noise in when `needsNoise` says so.
public protocol Scheduler {
    /// The timesteps visited, in order.
    var timesteps: [Int] { get }
    /// Whether step `index` adds variance noise of the sample's shape.
    func needsNoise(at index: Int) -> Bool
    /// prev[i] = x_{t-1} from the model output at step `index`; predOriginal (if given) receives x_0.
    func step(index: Int, modelOutput: UnsafePointer<Float>, sample: UnsafePointer<Float>,
              noise: UnsafePointer<Float>?, count: Int,
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
    @inline(__always)
    func clip(_ x0: Float) -> Float {
        guard clipSample else { return x0 }
        let r = Float(clipSampleRange)
        return min(max(x0, -r), r)
    }
}
