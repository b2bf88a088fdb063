import CDiffusion
import DiffusionCore

@c @implementation
public func diffusion_sampler_params_init(_ params: UnsafeMutablePointer<diffusion_sampler_params>!, _ structSize: Int) {
    writeDefaults(diffusion_sampler_params(struct_size: 0, scheduler: nil, steps: 0, seed: 0, batch: 1, height: 0,
                                           width: 0, eta: 0, scheduler_config_json: nil, channels: 0,
                                           prompt: nil, negative_prompt: nil, clip_skip: 0),
                  to: params, size: structSize)
}

/// The caller's params, checked and converted.
func samplerParams(_ params: UnsafePointer<diffusion_sampler_params>?) throws -> SamplerParams {
    var defaults = diffusion_sampler_params()
    diffusion_sampler_params_init(&defaults, MemoryLayout<diffusion_sampler_params>.size)
    let c = try readParams(params, defaults: defaults, "diffusion_sampler_params")
    var p = SamplerParams()
    p.scheduler = try c.scheduler.map { try string($0, "scheduler") }
    p.steps = Int(c.steps)
    p.seed = c.seed
    p.batch = Int(c.batch)
    p.channels = Int(c.channels)
    p.height = Int(c.height)
    p.width = Int(c.width)
    p.eta = c.eta
    p.prompt = try c.prompt.map { try string($0, "prompt") }
    p.negativePrompt = try c.negative_prompt.map { try string($0, "negative_prompt") }
    guard c.clip_skip >= 0 else { throw invalid("clip_skip \(c.clip_skip) must be >= 0") }
    p.clipSkip = Int(c.clip_skip)
    if let json = c.scheduler_config_json {
        do { p.schedulerOverrides = try JSONValue.parse(try string(json, "scheduler_config_json"), pythonConstants: true) }
        catch let e as DiffusionError { throw invalid("scheduler_config_json: \(e.message)") }
    }
    return p
}

/// A C callback as a DenoiseFunction: a false return is DIFFUSION_ERROR_CALLBACK.
func callback(_ what: String, outChannels: Int?,
              _ call: @escaping (UnsafePointer<Float>, UnsafePointer<Int32>, Float, UnsafeMutablePointer<Float>, Int32) -> Bool)
    -> DenoiseFunction {
    { x, shape, t, out in
        let dims: [Int32] = [Int32(shape.batch), Int32(shape.channels), Int32(shape.height), Int32(shape.width)]
        let ok = dims.withUnsafeBufferPointer { call(x, $0.baseAddress!, t, out, Int32(outChannels ?? shape.channels)) }
        guard ok else { throw DiffusionError(.callback, "the \(what) callback returned false") }
    }
}

@c @implementation
public func diffusion_sampler_create(_ model: OpaquePointer!, _ params: UnsafePointer<diffusion_sampler_params>!,
                                     _ outSampler: UnsafeMutablePointer<OpaquePointer?>!) -> diffusion_status {
    outSampler?.pointee = nil
    return boundary {
        guard let outSampler else { throw invalid("out_sampler is NULL") }
        let m = try HandleRegistry.shared.lookup(model, as: ModelHandle.self, "model").model
        let p = try samplerParams(params)
        outSampler.pointee = HandleRegistry.shared.register(SamplerHandle(try Sampler(model: m, params: p)))
    }
}

@c @implementation
public func diffusion_sampler_create_with_denoiser(_ denoise: diffusion_denoise_fn!, _ userData: UnsafeMutableRawPointer!,
                                                  _ params: UnsafePointer<diffusion_sampler_params>!,
                                                  _ outSampler: UnsafeMutablePointer<OpaquePointer?>!) -> diffusion_status {
    outSampler?.pointee = nil
    return boundary {
        guard let outSampler else { throw invalid("out_sampler is NULL") }
        guard let denoise else { throw invalid("denoise is NULL") }
        let p = try samplerParams(params)
        // The output channel count depends on the scheduler, known once the sampler exists (the
        // constructor never calls the denoiser; the first call is in the first step).
        var factor = 1
        let sampler = try Sampler(denoiser: { x, shape, t, out in
            try callback("denoiser", outChannels: shape.channels * factor) { denoise($0, $1, $2, $3, $4, userData) }(x, shape, t, out)
        }, params: p)
        factor = sampler.scheduler.modelOutputChannelFactor
        outSampler.pointee = HandleRegistry.shared.register(SamplerHandle(sampler))
    }
}

@c @implementation
public func diffusion_sampler_set_classifier_guidance(_ sampler: OpaquePointer!, _ gradient: diffusion_gradient_fn!,
                                                      _ userData: UnsafeMutableRawPointer!, _ scale: Float) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let gradient else { return try s.setClassifierGuidance(nil, scale: scale) }
        try s.setClassifierGuidance(callback("classifier gradient", outChannels: nil) { x, shape, t, grad, _ in
            gradient(x, shape, t, grad, userData)
        }, scale: scale)
    }
}

@c @implementation
public func diffusion_sampler_set_init_latents(_ sampler: OpaquePointer!, _ latents: UnsafePointer<Float>!, _ count: Int,
                                               _ strength: Double) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let latents else { throw invalid("latents is NULL") }
        try s.setInitImage(latents, count: count, strength: strength)
    }
}

@c @implementation
public func diffusion_sampler_set_init_image(_ sampler: OpaquePointer!, _ pixels: UnsafePointer<UInt8>!, _ size: Int,
                                             _ strength: Double) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let pixels else { throw invalid("pixels is NULL") }
        let image = try pixelTensor(s, pixels, size, "size")
        if let model = s.model {
            try model.setInitImage(image, strength: strength, on: s)
        } else {
            try s.setInitImage(image.data, count: image.count, strength: strength)
        }
    }
}

/// 8-bit NHWC pixels of the sampler's image shape (one image or the batch) as NCHW in [-1, 1].
func pixelTensor(_ s: Sampler, _ pixels: UnsafePointer<UInt8>, _ size: Int, _ what: String) throws -> Tensor {
    let (n, h, w, c) = imageShape(s)
    let one = h * w * c
    guard size == n * one || size == one else {
        throw invalid("\(what) is \(size), expected \(n * one) (batch x height x width x channels of diffusion_sampler_image_shape) or \(one) (one image)")
    }
    return try tensor(fromPixels: pixels, n: size / one, channels: c, height: h, width: w)
}

@c @implementation
public func diffusion_sampler_set_start_noise(_ sampler: OpaquePointer!, _ noise: UnsafePointer<Float>!, _ count: Int) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let noise else { throw invalid("noise is NULL") }
        try checkCount(s, count, "count")
        try s.setStartNoise(noise)
    }
}

@c @implementation
public func diffusion_sampler_free(_ sampler: OpaquePointer!) {
    _ = HandleRegistry.shared.release(sampler, as: SamplerHandle.self)
}

/// The sampler behind a handle, entered for the current API call (see `SamplerHandle`).
func lookupSampler(_ sampler: OpaquePointer?) throws -> Sampler {
    let handle = try HandleRegistry.shared.lookup(sampler, as: SamplerHandle.self, "sampler")
    try handle.enter()
    return handle.sampler
}

@c @implementation
public func diffusion_sampler_set_guidance_scale(_ sampler: OpaquePointer!, _ scale: Float) -> diffusion_status {
    boundary { try lookupSampler(sampler).setGuidanceScale(scale) }
}

@c @implementation
public func diffusion_sampler_set_class_label(_ sampler: OpaquePointer!, _ labels: UnsafePointer<Int32>!, _ count: Int32) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let labels else { throw invalid("labels is NULL") }
        guard count >= 1 else { throw invalid("count \(count) must be at least 1") }
        guard let model = s.model else { throw invalid("class labels need a model (this sampler has a caller's denoiser)") }
        guard count == 1 || Int(count) == s.batch else {
            throw invalid("\(count) class labels for a batch of \(s.batch) (give 1 or \(s.batch))")
        }
        let (conditional, unconditional) = try model.classConditioning((0..<Int(count)).map { Int(labels[$0]) }, batch: s.batch)
        s.setConditioning(conditional, unconditional: unconditional)
    }
}

@c @implementation
public func diffusion_sampler_shape(_ sampler: OpaquePointer!, _ shape: UnsafeMutablePointer<Int32>!) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let shape else { throw invalid("shape is NULL") }
        shape[0] = Int32(s.batch); shape[1] = Int32(s.channels); shape[2] = Int32(s.height); shape[3] = Int32(s.width)
    }
}

@c @implementation
public func diffusion_sampler_timesteps(_ sampler: OpaquePointer!, _ out: UnsafeMutablePointer<Float>!, _ capacity: Int,
                                       _ count: UnsafeMutablePointer<Int>!) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let count else { throw invalid("count is NULL") }
        let ts = Array(s.timesteps)
        if capacity > 0 {
            guard let out else { throw invalid("out is NULL but capacity is \(capacity)") }
            for i in 0..<min(capacity, ts.count) { out[i] = ts[i] }
        }
        count.pointee = ts.count
    }
}

func checkCount(_ s: Sampler, _ count: Int, _ what: String) throws {
    guard count == s.count else {
        throw invalid("\(what) is \(count), expected \(s.count) (batch \(s.batch) x channels \(s.channels) x height \(s.height) x width \(s.width))")
    }
}

@c @implementation
public func diffusion_sampler_get_latents(_ sampler: OpaquePointer!, _ out: UnsafeMutablePointer<Float>!, _ count: Int) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let out else { throw invalid("out is NULL") }
        try checkCount(s, count, "count")
        s.copyLatents(to: out)
    }
}

@c @implementation
public func diffusion_sampler_set_latents(_ sampler: OpaquePointer!, _ latents: UnsafePointer<Float>!, _ count: Int) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let latents else { throw invalid("latents is NULL") }
        try checkCount(s, count, "count")
        s.setLatents(from: latents)
    }
}

@c @implementation
public func diffusion_sampler_step(_ sampler: OpaquePointer!, _ remaining: UnsafeMutablePointer<Int32>!) -> diffusion_status {
    boundary {
        let left = try lookupSampler(sampler).step()
        remaining?.pointee = Int32(left)
    }
}

@c @implementation
public func diffusion_sampler_run(_ sampler: OpaquePointer!, _ progress: diffusion_progress_fn!,
                                  _ userData: UnsafeMutableRawPointer!) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        if let progress {
            try s.run { step, total, t in progress(Int32(step), Int32(total), t, userData) }
        } else {
            try s.run(progress: nil)
        }
    }
}

@c @implementation
public func diffusion_sampler_progress(_ sampler: OpaquePointer!, _ done: UnsafeMutablePointer<Int32>!,
                                       _ total: UnsafeMutablePointer<Int32>!) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        done?.pointee = Int32(s.stepIndex)
        total?.pointee = Int32(s.totalSteps)
    }
}

@c @implementation
public func diffusion_sampler_cancel(_ sampler: OpaquePointer!) {
    (try? HandleRegistry.shared.lookup(sampler, as: SamplerHandle.self, "sampler"))?.sampler.cancel()
}

/// The decoded images' shape: batch, height, width, channels.
func imageShape(_ s: Sampler) -> (n: Int, h: Int, w: Int, c: Int) {
    let f = s.model?.info.vaeScaleFactor ?? 1
    let c = s.model?.imageChannels ?? s.channels
    return (s.batch, s.height * f, s.width * f, c)
}

/// Decodes the current sample into `out` (arguments checked first, then that the run is finished
/// unless this is a preview).
func writeImages(_ s: Sampler, _ out: UnsafeMutablePointer<UInt8>?, _ size: Int, preview: Bool) throws {
    guard let out else { throw invalid("out is NULL") }
    let (n, h, w, c) = imageShape(s)
    guard size == n * h * w * c else {
        throw invalid("size is \(size), expected \(n * h * w * c) (batch x height x width x channels of diffusion_sampler_image_shape)")
    }
    guard preview || s.isFinished else {
        throw DiffusionError(.invalidState, "the run has not finished (\(s.stepIndex) of \(s.totalSteps) steps done); diffusion_sampler_get_preview_images gives intermediate images")
    }
    pixelBytes(try s.decodedImages(), into: out)
}

@c @implementation
public func diffusion_sampler_get_images(_ sampler: OpaquePointer!, _ out: UnsafeMutablePointer<UInt8>!, _ size: Int) -> diffusion_status {
    boundary { try writeImages(try lookupSampler(sampler), out, size, preview: false) }
}

@c @implementation
public func diffusion_sampler_get_preview_images(_ sampler: OpaquePointer!, _ out: UnsafeMutablePointer<UInt8>!, _ size: Int) -> diffusion_status {
    boundary { try writeImages(try lookupSampler(sampler), out, size, preview: true) }
}

@c @implementation
public func diffusion_sampler_image_shape(_ sampler: OpaquePointer!, _ shape: UnsafeMutablePointer<Int32>!) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let shape else { throw invalid("shape is NULL") }
        let (n, h, w, c) = imageShape(s)
        shape[0] = Int32(n); shape[1] = Int32(h); shape[2] = Int32(w); shape[3] = Int32(c)
    }
}

@c @implementation
public func diffusion_sampler_set_stage_callback(_ sampler: OpaquePointer!, _ callback: diffusion_stage_fn!,
                                                 _ userData: UnsafeMutableRawPointer!) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let callback else { s.stageCallback = nil; return }
        s.stageCallback = { stage, done, total in
            callback(diffusion_stage(rawValue: UInt32(stage.rawValue)), Int32(clamping: done), Int32(clamping: total), userData)
        }
    }
}
