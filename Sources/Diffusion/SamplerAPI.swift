import CDiffusion
import DiffusionCore

@c @implementation
public func diffusion_sampler_params_init(_ params: UnsafeMutablePointer<diffusion_sampler_params>!, _ structSize: Int) {
    writeDefaults(diffusion_sampler_params(struct_size: 0, scheduler: nil, steps: 0, seed: 0, batch: 1, height: 0,
                                           width: 0, eta: 0, scheduler_config_json: nil),
                  to: params, size: structSize)
}

@c @implementation
public func diffusion_sampler_create(_ model: OpaquePointer!, _ params: UnsafePointer<diffusion_sampler_params>!,
                                     _ outSampler: UnsafeMutablePointer<OpaquePointer?>!) -> diffusion_status {
    outSampler?.pointee = nil
    return boundary {
        guard let outSampler else { throw invalid("out_sampler is NULL") }
        let m = try HandleRegistry.shared.lookup(model, as: ModelHandle.self, "model").model
        var defaults = diffusion_sampler_params()
        diffusion_sampler_params_init(&defaults, MemoryLayout<diffusion_sampler_params>.size)
        let c = try readParams(params, defaults: defaults, "diffusion_sampler_params")
        var p = SamplerParams()
        p.scheduler = try c.scheduler.map { try string($0, "scheduler") }
        p.steps = Int(c.steps)
        p.seed = c.seed
        p.batch = Int(c.batch)
        p.height = Int(c.height)
        p.width = Int(c.width)
        p.eta = c.eta
        if let json = c.scheduler_config_json {
            do { p.schedulerOverrides = try JSONValue.parse(try string(json, "scheduler_config_json")) }
            catch let e as DiffusionError { throw invalid("scheduler_config_json: \(e.message)") }
        }
        outSampler.pointee = HandleRegistry.shared.register(SamplerHandle(try Sampler(model: m, params: p)))
    }
}

@c @implementation
public func diffusion_sampler_free(_ sampler: OpaquePointer!) {
    _ = HandleRegistry.shared.release(sampler, as: SamplerHandle.self)
}

func lookupSampler(_ sampler: OpaquePointer?) throws -> Sampler {
    try HandleRegistry.shared.lookup(sampler, as: SamplerHandle.self, "sampler").sampler
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
        try s.setClassLabels((0..<Int(count)).map { Int(labels[$0]) })
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
        let ts = s.scheduler.timesteps
        if capacity > 0 {
            guard let out else { throw invalid("out is NULL but capacity is \(capacity)") }
            for i in 0..<min(capacity, ts.count) { out[i] = Float(ts[i]) }
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
            try s.run { step, total, t in progress(Int32(step), Int32(total), Float(t), userData) }
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
    (try? lookupSampler(sampler))?.cancel()
}

@c @implementation
public func diffusion_sampler_get_images(_ sampler: OpaquePointer!, _ out: UnsafeMutablePointer<UInt8>!, _ size: Int) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let out else { throw invalid("out is NULL") }
        guard size == s.count else {
            throw invalid("size is \(size), expected \(s.count) (batch x height x width x channels)")
        }
        s.images(into: out)
    }
}
