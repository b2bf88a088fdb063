#if canImport(Glibc)
import Glibc
#endif

/// Scheduler settings, decoded from diffusers' keys. `SchedulerConfig(for: name)` starts from the
/// diffusers class's defaults; `apply` layers scheduler_config.json and caller overrides on top.
/// The settings every class shares are decoded here; the rest stay in `raw` (all keys applied, the
/// last one wins) for the scheduler that reads them. Keys of other schedulers are ignored, as
/// `from_config` does.
public struct SchedulerConfig {
    public enum PredictionType: String { case epsilon, sample, vPrediction = "v_prediction" }
    public enum Spacing: String { case leading, trailing, linspace }

    public var numTrainTimesteps = 1000
    public var betaStart = 0.0001
    public var betaEnd = 0.02
    public var betaSchedule = "linear"
    public var trainedBetas: [Double]? = nil
    public var clipSample = true
    public var clipSampleRange = 1.0
    public var predictionType = PredictionType.epsilon
    public var timestepSpacing = Spacing.leading
    public var stepsOffset = 0
    /// DDPM only.
    public var varianceType = "fixed_small"
    /// DDIM only.
    public var setAlphaToOne = true
    public var thresholding = false
    public var dynamicThresholdingRatio = 0.995
    public var sampleMaxValue = 1.0
    /// Every key applied so far, later applications replacing earlier values.
    public private(set) var raw: [(String, JSONValue)] = []

    public init() {}

    /// The defaults of the diffusers class behind scheduler `name` (keys where it differs from DDPM's).
    public init(for name: String) {
        self.init()
        let linspace: [(String, JSONValue)] = [("timestep_spacing", .string("linspace"))]
        let sdBetas: [(String, JSONValue)] = [("beta_start", .number(0.00085)), ("beta_end", .number(0.012))]
        let defaults: [(String, JSONValue)]
        switch name {
        case "euler", "euler_a", "lms", "dpmpp_2m", "unipc": defaults = linspace
        case "heun": defaults = linspace + sdBetas + [("clip_sample", .bool(false))]
        case "pndm": defaults = [("set_alpha_to_one", .bool(false))]
        case "lcm": defaults = sdBetas + [("beta_schedule", .string("scaled_linear")), ("clip_sample", .bool(false))]
        default: defaults = []
        }
        try! apply(.object(defaults))
        raw = []
    }

    /// A reader of the applied keys, for the settings one scheduler alone has.
    var reader: ConfigReader { ConfigReader(.object(raw)) }

    /// Applies the keys of `json` (a scheduler_config.json object or caller overrides) on top.
    public mutating func apply(_ json: JSONValue) throws {
        guard case .object = json else { throw DiffusionError(.invalidArgument, "scheduler config is not a JSON object") }
        let r = ConfigReader(json)
        if case .object(let pairs) = json {
            for (k, v) in pairs {
                if let i = raw.firstIndex(where: { $0.0 == k }) { raw[i].1 = v } else { raw.append((k, v)) }
            }
        }
        numTrainTimesteps = try r.int("num_train_timesteps", numTrainTimesteps, min: 2)
        guard numTrainTimesteps <= 1_000_000 else {
            throw DiffusionError(.unsupported, "num_train_timesteps \(numTrainTimesteps) is out of range")
        }
        betaStart = try r.double("beta_start", betaStart)
        betaEnd = try r.double("beta_end", betaEnd)
        betaSchedule = try r.string("beta_schedule", betaSchedule)
        guard ["linear", "scaled_linear", "squaredcos_cap_v2"].contains(betaSchedule) else {
            throw r.unsupported("beta_schedule", betaSchedule)
        }
        if let v = json["trained_betas"] {
            if v.isNull { trainedBetas = nil } else {
                guard let a = v.arrayValue, let betas = Optional(a.compactMap { $0.doubleValue }), betas.count == a.count else {
                    throw DiffusionError(.invalidFile, "trained_betas must be a list of numbers")
                }
                trainedBetas = betas
            }
        }
        clipSample = try r.bool("clip_sample", clipSample)
        clipSampleRange = try r.double("clip_sample_range", clipSampleRange)
        let prediction = try r.string("prediction_type", predictionType.rawValue)
        guard let p = PredictionType(rawValue: prediction) else { throw r.unsupported("prediction_type", prediction) }
        predictionType = p
        let spacing = try r.string("timestep_spacing", timestepSpacing.rawValue)
        guard let s = Spacing(rawValue: spacing) else { throw r.unsupported("timestep_spacing", spacing) }
        timestepSpacing = s
        stepsOffset = try r.int("steps_offset", stepsOffset, min: 0)
        varianceType = try r.string("variance_type", varianceType)
        setAlphaToOne = try r.bool("set_alpha_to_one", setAlphaToOne)
        thresholding = try r.bool("thresholding", thresholding)
        dynamicThresholdingRatio = try r.double("dynamic_thresholding_ratio", dynamicThresholdingRatio)
        guard dynamicThresholdingRatio >= 0, dynamicThresholdingRatio <= 1 else {
            throw DiffusionError(.invalidFile, "dynamic_thresholding_ratio \(dynamicThresholdingRatio) must be in [0, 1]")
        }
        sampleMaxValue = try r.double("sample_max_value", sampleMaxValue)
        if try r.bool("rescale_betas_zero_snr", false) { throw r.unsupported("rescale_betas_zero_snr", "true") }
        if let b = trainedBetas, b.count != numTrainTimesteps {
            throw DiffusionError(.invalidFile, "trained_betas has \(b.count) values but num_train_timesteps is \(numTrainTimesteps)")
        }
        // Every scheduler divides by ᾱ, 1 − ᾱ or takes their logs: 0 < ᾱ_t < 1 for every t, i.e. each
        // beta in (0, 1) and no underflow (diffusers would compute NaN or infinite noise levels).
        let acp = alphasCumprod()
        if let bad = acp.firstIndex(where: { !($0 > 0 && $0 < 1) }) {
            throw DiffusionError(.invalidFile, "the beta schedule (beta_schedule \(betaSchedule), beta_start \(betaStart), beta_end \(betaEnd)\(trainedBetas == nil ? "" : ", trained_betas")) gives alphas_cumprod[\(bad)] = \(acp[bad]), outside (0, 1): every beta must be in (0, 1)")
        }
    }

    /// The settings as diffusers keys (for diffusion_model_config_json).
    public var json: JSONValue {
        guard case .object(var pairs) = commonJSON else { return commonJSON }
        for (k, v) in raw where !k.hasPrefix("_") && !pairs.contains(where: { $0.0 == k }) { pairs.append((k, v)) }
        return .object(pairs)
    }

    private var commonJSON: JSONValue {
        .object([
            ("num_train_timesteps", .number(Double(numTrainTimesteps))),
            ("beta_start", .number(betaStart)),
            ("beta_end", .number(betaEnd)),
            ("beta_schedule", .string(betaSchedule)),
            ("trained_betas", trainedBetas.map { .array($0.map { .number($0) }) } ?? .null),
            ("clip_sample", .bool(clipSample)),
            ("clip_sample_range", .number(clipSampleRange)),
            ("prediction_type", .string(predictionType.rawValue)),
            ("timestep_spacing", .string(timestepSpacing.rawValue)),
            ("steps_offset", .number(Double(stepsOffset))),
            ("variance_type", .string(varianceType)),
            ("set_alpha_to_one", .bool(setAlphaToOne)),
            ("thresholding", .bool(thresholding)),
            ("dynamic_thresholding_ratio", .number(dynamicThresholdingRatio)),
            ("sample_max_value", .number(sampleMaxValue)),
        ])
    }

    /// alphas_cumprod in float32, computed as diffusers does (torch.linspace, cumprod).
    public func alphasCumprod() -> [Float] {
        let n = numTrainTimesteps
        var betas: [Float]
        if let trained = trainedBetas {
            betas = trained.map { Float($0) }
        } else {
            switch betaSchedule {
            case "scaled_linear":
                betas = torchLinspace(Float(betaStart.squareRoot()), Float(betaEnd.squareRoot()), n).map { $0 * $0 }
            case "squaredcos_cap_v2":
                // Glide cosine schedule: betas from alpha_bar(t) = cos((t + 0.008) / 1.008 * pi / 2)^2, in double.
                func alphaBar(_ t: Double) -> Double { let c = cos((t + 0.008) / 1.008 * Double.pi / 2); return c * c }
                betas = (0..<n).map { i in
                    Float(min(1 - alphaBar(Double(i + 1) / Double(n)) / alphaBar(Double(i) / Double(n)), 0.999))
                }
            default:
                betas = torchLinspace(Float(betaStart), Float(betaEnd), n)
            }
        }
        // torch.cumprod accumulates float32 input in double and rounds each element.
        var out = [Float](repeating: 0, count: n)
        var acc = 1.0
        for i in 0..<n {
            acc *= Double(1 - betas[i])
            out[i] = Float(acc)
        }
        return out
    }

    /// The inference timesteps, as set_timesteps computes them for DDPM and DDIM.
    public func timesteps(steps: Int) throws -> [Int] {
        let ts = try spacedTimesteps(steps: steps)
        // diffusers indexes alphas_cumprod with these; out of range it wraps (-1) or raises (n).
        if let bad = ts.first(where: { $0 < 0 || $0 >= numTrainTimesteps }) {
            throw DiffusionError(.invalidArgument, "\(steps) steps with timestep_spacing \(timestepSpacing.rawValue) and steps_offset \(stepsOffset) give timestep \(bad), outside [0, \(numTrainTimesteps - 1)] (diffusers would index out of range); choose another step count")
        }
        return ts
    }

    private func spacedTimesteps(steps: Int) throws -> [Int] {
        let n = numTrainTimesteps
        guard steps >= 1, steps <= n else {
            throw DiffusionError(.invalidArgument, "steps \(steps) must be between 1 and num_train_timesteps (\(n))")
        }
        switch timestepSpacing {
        case .linspace:
            // np.linspace(0, n - 1, steps).round()[::-1]
            return (0..<steps).reversed().map { i -> Int in
                let v = steps == 1 ? 0.0 : Double(i) * (Double(n - 1) / Double(steps - 1))
                return Int((i == steps - 1 && steps > 1 ? Double(n - 1) : v).rounded(.toNearestOrEven))
            }
        case .leading:
            let ratio = n / steps
            return (0..<steps).reversed().map { $0 * ratio + stepsOffset }
        case .trailing:
            // np.round(np.arange(n, 0, -n/steps)) - 1, with numpy's arange arithmetic
            return SigmaSchedule.spacedTimesteps(self, steps: steps).map { Int($0) }
        }
    }
}

/// torch.linspace(start, end, steps, dtype=float32): from both ends in float32, fused
/// multiply-adds as torch's vectorised CPU kernel computes them.
func torchLinspace(_ start: Float, _ end: Float, _ steps: Int) -> [Float] {
    if steps == 1 { return [start] }
    let step = (end - start) / Float(steps - 1)
    let half = steps / 2
    return (0..<steps).map { i in
        i < half ? start.addingProduct(step, Float(i))
                 : end.addingProduct(-step, Float(steps - i - 1))
    }
}
