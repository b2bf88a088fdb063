import CDiffusion
import DiffusionCore

@c @implementation
public func diffusion_model_params_init(_ params: UnsafeMutablePointer<diffusion_model_params>!, _ structSize: Int) {
    writeDefaults(diffusion_model_params(struct_size: 0, n_threads: 0, prefer_fp16: false, memory_limit: 0,
                                         precision: Int32(DIFFUSION_PRECISION_F32.rawValue), config_from: nil, vae: nil),
                  to: params, size: structSize)
}

/// Writes the first `size` bytes of `value` (a params struct) and sets its struct_size.
func writeDefaults<T>(_ value: T, to p: UnsafeMutablePointer<T>?, size: Int) {
    guard let p, size >= MemoryLayout<UInt32>.size else { return }
    var v = value
    let n = min(size, MemoryLayout<T>.size)
    withUnsafeMutableBytes(of: &v) { $0.storeBytes(of: UInt32(n), as: UInt32.self) }
    withUnsafeBytes(of: &v) { UnsafeMutableRawPointer(p).copyMemory(from: $0.baseAddress!, byteCount: n) }
}

/// Reads a caller's params struct, honouring its struct_size (older callers pass fewer fields).
func readParams<T>(_ p: UnsafePointer<T>?, defaults: T, _ what: String) throws -> T {
    guard let p else { return defaults }
    let size = Int(UnsafeRawPointer(p).load(as: UInt32.self))
    guard size >= 8, size <= 1 << 16 else { throw invalid("\(what).struct_size \(size) is not a valid struct size (call \(what)_init)") }
    var value = defaults
    withUnsafeMutableBytes(of: &value) { dst in
        dst.copyMemory(from: UnsafeRawBufferPointer(start: p, count: min(size, MemoryLayout<T>.size)))
    }
    return value
}

@c @implementation
public func diffusion_model_load(_ path: UnsafePointer<CChar>!, _ params: UnsafePointer<diffusion_model_params>!,
                                 _ outModel: UnsafeMutablePointer<OpaquePointer?>!) -> diffusion_status {
    outModel?.pointee = nil
    return boundary {
        guard let outModel else { throw invalid("out_model is NULL") }
        guard let path else { throw invalid("path is NULL") }
        var defaults = diffusion_model_params()
        diffusion_model_params_init(&defaults, MemoryLayout<diffusion_model_params>.size)
        let p = try readParams(params, defaults: defaults, "diffusion_model_params")
        guard p.n_threads >= 0, p.n_threads <= 1024 else { throw invalid("n_threads \(p.n_threads) must be between 0 and 1024") }
        let precision: Precision
        switch UInt32(bitPattern: p.precision) {
        case DIFFUSION_PRECISION_F32.rawValue: precision = .exact
        case DIFFUSION_PRECISION_BF16.rawValue: precision = .bf16
        default:
            throw invalid("precision \(p.precision) is not a diffusion_precision (DIFFUSION_PRECISION_F32 = 0, DIFFUSION_PRECISION_BF16 = 1)")
        }
        let model = try DiffusionModel(path: try string(path, "path"), threads: Int(p.n_threads), preferFP16: p.prefer_fp16,
                                       memoryLimit: p.memory_limit, precision: precision,
                                       configFrom: try p.config_from.map { try string($0, "config_from") },
                                       vae: try p.vae.map { try string($0, "vae") })
        outModel.pointee = HandleRegistry.shared.register(ModelHandle(model))
    }
}

@c @implementation
public func diffusion_model_free(_ model: OpaquePointer!) {
    _ = HandleRegistry.shared.release(model, as: ModelHandle.self)
}

@c @implementation
public func diffusion_model_get_info(_ model: OpaquePointer!, _ info: UnsafeMutablePointer<diffusion_model_info>!) -> diffusion_status {
    boundary {
        let m = try HandleRegistry.shared.lookup(model, as: ModelHandle.self, "model").model
        guard let info else { throw invalid("info is NULL") }
        let size = Int(info.pointee.struct_size)
        guard size >= 8, size <= 1 << 16 else { throw invalid("info.struct_size \(size) is not valid (set it to sizeof(diffusion_model_info))") }
        let c = m.info
        var full = diffusion_model_info(struct_size: info.pointee.struct_size, in_channels: Int32(clamping: c.inChannels),
                                        out_channels: Int32(clamping: c.outChannels), sample_size: Int32(clamping: c.sampleHeight ?? 0),
                                        num_class_embeds: Int32(clamping: c.numClassEmbeds ?? 0),
                                        sample_width: Int32(clamping: c.sampleWidth ?? 0),
                                        null_class_label: Int32(clamping: c.nullClassLabel ?? -1),
                                        latent_channels: Int32(clamping: c.latentChannels),
                                        vae_scale_factor: Int32(clamping: c.vaeScaleFactor),
                                        context_length: Int32(clamping: c.contextLength),
                                        context_width: Int32(clamping: c.contextWidth),
                                        precision: Int32((m.precision == .bf16 ? DIFFUSION_PRECISION_BF16 : DIFFUSION_PRECISION_F32).rawValue),
                                        precision_native: m.precision == .exact || Precision.bf16Native)
        withUnsafeBytes(of: &full) { src in
            UnsafeMutableRawPointer(info).copyMemory(from: src.baseAddress!, byteCount: min(size, src.count))
        }
    }
}

@c @implementation
public func diffusion_model_config_json(_ model: OpaquePointer!, _ outJSON: UnsafeMutablePointer<UnsafePointer<CChar>?>!) -> diffusion_status {
    outJSON?.pointee = nil
    return boundary {
        let handle = try HandleRegistry.shared.lookup(model, as: ModelHandle.self, "model")
        guard let outJSON else { throw invalid("out_json is NULL") }
        outJSON.pointee = UnsafePointer(handle.configJSON)
    }
}

/// Element count of an NCHW shape, refusing overflow and absurd sizes.
func elementCount(_ dims: [Int], _ what: String) throws -> Int {
    var n = 1
    for d in dims {
        guard d >= 1 else { throw invalid("\(what): dimensions must be positive, got \(dims)") }
        let (r, o) = n.multipliedReportingOverflow(by: d)
        guard !o, r <= 1 << 32 else { throw invalid("\(what): shape \(dims) is too large") }
        n = r
    }
    return n
}

@c @implementation
public func diffusion_model_predict(_ model: OpaquePointer!, _ x: UnsafePointer<Float>!, _ batch: Int32, _ channels: Int32, _ height: Int32,
                                    _ width: Int32, _ timesteps: UnsafePointer<Float>!, _ classLabels: UnsafePointer<Int32>!,
                                    _ out: UnsafeMutablePointer<Float>!, _ outCount: Int) -> diffusion_status {
    boundary {
        let m = try HandleRegistry.shared.lookup(model, as: ModelHandle.self, "model").model
        guard let x else { throw invalid("x is NULL") }
        guard let timesteps else { throw invalid("timesteps is NULL") }
        guard let out else { throw invalid("out is NULL") }
        let c = m.info
        let n = Int(batch), h = Int(height), w = Int(width)
        guard Int(channels) == c.inChannels else {
            throw invalid("channels is \(channels), the model takes \(c.inChannels) input channels")
        }
        let inCount = try elementCount([n, c.inChannels, h, w], "x")
        let expected = try elementCount([n, c.outChannels, h, w], "out")
        guard outCount == expected else {
            throw invalid("out_count is \(outCount), expected \(expected) (batch x out_channels x height x width)")
        }
        try m.checkMemory(batch: n, height: h, width: w)
        let input = try Tensor(n: n, c: c.inChannels, h: h, w: w)
        input.data.update(from: x, count: inCount)
        guard input.data.allFinite(inCount) else { throw invalid("x holds non-finite values") }
        let labels = classLabels.map { p in (0..<n).map { Int(p[$0]) } }
        let y = try m.predict(input, timesteps: Array(UnsafeBufferPointer(start: timesteps, count: n)), classLabels: labels)
        try copyFinitePrediction(y, count: expected, to: out)
    }
}

/// The network's output copied to the caller, refused when not finite, as a sampler step refuses it.
func copyFinitePrediction(_ y: Tensor, count: Int, to out: UnsafeMutablePointer<Float>) throws {
    guard y.data.allFinite(count) else {
        throw DiffusionError(.invalidFile, "the network's output is not finite: the weights hold NaN or infinite values, or overflow")
    }
    out.update(from: y.data, count: count)
}
