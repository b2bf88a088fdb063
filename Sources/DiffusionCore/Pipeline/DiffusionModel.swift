#if canImport(Glibc)
import Glibc
#endif

/// A loaded model: network, scheduler settings from its folder, and its thread budget.
/// Immutable after loading, so samplers on many threads may share it.
public final class DiffusionModel {
    public let unet: UNet2DModel
    /// scheduler_config.json as stored (nil if the folder has none).
    public let schedulerJSON: JSONValue?
    /// The scheduler named by scheduler_config.json's _class_name; "ddpm" if absent.
    public let defaultScheduler: String
    public let threads: Int
    /// The configuration as understood: {"unet": {...}, "scheduler": {...}}.
    public let configJSON: String

    public var config: UNet2DConfig { unet.config }

    /// Loads a model folder (config.json + diffusion_pytorch_model.safetensors [+ scheduler_config.json])
    /// or a pipeline folder (model_index.json + unet/ [+ scheduler/]).
    public init(path: String, threads: Int) throws {
        guard FileIO.isDirectory(path) else {
            throw DiffusionError(.io, FileIO.exists(path) ? "\(path) is not a folder" : "model folder \(path) does not exist")
        }
        var unetDir = path
        var schedulerPath = "\(path)/scheduler_config.json"
        if FileIO.exists("\(path)/model_index.json") {
            let index = try FileIO.readJSON("\(path)/model_index.json")
            guard case .object = index else { throw DiffusionError(.invalidFile, "\(path)/model_index.json is not a JSON object") }
            unetDir = "\(path)/unet"
            guard FileIO.isDirectory(unetDir) else {
                throw DiffusionError(.io, "pipeline folder \(path) has no unet/ folder")
            }
            schedulerPath = "\(path)/scheduler/scheduler_config.json"
        }
        let configPath = "\(unetDir)/config.json"
        guard FileIO.exists(configPath) else {
            throw DiffusionError(.io, "\(unetDir) has no config.json (expected a diffusers model or pipeline folder)")
        }
        let config: UNet2DConfig
        do { config = try UNet2DConfig(json: try FileIO.readJSON(configPath)) } catch let e as DiffusionError {
            throw e.message.hasPrefix(configPath) ? e : e.context(configPath)
        }
        let weightsPath = "\(unetDir)/diffusion_pytorch_model.safetensors"
        guard FileIO.exists(weightsPath) else {
            if FileIO.exists("\(unetDir)/diffusion_pytorch_model.bin") {
                throw DiffusionError(.unsupported, "\(unetDir) has only diffusion_pytorch_model.bin (pickle); convert it to safetensors")
            }
            throw DiffusionError(.io, "\(unetDir) has no diffusion_pytorch_model.safetensors")
        }
        let weights = try SafeTensorsFile(path: weightsPath)
        do { unet = try UNet2DModel(config: config, weights: weights) } catch let e as DiffusionError {
            throw e.context(weightsPath)
        }

        var name = "ddpm"
        var scheduler = SchedulerConfig(for: name)
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
        self.threads = threads > 0 ? threads : cpuCount()
        var schedulerOut = scheduler.json.objectValue ?? []
        let className = SchedulerRegistry.entries.first { $0.name == name }!.diffusersClass
        schedulerOut.insert(("_class_name", .string(className)), at: 0)
        configJSON = JSONValue.object([("unet", config.json), ("scheduler", .object(schedulerOut))]).serialized
    }

    /// Refuses a forward pass whose working memory would exceed the machine's physical memory.
    public func checkMemory(batch: Int, height: Int, width: Int) throws {
        let need = unet.estimatedBytes(batch: batch, height: height, width: width, threads: threads)
        let have = Double(sysconf(Int32(_SC_PHYS_PAGES))) * Double(sysconf(Int32(_SC_PAGESIZE)))
        if need > have {
            throw DiffusionError(.outOfMemory, "batch \(batch) at \(height)x\(width) needs about \(Int(need / 1e9)) GB, more than this machine's \(Int(have / 1e9)) GB")
        }
    }

    /// Checks inputs and runs one network evaluation. x: [n, in_channels, h, w].
    public func predict(_ x: Tensor, timesteps: [Float], classLabels: [Int]?) throws -> Tensor {
        guard x.c == config.inChannels else {
            throw DiffusionError(.invalidArgument, "input has \(x.c) channels, the model takes \(config.inChannels)")
        }
        guard x.n >= 1, timesteps.count == x.n else {
            throw DiffusionError(.invalidArgument, "\(timesteps.count) timesteps for a batch of \(x.n)")
        }
        guard timesteps.allSatisfy({ $0.isFinite }) else { throw DiffusionError(.invalidArgument, "timesteps must be finite") }
        let factor = 1 << (config.blockOutChannels.count - 1)
        guard x.h >= 1, x.w >= 1, x.h % factor == 0, x.w % factor == 0 else {
            throw DiffusionError(.invalidArgument, "height and width (\(x.h)x\(x.w)) must be positive multiples of \(factor) for this model")
        }
        try checkMemory(batch: x.n, height: x.h, width: x.w)
        if config.hasClassEmbedding {
            guard let labels = classLabels else {
                throw DiffusionError(.invalidArgument, "this model is class-conditional: class labels are required")
            }
            guard labels.count == x.n else { throw DiffusionError(.invalidArgument, "\(labels.count) class labels for a batch of \(x.n)") }
            try config.checkClassLabels(labels)
        } else if classLabels != nil {
            throw DiffusionError(.invalidArgument, "this model is not class-conditional: class labels must be NULL")
        }
        return unet.forward(x, timesteps: timesteps, classLabels: classLabels, threads: threads)
    }
}
