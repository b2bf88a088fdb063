import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What a caller asks of a sampler (the C struct diffusion_sampler_params, checked).
public struct SamplerParams {
    public var scheduler: String? = nil
    public var steps = 0
    public var seed: UInt64 = 0
    public var batch = 1
    /// Needed without a model; with a model 0 or the model's in_channels.
    public var channels = 0
    public var height = 0
    public var width = 0
    public var eta: Float = 0
    public var schedulerOverrides: JSONValue? = nil
    /// Text pipelines: the prompt and negative prompt (nil: ""), and CLIP layers to skip (0: none).
    public var prompt: String? = nil
    public var negativePrompt: String? = nil
    public var clipSkip = 0
    public init() {}
}

/// The stages of a generation, as progress reports them.
public enum GenerationStage: Int32, Sendable {
    case textEncoding = 0, denoising = 1, decoding = 2
}

/// One generation: start noise, scheduler, RNG and the current x_t, driven like a diffusers pipeline.
/// Used by one thread at a time; `cancel()` may come from any thread.
public final class Sampler {
    /// The loaded model the sampler came from (kept alive by it), or nil for a caller's network.
    public let model: DiffusionModel?
    /// The network, and what conditions it: `conditional` for the batch, `unconditional` (same
    /// batch) for classifier-free guidance when the model has one.
    let network: Denoiser
    let threads: Int
    public private(set) var conditional: Conditioning
    public private(set) var unconditional: Conditioning?
    /// Why guidance is impossible when `unconditional` is nil (for the error message).
    private let noUnconditionalReason: String
    /// Work the first step does before denoising: a text pipeline encodes its prompts then
    /// (conditional and unconditional text states), so creating a sampler stays cheap and the
    /// encoding reports progress and can be cancelled.
    private var pendingTextStates: (() throws -> (Tokens, Tokens))?
    /// Called at each stage's progress (stage, done, total); false cancels.
    public var stageCallback: ((GenerationStage, Int, Int) -> Bool)? = nil
    public let scheduler: Scheduler
    public let schedulerName: String
    public let shape: SampleShape
    /// Inference steps asked for (iterations may be more: Heun, PNDM).
    public let inferenceSteps: Int
    public private(set) var guidanceScale: Float = 1
    /// Absolute index into scheduler.timesteps of the next iteration; img2img starts later.
    public private(set) var iteration = 0
    public private(set) var firstIteration = 0
    private var generator: TorchGenerator
    private let seed: UInt64
    /// Text pipelines guide only above 1 and may rescale the guided prediction (diffusers' rules).
    let guidesAboveOneOnly: Bool
    public private(set) var guidanceRescale: Float = 0
    /// Inpainting with a UNet of x_t's channels: after each step the known region (mask 0) is
    /// replaced by the image latents noised to the next step's level (the clean latents at the end).
    private var blend: (imageLatents: [Float], mask: [Float])? = nil
    /// The unit-variance start noise (x_T / init_noise_sigma, or img2img's noise).
    private var startNoise: [Float]
    private var initImage: [Float]? = nil
    private var latents: Tensor
    var classifier: (gradient: DenoiseFunction, scale: Float)? = nil
    private let cancelRequested = Atomic<Bool>(false)
    /// Set during a step, so a callback that steps its own sampler gets an error, not a tangle.
    private var stepping = false
    /// x_t came from a step (which checked it is finite), not from the caller.
    private var latentsChecked = false
    /// The memory plan of the model's evaluations (none for a caller's network, whose memory is
    /// its own); its block is freed after the last step, before decoding.
    public let arena: Arena?

    public var batch: Int { shape.batch }
    public var channels: Int { shape.channels }
    public var height: Int { shape.height }
    public var width: Int { shape.width }
    public var count: Int { shape.count }
    /// Iterations of this run (from img2img's start) and how many are done.
    public var totalSteps: Int { scheduler.timesteps.count - firstIteration }
    public var stepIndex: Int { iteration - firstIteration }
    public var remainingSteps: Int { scheduler.timesteps.count - iteration }
    /// The timesteps this run visits, in order.
    public var timesteps: ArraySlice<Float> { scheduler.timesteps[firstIteration...] }

    /// A sampler over a loaded model: its denoiser, default size and conditioning.
    public convenience init(model: DiffusionModel, params p: SamplerParams) throws {
        let setup = try model.samplerSetup(p)
        try self.init(model: model, network: model.denoiser, threads: model.threads, shape: setup.shape, params: p,
                      stored: model.schedulerSettings(for:), defaultScheduler: model.defaultScheduler,
                      conditional: setup.conditional, unconditional: setup.unconditional,
                      noUnconditionalReason: setup.noUnconditionalReason, guidesAboveOneOnly: model.latent != nil)
        pendingTextStates = setup.textStates
        let outFactor = scheduler.modelOutputChannelFactor
        let (inC, outC) = (network.sampleChannels, network.outChannels)
        guard outC == inC * outFactor else {
            throw DiffusionError(.unsupported, outFactor == 1
                ? "out_channels \(outC) differs from in_channels \(inC): the model's output is not a prediction of x_t's shape (variance_type learned or learned_range with scheduler ddpm uses such models)"
                : "scheduler \(schedulerName) with variance_type \(scheduler.config.varianceType) needs out_channels = 2 x in_channels (\(2 * inC)); the model has \(outC)")
        }
    }

    /// A sampler whose network is the caller's `denoiser` (no model): the shape comes from params.
    public convenience init(denoiser: @escaping DenoiseFunction, params p: SamplerParams) throws {
        guard p.batch >= 1, p.batch <= 4096 else { throw DiffusionError(.invalidArgument, "batch \(p.batch) must be between 1 and 4096") }
        guard p.channels >= 1, p.height >= 1, p.width >= 1 else {
            throw DiffusionError(.invalidArgument, "channels, height and width must be positive without a model (got \(p.channels), \(p.height), \(p.width))")
        }
        guard p.channels <= 4096, p.height <= 16384, p.width <= 16384, p.batch * p.channels * p.height * p.width <= 1 << 31 else {
            throw DiffusionError(.invalidArgument, "shape \(p.batch)x\(p.channels)x\(p.height)x\(p.width) is too large")
        }
        let network = CallbackDenoiser(denoiser, channels: p.channels)
        try self.init(model: nil, network: network, threads: 1,
                      shape: SampleShape(batch: p.batch, channels: p.channels, height: p.height, width: p.width),
                      params: p, stored: { _ in nil }, defaultScheduler: "ddpm", conditional: .none, unconditional: nil,
                      noUnconditionalReason: "a caller's denoiser applies its own guidance (use 1)", guidesAboveOneOnly: false)
        network.outChannels = p.channels * scheduler.modelOutputChannelFactor
    }

    private init(model: DiffusionModel?, network: Denoiser, threads: Int, shape: SampleShape, params p: SamplerParams,
                 stored: (String) -> JSONValue?, defaultScheduler: String, conditional: Conditioning, unconditional: Conditioning?,
                 noUnconditionalReason: String, guidesAboveOneOnly: Bool) throws {
        self.model = model
        arena = model == nil ? nil : Arena()
        self.guidesAboveOneOnly = guidesAboveOneOnly
        seed = p.seed
        self.network = network
        self.threads = threads
        self.conditional = conditional
        self.unconditional = unconditional
        self.noUnconditionalReason = noUnconditionalReason
        self.shape = shape
        guard p.steps >= 0 else { throw DiffusionError(.invalidArgument, "steps \(p.steps) must be >= 0") }
        let requested = p.scheduler ?? defaultScheduler
        guard let (name, implied) = SchedulerRegistry.resolve(requested) else {
            throw DiffusionError(.invalidArgument, "unknown scheduler \"\(requested)\" (known: \(SchedulerRegistry.knownNames); see diffusion_scheduler_names)")
        }
        var config = SchedulerConfig(for: name)
        if let stored = stored(name) { try config.apply(stored) }
        do {
            if !implied.isEmpty { try config.apply(.object(implied)) }
            if let overrides = p.schedulerOverrides { try config.apply(overrides) }
        } catch let e as DiffusionError {
            throw DiffusionError(e.code == .invalidFile ? .invalidArgument : e.code, "scheduler_config: \(e.message)")
        }
        schedulerName = name
        inferenceSteps = p.steps > 0 ? p.steps : SchedulerRegistry.defaultSteps(name, config: config)
        scheduler = try SchedulerRegistry.make(name, config: config, steps: inferenceSteps, eta: p.eta)
        // x_T = randn(shape) * init_noise_sigma, drawn first, as the pipelines do.
        var generator = TorchGenerator(seed: p.seed)
        // The start noise, the scheduler's history and guidance's copies: a few latents' worth.
        try probeAllocation(bytes: shape.count * MemoryLayout<Float>.size * 8, "the sampler's state (\(shape.count) values)")
        var noise = [Float](repeating: 0, count: shape.count)
        noise.withUnsafeMutableBufferPointer { generator.fillNormal($0) }
        self.generator = generator
        startNoise = noise
        latents = try Tensor(n: shape.batch, c: shape.channels, h: shape.height, w: shape.width)
        resetStart()
    }

    /// x at the first iteration: the start noise scaled by init_noise_sigma, or the init image
    /// noised to the first iteration's level.
    private func resetStart() {
        latentsChecked = false
        if let image = initImage {
            scheduler.addNoise(original: image, noise: startNoise, count: count, index: firstIteration, into: latents.data)
        } else {
            let sigma = scheduler.initNoiseSigma
            for i in 0..<count { latents.data[i] = startNoise[i] * sigma }
        }
    }

    private func checkNotStarted(_ what: String) throws {
        guard iteration == firstIteration, !stepping else {
            throw DiffusionError(.invalidState, "\(what) must come before the first step (\(stepIndex) steps done)")
        }
    }

    public func setGuidanceScale(_ scale: Float) throws {
        guard scale.isFinite else { throw DiffusionError(.invalidArgument, "guidance scale must be finite") }
        if scale != 1, unconditional == nil {
            throw DiffusionError(.noUnconditional, "guidance scale \(scale) needs an unconditional input: \(noUnconditionalReason)")
        }
        guidanceScale = scale
    }

    /// diffusers' guidance_rescale φ in [0, 1] (Lin et al. 2023, §3.4): the guided prediction is
    /// mixed with itself rescaled to the conditional prediction's standard deviation per sample.
    public func setGuidanceRescale(_ rescale: Float) throws {
        guard rescale.isFinite, rescale >= 0, rescale <= 1 else {
            throw DiffusionError(.invalidArgument, "guidance rescale \(rescale) must be in [0, 1]")
        }
        guidanceRescale = rescale
    }

    /// Whether a step evaluates the unconditional input too.
    var guides: Bool {
        unconditional != nil && (guidesAboveOneOnly ? guidanceScale > 1 : guidanceScale != 1)
    }

    /// Sets the text states (prompt and negative prompt, [batch, tokens, width]) in place of any
    /// prompt still to be encoded; other conditioning (inpainting's channels) stays.
    public func setTextStates(_ conditional: Tokens, unconditional: Tokens) {
        pendingTextStates = nil
        self.conditional.context = conditional
        var u = self.unconditional ?? Conditioning()
        u.context = unconditional
        self.unconditional = u
    }

    /// Extra input channels (inpainting's mask and masked-image latents) for both halves.
    public func setExtraChannels(_ extra: Tensor) {
        conditional.extraChannels = extra
        unconditional?.extraChannels = extra
    }

    /// A pending cancel, consumed: throws CANCELLED naming `when`.
    public func checkCancelled(_ when: String) throws {
        if cancelRequested.exchange(false, ordering: .relaxed) {
            throw DiffusionError(.cancelled, "cancelled \(when)")
        }
    }

    /// Reports a stage's progress to the stage callback; false from it cancels.
    public func report(_ stage: GenerationStage, _ done: Int, of total: Int) throws {
        if let stageCallback, !stageCallback(stage, done, total) {
            throw DiffusionError(.cancelled, "cancelled by the progress callback during \(stage)")
        }
    }

    /// Encodes the prompts if that is still to be done (the first step does it).
    public func prepareTextStates() throws {
        guard let encode = pendingTextStates else { return }
        try checkCancelled("before the prompt was encoded")
        try report(.textEncoding, 0, of: 1)
        let (c, u) = try encode()
        setTextStates(c, unconditional: u)
        try report(.textEncoding, 1, of: 1)
        try checkCancelled("after the prompt was encoded")
    }

    /// Replaces what conditions the network (e.g. other class labels), before or between steps.
    public func setConditioning(_ conditional: Conditioning, unconditional: Conditioning?) {
        self.conditional = conditional
        self.unconditional = unconditional
    }

    /// Classifier guidance (Dhariwal & Nichol): `gradient` fills ∇ log p(y | x_t) for the model input
    /// x_t at each step; `scale` 0 turns it off.
    public func setClassifierGuidance(_ gradient: DenoiseFunction?, scale: Float) throws {
        guard scale.isFinite else { throw DiffusionError(.invalidArgument, "gradient scale must be finite") }
        classifier = gradient.flatMap { scale != 0 ? ($0, scale) : nil }
    }

    /// img2img: starts from `image` (x_0 of the batch, or of one sample for all) noised to the
    /// level diffusers' img2img pipelines pick for `strength` in (0, 1], skipping the earlier steps.
    public func setInitImage(_ image: UnsafePointer<Float>, count n: Int, strength: Double) throws {
        try checkNotStarted("an init image")
        guard n == count || n == shape.perSample else {
            throw DiffusionError(.invalidArgument, "init image has \(n) values, expected \(count) (batch x channels x height x width) or \(shape.perSample) (one image for the whole batch)")
        }
        let begin = try firstIteration(strength: strength)
        var x = [Float](repeating: 0, count: count)
        for b in 0..<(n == count ? 1 : batch) { (0..<n).forEach { x[b * n + $0] = image[$0] } }
        initImage = x
        firstIteration = begin
        iteration = begin
        resetStart()
    }

    /// diffusers' get_timesteps: init_timestep = min(int(steps · strength), steps), the first
    /// (steps − init_timestep) · order iterations skipped.
    private func firstIteration(strength: Double) throws -> Int {
        guard strength.isFinite, strength > 0, strength <= 1 else {
            throw DiffusionError(.invalidArgument, "strength \(strength) must be in (0, 1]")
        }
        let initTimestep = min(Int(Double(inferenceSteps) * strength), inferenceSteps)
        let begin = max(inferenceSteps - initTimestep, 0) * scheduler.order
        guard begin < scheduler.timesteps.count else {
            throw DiffusionError(.invalidArgument, "strength \(strength) leaves no step of \(inferenceSteps) (needs strength >= \(1 / Double(inferenceSteps)))")
        }
        return begin
    }

    /// Draws the sampler's randomness again in a latent pipeline's order: `before` draws what
    /// precedes the start noise (img2img's and inpainting's posterior sample of the image), then the
    /// start noise, then `after` (inpainting's sample of the masked image). Before the first step.
    public func redrawNoise(before: (inout TorchGenerator) throws -> Void,
                            after: (inout TorchGenerator) throws -> Void) throws {
        try checkNotStarted("an init image or mask")
        var g = TorchGenerator(seed: seed)
        try before(&g)
        startNoise.withUnsafeMutableBufferPointer { g.fillNormal($0) }
        try after(&g)
        generator = g
        resetStart()
    }

    /// Inpainting over a UNet of x_t's channels (diffusers' StableDiffusionInpaintPipeline with a
    /// 4-channel UNet): `imageLatents` [batch, C, h, w] and `mask` [batch, 1, h, w] (1 = repaint);
    /// after each step x = (1 − m) · add_noise(image, start noise, next level) + m · x.
    public func setBlend(imageLatents: [Float], mask: [Float]) throws {
        try checkNotStarted("a mask")
        guard imageLatents.count == count, mask.count == batch * height * width else {
            throw DiffusionError(.invalidArgument, "inpainting latents/mask have \(imageLatents.count)/\(mask.count) values, expected \(count)/\(batch * height * width)")
        }
        blend = (imageLatents, mask)
    }

    /// Inpainting's strength: below 1 the run starts from `imageLatents` (needed then) noised to
    /// the chosen level (as img2img); 1 starts from noise. Before the first step.
    public func setStrength(_ strength: Double, imageLatents: [Float]?) throws {
        try checkNotStarted("strength")
        let begin = try firstIteration(strength: strength)
        if strength < 1 {
            guard let imageLatents, imageLatents.count == count else {
                throw DiffusionError(.internal, "inpainting below strength 1 without image latents of the sampler's size")
            }
            initImage = imageLatents
        } else {
            initImage = nil
        }
        firstIteration = strength < 1 ? begin : 0
        iteration = firstIteration
        resetStart()
    }

    /// Replaces the unit start noise (e.g. a spherical interpolation of two seeds' noise).
    public func setStartNoise(_ noise: UnsafePointer<Float>) throws {
        try checkNotStarted("start noise")
        startNoise = Array(UnsafeBufferPointer(start: noise, count: count))
        resetStart()
    }

    public func copyLatents(to out: UnsafeMutablePointer<Float>) {
        out.update(from: latents.data, count: latents.count)
    }

    public func setLatents(from src: UnsafePointer<Float>) {
        latents.data.update(from: src, count: latents.count)
        latentsChecked = false
    }

    public func cancel() { cancelRequested.store(true, ordering: .relaxed) }

    /// Runs one iteration; returns the iterations left after it.
    @discardableResult
    public func step() throws -> Int {
        try checkCancelled("before step \(stepIndex + 1) of \(totalSteps)")
        guard iteration < scheduler.timesteps.count else {
            throw DiffusionError(.invalidState, "all \(totalSteps) steps are done")
        }
        guard !stepping else {
            throw DiffusionError(.invalidState, "step called from within one of this sampler's own callbacks")
        }
        stepping = true
        defer { stepping = false }
        try prepareTextStates()
        let i = iteration
        let t = scheduler.timesteps[i]
        guard latentsChecked || latents.data.allFinite(count) else {
            throw DiffusionError(.invalidArgument, "the sample x_t holds non-finite values before step \(stepIndex + 1) (from set_latents, set_start_noise or the init image?)")
        }
        // scale_model_input
        let divisor = scheduler.inputDivisor(at: i)
        var input = latents
        if divisor != 1 {
            input = try Tensor(n: batch, c: channels, h: height, w: width)
            for k in 0..<count { input.data[k] = latents.data[k] / divisor }
        }
        let output = try evaluate(input, timestep: t)
        if !output.data.allFinite(output.count) {
            throw model == nil
                ? DiffusionError(.callback, "the denoiser's output at step \(stepIndex + 1) (timestep \(t)) is not finite")
                : DiffusionError(.invalidFile, "the network's output at step \(stepIndex + 1) (timestep \(t)) is not finite: the weights hold NaN or infinite values, or overflow")
        }
        var meanShift: [Float]? = nil
        if let (gradient, scale) = classifier {
            var grad = [Float](repeating: 0, count: count)
            try grad.withUnsafeMutableBufferPointer { g in
                do { try gradient(input.data, shape, t, g.baseAddress!) } catch let e as DiffusionError {
                    throw DiffusionError(e.code, "classifier gradient at step \(stepIndex + 1) (timestep \(t)): \(e.message)")
                }
            }
            guard grad.allSatisfy({ $0.isFinite }) else {
                throw DiffusionError(.callback, "the classifier gradient at step \(stepIndex + 1) (timestep \(t)) is not finite")
            }
            if scheduler.guidesByMeanShift {
                for k in grad.indices { grad[k] *= scale }
                meanShift = grad
            } else {
                applyEpsilonGuidance(grad, scale: scale, index: i, to: output)
            }
        }
        var noise: Tensor? = nil
        if scheduler.needsNoise(at: i) {
            let z = try Tensor(n: batch, c: channels, h: height, w: width)
            generator.fillNormal(UnsafeMutableBufferPointer(start: z.data, count: z.count))
            noise = z
        }
        let next = try Tensor(n: batch, c: channels, h: height, w: width)
        func schedulerStep(_ shift: UnsafePointer<Float>?) {
            scheduler.step(index: i, modelOutput: output.data, sample: latents.data,
                           noise: noise.map { UnsafePointer($0.data) }, meanShift: shift, shape: shape, prev: next.data)
        }
        if let meanShift { meanShift.withUnsafeBufferPointer { schedulerStep($0.baseAddress) } } else { schedulerStep(nil) }
        // A safety net: degenerate settings (noise levels that repeat or vanish) make some
        // schedulers divide by zero. Report it instead of handing back NaN; x_t stays as it was.
        if !next.data.allFinite(count) {
            throw DiffusionError(.invalidArgument, "scheduler \(schedulerName) produced non-finite values at step \(stepIndex + 1) (timestep \(t)); its settings give degenerate noise levels")
        }
        if let (image, mask) = blend {
            // The known region: the image noised to the next step's level, the clean image after the last.
            var known = image
            if i + 1 < scheduler.timesteps.count {
                known.withUnsafeMutableBufferPointer { k in
                    scheduler.addNoise(original: image, noise: startNoise, count: count, index: i + 1, into: k.baseAddress!)
                }
            }
            let hw = height * width
            for k in 0..<count {
                let m = mask[(k / (channels * hw)) * hw + k % hw]
                next.data[k] = (1 - m) * known[k] + m * next.data[k]
            }
        }
        latents = next
        latentsChecked = true
        iteration += 1
        if isFinished { arena?.releaseStorage() }
        return remainingSteps
    }

    /// Runs the remaining steps; `progress(step, total, timestep)` returning false cancels, as does
    /// the stage callback.
    public func run(progress: ((Int, Int, Float) -> Bool)?) throws {
        while iteration < scheduler.timesteps.count {
            let t = scheduler.timesteps[iteration]
            try step()
            if let progress, !progress(stepIndex, totalSteps, t) {
                throw DiffusionError(.cancelled, "cancelled by the progress callback after step \(stepIndex) of \(totalSteps)")
            }
            try report(.denoising, stepIndex, of: totalSteps)
        }
    }

    /// The current sample decoded to images in [-1, 1] (the model's VAE, or x itself), with the
    /// decoding stage reported and cancel checked before each image.
    public func decodedImages() throws -> Tensor {
        guard let model else { return latents }
        return try model.decode(latents) { done, total in
            if done < total { try self.checkCancelled("while decoding (image \(done + 1) of \(total))") }
            try self.report(.decoding, done, of: total)
        }
    }

    /// The current sample x_t (shared storage: read it, do not write it).
    public var sample: Tensor { latents }

    /// The run has done every iteration.
    public var isFinished: Bool { iteration >= scheduler.timesteps.count }
}

