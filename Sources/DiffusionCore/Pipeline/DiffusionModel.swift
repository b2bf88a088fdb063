#if canImport(Glibc)
import Glibc
#endif

/// What a loaded model is, for callers: shapes and conditioning (diffusion_model_info).
public struct ModelInfo {
    /// The denoiser's input channels (x_t plus any extra conditioning channels) and output channels.
    public var inChannels = 0, outChannels = 0
    /// Default image size in pixels (nil: none).
    public var sampleHeight: Int? = nil, sampleWidth: Int? = nil
    public var numClassEmbeds: Int? = nil
    public var nullClassLabel: Int? = nil
    /// Channels of x_t, and pixels per latent along each side (1 for a pixel-space model).
    public var latentChannels = 0, vaeScaleFactor = 1
    /// Text conditioning: tokens per prompt and the width of each token's state (0 = none).
    public var contextLength = 0, contextWidth = 0
}

/// A loaded model: its denoiser and, for a latent pipeline, the components around it; the
/// scheduler settings from its folder; its thread budget. Immutable after loading, so samplers on
/// many threads may share it.
public final class DiffusionModel {
    public let denoiser: Denoiser
    /// The pixel-space network (UNet2DModel pipelines).
    public let pixelUNet: UNet2DModel?
    /// Stable Diffusion's network (UNet2DConditionModel) and the components around it.
    public let conditionUNet: UNet2DConditionModel?
    public let latent: LatentPipeline?
    /// The UNet's weight file, released from memory while the VAE decodes.
    private let unetWeights: SafeTensorsFile
    /// scheduler_config.json as stored (nil if the folder has none).
    public let schedulerJSON: JSONValue?
    /// diffusers' Stable Diffusion pipelines rewrite outdated scheduler configs when they load
    /// (steps_offset → 1, clip_sample → false; the inpainting pipeline also skip_prk_steps → true).
    private let schedulerRewrites: [(String, JSONValue)]
    /// The scheduler named by scheduler_config.json's _class_name; "ddpm" if absent.
    public let defaultScheduler: String
    public let threads: Int
    /// How the UNet's and the VAE's convolutions and linear layers compute.
    public let precision: Precision
    /// What the model's work may plan for: the weights, and the memory limit.
    public let budget: MemoryBudget
    public let info: ModelInfo
    /// The configuration as understood: {"unet": {...}, "scheduler": {...}}.
    public let configJSON: String

    /// Loads a model folder (config.json + diffusion_pytorch_model.safetensors [+ scheduler_config.json])
    /// or a pipeline folder (model_index.json + unet/ [+ scheduler/ and the other components]).
    /// `memoryLimit` in bytes, 0 for the machine's physical memory: loading weights larger than
    /// it, and work whose weights plus working memory exceed it, fail with OUT_OF_MEMORY.
    /// `path` may also be a single-file checkpoint (original SD 1.x / 2.x layout, `.safetensors`):
    /// `configFrom` then names the diffusers pipeline folder that gives the configs, tokenizer and
    /// scheduler (it need not hold weights).
    /// `vae`: a standalone VAE file (original layout, as vae-ft-mse-840000-ema-pruned.safetensors)
    /// whose weights replace the pipeline's VAE (its config stays the pipeline's).
    public init(path modelPath: String, threads: Int, preferFP16: Bool = false, memoryLimit: UInt64 = 0,
                precision: Precision = .exact, configFrom: String? = nil, vae vaePath: String? = nil) throws {
        let vaeFile = try vaePath.flatMap { $0.isEmpty ? nil : try SingleFileCheckpoint(path: $0, vaeOnly: true) }
        let folder: PipelineFolder
        if FileIO.isRegularFile(modelPath), modelPath.lowercased().hasSuffix(".safetensors") {
            guard let configFrom, !configFrom.isEmpty else {
                throw DiffusionError(.unsupported, "\(modelPath) is a single file: pass config_from, a diffusers pipeline folder with its configs, tokenizer and scheduler (built-in SD 1.x / 2.x configs are not in this version)")
            }
            let checkpoint = try SingleFileCheckpoint(path: modelPath)
            folder = try PipelineFolder(path: configFrom, preferFP16: preferFP16, precision: precision, singleFile: checkpoint,
                                        vaeFile: vaeFile)
            guard folder.isPipeline else {
                throw DiffusionError(.io, "config_from \(configFrom) is not a diffusers pipeline folder (no model_index.json)")
            }
        } else {
            if let configFrom, !configFrom.isEmpty {
                throw DiffusionError(.invalidArgument, "config_from (\(configFrom)) is for single-file checkpoints; \(modelPath) is a folder")
            }
            folder = try PipelineFolder(path: modelPath, preferFP16: preferFP16, precision: precision, vaeFile: vaeFile)
        }
        let path = folder.path
        self.precision = precision
        if let cls = folder.pipelineClass, !DiffusionModel.pipelineClasses.contains(cls) {
            throw DiffusionError(.unsupported, "\(path)/model_index.json: _class_name \"\(cls)\" is not supported (supported: \(DiffusionModel.pipelineClasses.sorted().joined(separator: ", ")))")
        }
        let (unetJSON, configPath) = try folder.config("unet")
        let className = unetJSON["_class_name"]?.stringValue ?? "UNet2DModel"
        if vaeFile != nil, className != "UNet2DConditionModel" {
            throw DiffusionError(.invalidArgument, "vae (\(vaePath ?? "")) replaces a Stable Diffusion pipeline's VAE; \(modelPath) has no VAE")
        }
        let weights = try folder.weights("unet", stem: "diffusion_pytorch_model")
        unetWeights = weights
        var info = ModelInfo()
        let unetConfigJSON: JSONValue
        do {
            switch className {
            case "UNet2DModel":
                let config = try UNet2DConfig(json: unetJSON)
                let unet = try UNet2DModel(config: config, weights: weights)
                pixelUNet = unet; conditionUNet = nil; latent = nil; denoiser = unet
                info.inChannels = config.inChannels; info.outChannels = config.outChannels
                info.sampleHeight = config.sampleHeight; info.sampleWidth = config.sampleWidth
                info.numClassEmbeds = config.numClassEmbeds; info.nullClassLabel = config.nullClassLabel
                info.latentChannels = config.inChannels
                unetConfigJSON = config.json
            case "UNet2DConditionModel":
                var config = try UNet2DConditionConfig(json: unetJSON)
                // diffusers' StableDiffusionPipeline raises sample_size < 64 to 64 for configs
                // written before diffusers 0.9 (the first SD1 repos said 32).
                if let version = unetJSON["_diffusers_version"]?.stringValue, DiffusionModel.isBefore0_9(version),
                   let h = config.sampleHeight, h < 64 {
                    config.sampleHeight = 64; config.sampleWidth = 64
                }
                let unet = try UNet2DConditionModel(config: config, weights: weights)
                guard folder.isPipeline else {
                    throw DiffusionError(.unsupported, "a UNet2DConditionModel needs its pipeline folder (model_index.json with text_encoder/, tokenizer/, vae/); \(path) is a lone model folder")
                }
                let components = try LatentPipeline(folder: folder, unet: config)
                pixelUNet = nil; conditionUNet = unet; latent = components; denoiser = unet
                info.inChannels = config.inChannels; info.outChannels = config.outChannels
                info.latentChannels = config.outChannels
                info.vaeScaleFactor = components.vaeScaleFactor
                info.sampleHeight = config.sampleHeight.map { $0 * components.vaeScaleFactor }
                info.sampleWidth = config.sampleWidth.map { $0 * components.vaeScaleFactor }
                info.contextLength = components.tokenizer.modelMaxLength
                info.contextWidth = config.crossAttentionDim
                unetConfigJSON = config.json
            default:
                throw DiffusionError(.unsupported, "_class_name \"\(className)\" is not supported (supported: UNet2DModel, UNet2DConditionModel)")
            }
        } catch let e as DiffusionError {
            let named = e.message.hasPrefix(configPath) || e.message.hasPrefix(weights.path)
                || folder.singleFile.map { e.message.contains($0.file.path) } == true
                || folder.vaeFile.map { e.message.contains($0.file.path) } == true
            throw named ? e
                : e.context(e.code == .modelMismatch ? weights.path : configPath)
        }
        try folder.singleFile?.checkEveryKeyRead()
        try folder.vaeFile?.checkEveryKeyRead()

        var name = "ddpm"
        var scheduler = SchedulerConfig(for: name)
        let schedulerPath = folder.isPipeline ? "\(path)/scheduler/scheduler_config.json" : "\(path)/scheduler_config.json"
        if FileIO.exists(schedulerPath) {
            let json = try FileIO.readJSON(schedulerPath)
            if let cls = json["_class_name"]?.stringValue {
                guard let entry = SchedulerRegistry.entries.first(where: { $0.diffusersClass == cls }) else {
                    let known = SchedulerRegistry.entries.map(\.diffusersClass).joined(separator: ", ")
                    throw DiffusionError(.unsupported, "\(schedulerPath): _class_name \"\(cls)\" is not supported (supported: \(known))")
                }
                name = entry.name
                scheduler = SchedulerConfig(for: name)
            }
            do { try scheduler.apply(json) } catch let e as DiffusionError { throw e.context(schedulerPath) }
            schedulerJSON = json
        } else {
            schedulerJSON = nil
        }
        defaultScheduler = name
        var rewrites: [(String, JSONValue)] = []
        if conditionUNet != nil {
            let reads = Set(SchedulerRegistry.shared + (SchedulerRegistry.entries.first { $0.name == name }?.settings ?? []))
            if reads.contains("steps_offset"), scheduler.stepsOffset != 1 { rewrites.append(("steps_offset", .number(1))) }
            if reads.contains("clip_sample"), scheduler.clipSample { rewrites.append(("clip_sample", .bool(false))) }
            if folder.pipelineClass == "StableDiffusionInpaintPipeline", reads.contains("skip_prk_steps"),
               schedulerJSON?["skip_prk_steps"]?.boolValue != true {
                rewrites.append(("skip_prk_steps", .bool(true)))
            }
        }
        schedulerRewrites = rewrites
        if !rewrites.isEmpty { try scheduler.apply(.object(rewrites)) }
        self.threads = threads > 0 ? threads : cpuCount()
        var budget = MemoryBudget(limit: memoryLimit)
        budget.reserved = Double(unetWeights.plannedBytes + (latent?.weightBytes ?? 0))
        try budget.check(0, "loading \(modelPath)")
        self.budget = budget
        latent?.vae.budget = budget
        self.info = info
        var schedulerOut = scheduler.json.objectValue ?? []
        let schedulerClass = SchedulerRegistry.entries.first { $0.name == name }.map(\.diffusersClass) ?? name
        schedulerOut.insert(("_class_name", .string(schedulerClass)), at: 0)
        configJSON = JSONValue.object([("unet", unetConfigJSON), ("scheduler", .object(schedulerOut))]).serialized
    }

    /// model_index.json classes this library runs (a pipeline's components, whatever its task).
    static let pipelineClasses: Set = ["DDPMPipeline", "DDIMPipeline", "StableDiffusionPipeline",
                                       "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"]

    static func isBefore0_9(_ version: String) -> Bool {
        let parts = version.split(separator: ".").map { Int($0.prefix { $0.isNumber }) ?? 0 }
        return (parts.first ?? 0) == 0 && (parts.count > 1 ? parts[1] : 0) < 9
    }

    /// The stored scheduler settings a sampler with scheduler `name` starts from: the folder's file
    /// with the pipeline's load-time rewrites. A scheduler swapped in (diffusers' from_config) keeps a
    /// rewrite only for keys the file holds: from_config drops the keys the file lacked.
    func schedulerSettings(for name: String) -> JSONValue? {
        guard !schedulerRewrites.isEmpty, case .object(var members) = schedulerJSON ?? .object([]) else { return schedulerJSON }
        for (key, value) in schedulerRewrites where name == defaultScheduler || schedulerJSON?[key] != nil {
            members.append((key, value))
        }
        return .object(members)
    }

    /// Pixels per side that every image size must be a multiple of.
    public var sizeMultiple: Int {
        if let u = pixelUNet { return 1 << (u.config.blockOutChannels.count - 1) }
        return info.vaeScaleFactor
    }

    /// Refuses a forward pass whose working memory would exceed the machine's physical memory.
    public func checkMemory(batch: Int, height: Int, width: Int) throws {
        let need: Double
        if let u = pixelUNet { need = u.estimatedBytes(batch: batch, height: height, width: width, threads: threads) }
        else if let u = conditionUNet { need = u.estimatedBytes(batch: batch, height: height, width: width, threads: threads) }
        else { need = 0 }
        try budget.check(need, "a batch of \(batch) at \(height)x\(width)")
    }

    /// The conditioning of class labels (one, or one per sample of `batch`), and the unconditional
    /// counterpart (the null class) when the model has one.
    public func classConditioning(_ labels: [Int], batch: Int) throws -> (Conditioning, Conditioning?) {
        guard let config = pixelUNet?.config, config.hasClassEmbedding else {
            throw DiffusionError(.invalidArgument, "this model is not class-conditional")
        }
        guard labels.count == 1 || labels.count == batch else {
            throw DiffusionError(.invalidArgument, "\(labels.count) class labels for a batch of \(batch) (give 1 or \(batch))")
        }
        try config.checkClassLabels(labels)
        let all = labels.count == 1 ? [Int](repeating: labels[0], count: batch) : labels
        return (Conditioning(classLabels: all),
                config.nullClassLabel.map { Conditioning(classLabels: [Int](repeating: $0, count: batch)) })
    }

    /// The shape and default conditioning of a sampler over this model.
    func samplerSetup(_ p: SamplerParams) throws
        -> (shape: SampleShape, conditional: Conditioning, unconditional: Conditioning?, noUnconditionalReason: String,
            textStates: (() throws -> (Tokens, Tokens))?) {
        let height = p.height > 0 ? p.height : (info.sampleHeight ?? 0)
        let width = p.width > 0 ? p.width : (info.sampleWidth ?? 0)
        guard p.height >= 0, p.width >= 0, height > 0, width > 0 else {
            throw DiffusionError(.invalidArgument, "height and width must be given (the model has no sample_size) and positive")
        }
        let factor = sizeMultiple
        guard height % factor == 0, width % factor == 0, height <= 16384, width <= 16384 else {
            throw DiffusionError(.invalidArgument, "height and width (\(height)x\(width)) must be multiples of \(factor) for this model")
        }
        guard p.channels == 0 || p.channels == info.latentChannels else {
            throw DiffusionError(.invalidArgument, "channels \(p.channels) differs from the model's in_channels \(info.latentChannels) (give 0)")
        }
        guard p.batch >= 1, p.batch <= 4096 else { throw DiffusionError(.invalidArgument, "batch \(p.batch) must be between 1 and 4096") }
        let shape = SampleShape(batch: p.batch, channels: info.latentChannels, height: height / info.vaeScaleFactor,
                                width: width / info.vaeScaleFactor)
        // Guidance may double the batch later; the check is repeated at every evaluation.
        try checkMemory(batch: p.batch, height: shape.height, width: shape.width)
        guard latent != nil || (p.prompt == nil && p.negativePrompt == nil && p.clipSkip == 0) else {
            throw DiffusionError(.invalidArgument, "this model has no text encoder: prompt, negative_prompt and clip_skip must be unset")
        }
        if let latent {
            // Encoded by the first step (cheap creation; progress and cancel cover it).
            guard p.clipSkip <= latent.textEncoder.layerCount else {
                throw DiffusionError(.invalidArgument, "clip_skip \(p.clipSkip) is out of range: the text encoder has \(latent.textEncoder.layerCount) layers")
            }
            let (prompt, negative, clipSkip, batch, threads) = (p.prompt ?? "", p.negativePrompt ?? "", p.clipSkip, p.batch, threads)
            let encode = {
                // clip_skip applies to the prompt only, never to the negative prompt (diffusers).
                (try latent.encodePrompts([prompt], clipSkip: clipSkip, threads: threads).repeatingEach(batch),
                 try latent.encodePrompts([negative], clipSkip: 0, threads: threads).repeatingEach(batch))
            }
            return (shape, Conditioning(), Conditioning(), "", encode)
        }
        if pixelUNet?.config.hasClassEmbedding == true {
            let (c, u) = try classConditioning([0], batch: p.batch)
            return (shape, c, u, "a class-conditional model whose config.json names its _null_class_label; this model has none (use 1)", nil)
        }
        return (shape, .none, nil, "this model is not conditional (use 1)", nil)
    }

    /// Checks inputs and runs one network evaluation. x: [n, in_channels, h, w].
    public func predict(_ x: Tensor, timesteps: [Float], conditioning: Conditioning) throws -> Tensor {
        guard x.n >= 1, timesteps.count == x.n else {
            throw DiffusionError(.invalidArgument, "\(timesteps.count) timesteps for a batch of \(x.n)")
        }
        guard timesteps.allSatisfy({ $0.isFinite }) else { throw DiffusionError(.invalidArgument, "timesteps must be finite") }
        let factor = pixelUNet.map { 1 << ($0.config.blockOutChannels.count - 1) } ?? 1
        guard x.h >= 1, x.w >= 1, x.h % factor == 0, x.w % factor == 0 else {
            throw DiffusionError(.invalidArgument, "height and width (\(x.h)x\(x.w)) must be positive multiples of \(factor) for this model")
        }
        try checkMemory(batch: x.n, height: x.h, width: x.w)
        return try denoiser.predict(x, timesteps: timesteps, conditioning: conditioning, threads: threads)
    }

    /// The pixel-space network's forward pass with class labels (nil for an unconditional model).
    public func predict(_ x: Tensor, timesteps: [Float], classLabels: [Int]?) throws -> Tensor {
        try predict(x, timesteps: timesteps, conditioning: Conditioning(classLabels: classLabels))
    }

    /// Channels of the decoded images.
    public var imageChannels: Int { latent?.vae.config.outChannels ?? info.latentChannels }

    /// Images in [-1, 1] (NCHW) from samples x_0: the VAE's decode for a latent model, the
    /// identity for a pixel-space one.
    /// `progress(done, total)` runs before each image and after the last (it may throw to cancel).
    public func decode(_ latents: Tensor, progress: ((Int, Int) throws -> Void)? = nil) throws -> Tensor {
        guard let latent else { return latents }
        guard latents.c == info.latentChannels else {
            throw DiffusionError(.invalidArgument, "latents have \(latents.c) channels, the VAE takes \(info.latentChannels)")
        }
        try checkMemory(batch: latents.n, height: latents.h, width: latents.w)
        // The denoising loop is over: the UNet's 1.7 GB (SD1.5, F16) need not stay resident
        // beside the decoder's activations (the next step faults them back in from the page cache).
        unetWeights.releaseResidentPages()
        return try latent.decode(latents, threads: threads, progress: progress)
    }
}
