import Synchronization

/// What a caller asks of a sampler (the C struct diffusion_sampler_params, checked).
public struct SamplerParams {
    public var scheduler: String? = nil
    public var steps = 0
    public var seed: UInt64 = 0
    public var batch = 1
    public var height = 0
    public var width = 0
    public var eta: Float = 0
    public var schedulerOverrides: JSONValue? = nil
    public init() {}
}

/// One generation: start noise, scheduler, RNG and the current x_t. Used by one thread at a time;
/// `cancel()` may come from any thread.
public final class Sampler {
    public let model: DiffusionModel
    public let scheduler: Scheduler
    public let batch: Int, channels: Int, height: Int, width: Int
    public private(set) var stepIndex = 0
    public private(set) var guidanceScale: Float = 1
    public private(set) var classLabels: [Int]
    private var generator: TorchGenerator
    private var latents: Tensor
    private let cancelRequested = Atomic<Bool>(false)

    public init(model: DiffusionModel, params p: SamplerParams) throws {
        self.model = model
        guard p.batch >= 1, p.batch <= 4096 else { throw DiffusionError(.invalidArgument, "batch \(p.batch) must be between 1 and 4096") }
        guard p.steps >= 0 else { throw DiffusionError(.invalidArgument, "steps \(p.steps) must be >= 0") }
        let config = model.config
        height = p.height > 0 ? p.height : (config.sampleHeight ?? 0)
        width = p.width > 0 ? p.width : (config.sampleWidth ?? 0)
        guard p.height >= 0, p.width >= 0, height > 0, width > 0 else {
            throw DiffusionError(.invalidArgument, "height and width must be given (the model has no sample_size) and positive")
        }
        let factor = 1 << (config.blockOutChannels.count - 1)
        guard height % factor == 0, width % factor == 0, height <= 16384, width <= 16384 else {
            throw DiffusionError(.invalidArgument, "height and width (\(height)x\(width)) must be multiples of \(factor) for this model")
        }
        batch = p.batch
        channels = config.inChannels
        // Guidance may double the batch later; the check is repeated at every evaluation.
        try model.checkMemory(batch: batch, height: height, width: width)
        guard config.outChannels == config.inChannels else {
            throw DiffusionError(.unsupported, "out_channels \(config.outChannels) differs from in_channels \(config.inChannels): the model's output is not a prediction of x_t's shape")
        }

        var schedulerConfig = SchedulerConfig()
        if let stored = model.schedulerJSON { try schedulerConfig.apply(stored) }
        if let overrides = p.schedulerOverrides {
            do { try schedulerConfig.apply(overrides) } catch let e as DiffusionError {
                throw DiffusionError(e.code == .invalidFile ? .invalidArgument : e.code, "scheduler_config: \(e.message)")
            }
        }
        let name = p.scheduler ?? model.defaultScheduler
        switch name {
        case "ddpm":
            scheduler = try DDPMScheduler(config: schedulerConfig, steps: p.steps > 0 ? p.steps : schedulerConfig.numTrainTimesteps)
        case "ddim":
            scheduler = try DDIMScheduler(config: schedulerConfig, steps: p.steps > 0 ? p.steps : 50, eta: p.eta)
        default:
            throw DiffusionError(.invalidArgument, "unknown scheduler \"\(name)\" (known: ddpm, ddim)")
        }
        classLabels = config.hasClassEmbedding ? [Int](repeating: 0, count: p.batch) : []
        // x_T ~ N(0, I), drawn first, as the pipelines do (init_noise_sigma is 1 for DDPM/DDIM).
        generator = TorchGenerator(seed: p.seed)
        latents = Tensor(n: batch, c: channels, h: height, w: width)
        generator.fillNormal(UnsafeMutableBufferPointer(start: latents.data, count: latents.count))
    }

    public var count: Int { latents.count }
    public var totalSteps: Int { scheduler.timesteps.count }
    public var remainingSteps: Int { totalSteps - stepIndex }

    public func setGuidanceScale(_ scale: Float) throws {
        guard scale.isFinite else { throw DiffusionError(.invalidArgument, "guidance scale must be finite") }
        if scale != 1, model.config.nullClassLabel == nil {
            throw DiffusionError(.noUnconditional, "guidance scale \(scale) needs a model with an unconditional input (a class-conditional model whose config.json names its _null_class_label); this model has none (use 1)")
        }
        guidanceScale = scale
    }

    public func setClassLabels(_ labels: [Int]) throws {
        let config = model.config
        guard config.hasClassEmbedding else {
            throw DiffusionError(.invalidArgument, "this model is not class-conditional")
        }
        guard labels.count == 1 || labels.count == batch else {
            throw DiffusionError(.invalidArgument, "\(labels.count) class labels for a batch of \(batch) (give 1 or \(batch))")
        }
        try config.checkClassLabels(labels)
        classLabels = labels.count == 1 ? [Int](repeating: labels[0], count: batch) : labels
    }

    public func copyLatents(to out: UnsafeMutablePointer<Float>) {
        out.update(from: latents.data, count: latents.count)
    }

    public func setLatents(from src: UnsafePointer<Float>) {
        latents.data.update(from: src, count: latents.count)
    }

    public func cancel() { cancelRequested.store(true, ordering: .relaxed) }

    /// Runs one step; returns the steps left after it.
    @discardableResult
    public func step() throws -> Int {
        if cancelRequested.exchange(false, ordering: .relaxed) {
            throw DiffusionError(.cancelled, "cancelled before step \(stepIndex + 1) of \(totalSteps)")
        }
        guard stepIndex < totalSteps else {
            throw DiffusionError(.invalidState, "all \(totalSteps) steps are done")
        }
        let output = try predictNoise(timestep: Float(scheduler.timesteps[stepIndex]))
        var noise: Tensor? = nil
        if scheduler.needsNoise(at: stepIndex) {
            let z = Tensor(n: batch, c: channels, h: height, w: width)
            generator.fillNormal(UnsafeMutableBufferPointer(start: z.data, count: z.count))
            noise = z
        }
        let next = Tensor(n: batch, c: channels, h: height, w: width)
        scheduler.step(index: stepIndex, modelOutput: output.data, sample: latents.data,
                       noise: noise.map { UnsafePointer($0.data) }, count: latents.count, batch: batch,
                       prev: next.data, predOriginal: nil)
        latents = next
        stepIndex += 1
        return remainingSteps
    }

    /// The network's output for x_t, with classifier-free guidance when the scale is not 1:
    /// eps = eps_uncond + scale * (eps_cond - eps_uncond), both halves evaluated as one batch.
    private func predictNoise(timestep t: Float) throws -> Tensor {
        let labels = classLabels.isEmpty ? nil : classLabels
        guard guidanceScale != 1, let null = model.config.nullClassLabel else {
            return try model.predict(latents, timesteps: [Float](repeating: t, count: batch), classLabels: labels)
        }
        let n = latents.count
        let doubled = Tensor(n: 2 * batch, c: channels, h: height, w: width)
        doubled.data.update(from: latents.data, count: n)
        (doubled.data + n).update(from: latents.data, count: n)
        let out = try model.predict(doubled, timesteps: [Float](repeating: t, count: 2 * batch),
                                    classLabels: [Int](repeating: null, count: batch) + classLabels)
        let guided = Tensor(n: batch, c: out.c, h: height, w: width)
        let half = guided.count, s = guidanceScale
        for i in 0..<half {
            let u = out.data[i]
            guided.data[i] = u + s * (out.data[half + i] - u)
        }
        return guided
    }

    /// Runs the remaining steps; `progress(step, total, timestep)` returning false cancels.
    public func run(progress: ((Int, Int, Int) -> Bool)?) throws {
        while stepIndex < totalSteps {
            let t = scheduler.timesteps[stepIndex]
            try step()
            if let progress, !progress(stepIndex, totalSteps, t) {
                throw DiffusionError(.cancelled, "cancelled by the progress callback after step \(stepIndex) of \(totalSteps)")
            }
        }
    }

    /// round(clamp(x / 2 + 0.5, 0, 1) * 255), NHWC, as diffusers' pipelines and numpy_to_pil do.
    public func images(into out: UnsafeMutablePointer<UInt8>) {
        let hw = height * width
        for n in 0..<batch {
            for c in 0..<channels {
                let plane = latents.data + (n * channels + c) * hw
                for i in 0..<hw {
                    let x = plane[i] / 2 + 0.5
                    let v = x.isNaN ? 0 : min(max(x, 0), 1) * 255
                    out[(n * hw + i) * channels + c] = UInt8(v.rounded(.toNearestOrEven))
                }
            }
        }
    }
}
