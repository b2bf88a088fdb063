/// Where a model's components live on disk: a single model folder (config.json + weights), or a
/// diffusers pipeline folder (model_index.json naming component folders). Components the library
/// does not run (safety_checker, feature_extractor, image_encoder, ...) are ignored.
public struct PipelineFolder {
    public let path: String
    /// model_index.json, when the folder is a pipeline.
    public let index: JSONValue?
    /// Prefer `*.fp16.safetensors` even when the plain file exists.
    public let preferFP16: Bool
    /// The precision of the files `weights` opens (unless told otherwise).
    public let precision: Precision
    /// Where the weights come from instead of the component folders: a single-file checkpoint
    /// (this folder then gives the configs, the tokenizer and the scheduler only).
    public let singleFile: SingleFileCheckpoint?
    /// A standalone VAE file (vae-ft-mse layout) that replaces the pipeline's VAE weights.
    public let vaeFile: SingleFileCheckpoint?

    public init(path: String, preferFP16: Bool = false, precision: Precision = .exact,
                singleFile: SingleFileCheckpoint? = nil, vaeFile: SingleFileCheckpoint? = nil) throws {
        self.singleFile = singleFile
        self.vaeFile = vaeFile
        guard FileIO.isDirectory(path) else {
            throw DiffusionError(.io, FileIO.exists(path) ? "\(path) is not a folder (nor a .safetensors single-file checkpoint)" : "model folder \(path) does not exist")
        }
        self.path = path
        self.preferFP16 = preferFP16
        self.precision = precision
        let indexPath = "\(path)/model_index.json"
        if FileIO.exists(indexPath) {
            let index = try FileIO.readJSON(indexPath)
            guard case .object = index else { throw DiffusionError(.invalidFile, "\(indexPath) is not a JSON object") }
            self.index = index
        } else {
            index = nil
        }
    }

    public var isPipeline: Bool { index != nil }

    /// The `_class_name` of model_index.json (e.g. "StableDiffusionPipeline").
    public var pipelineClass: String? { index?["_class_name"]?.stringValue }

    /// Whether model_index.json names `component` with a library and class (not [null, null]).
    public func names(_ component: String) -> Bool {
        guard let entry = index?[component]?.arrayValue, entry.count == 2 else { return false }
        return !entry[0].isNull && !entry[1].isNull
    }

    /// The folder of a pipeline component (or the model folder itself when not a pipeline).
    public func folder(_ component: String) throws -> String {
        guard isPipeline else { return path }
        let dir = "\(path)/\(component)"
        guard FileIO.isDirectory(dir) else { throw DiffusionError(.io, "pipeline folder \(path) has no \(component)/ folder") }
        return dir
    }

    /// The component's config file, parsed (must exist).
    public func config(_ component: String, file: String = "config.json") throws -> (JSONValue, String) {
        let p = "\(try folder(component))/\(file)"
        guard FileIO.exists(p) else {
            throw DiffusionError(.io, "\(try folder(component)) has no \(file) (expected a diffusers model or pipeline folder)")
        }
        return (try FileIO.readJSON(p), p)
    }

    /// The safetensors weights of a component folder named `stem` (diffusion_pytorch_model or
    /// model): `stem.safetensors`, or its fp16 variant `stem.fp16.safetensors` when the plain file
    /// is absent (or preferred). Pickle-only folders are refused by name. The file computes in
    /// `precision`, else the folder's.
    public func weights(_ component: String, stem: String, precision: Precision? = nil) throws -> SafeTensorsFile {
        if let file = component == "vae" ? vaeFile ?? singleFile : singleFile {
            let (json, configPath) = try config(component)
            return try file.component(component, config: json, configPath: configPath, precision: precision ?? self.precision)
        }
        let dir = try folder(component)
        let plain = "\(dir)/\(stem).safetensors", fp16 = "\(dir)/\(stem).fp16.safetensors"
        let order = preferFP16 ? [fp16, plain] : [plain, fp16]
        if let found = order.first(where: FileIO.isRegularFile) {
            let file = try SafeTensorsFile(path: found)
            file.precision = precision ?? self.precision
            return file
        }
        for pickle in ["\(dir)/\(stem).bin", "\(dir)/\(stem).fp16.bin"] where FileIO.exists(pickle) {
            throw DiffusionError(.unsupported, "\(dir) has only \(pickle.split(separator: "/").last.map(String.init) ?? pickle) (pickle); convert it to safetensors")
        }
        if FileIO.exists("\(dir)/\(stem).safetensors.index.json") {
            throw DiffusionError(.unsupported, "\(dir) holds sharded weights (\(stem).safetensors.index.json); merge them into one \(stem).safetensors")
        }
        throw DiffusionError(.io, "\(dir) has no \(stem).safetensors (nor \(stem).fp16.safetensors)")
    }
}
