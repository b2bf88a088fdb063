import CDiffusion
import DiffusionCore

// The C boundary of text and latent pipelines: tokenize, encode prompt, VAE encode/decode,
// predict with text states, prompt embeddings, guidance rescale, inpainting.

func latentPipeline(_ m: DiffusionModel) throws -> LatentPipeline {
    guard let latent = m.latent else {
        throw DiffusionError(.unsupported, "this model is not a latent text-to-image pipeline (it has no tokenizer, text encoder or VAE)")
    }
    return latent
}

@c @implementation
public func diffusion_model_tokenize(_ model: OpaquePointer!, _ text: UnsafePointer<CChar>!, _ ids: UnsafeMutablePointer<Int32>!,
                                     _ capacity: Int, _ count: UnsafeMutablePointer<Int>!) -> diffusion_status {
    boundary {
        let latent = try latentPipeline(try HandleRegistry.shared.lookup(model, as: ModelHandle.self, "model").model)
        guard let text else { throw invalid("text is NULL") }
        guard let count else { throw invalid("count is NULL") }
        let tokens = latent.tokenize(try string(text, "text"))
        if capacity > 0 {
            guard let ids else { throw invalid("ids is NULL but capacity is \(capacity)") }
            for i in 0..<min(capacity, tokens.count) { ids[i] = Int32(clamping: tokens[i]) }
        }
        count.pointee = tokens.count
    }
}

@c @implementation
public func diffusion_model_encode_prompt(_ model: OpaquePointer!, _ prompt: UnsafePointer<CChar>!, _ clipSkip: Int32,
                                          _ out: UnsafeMutablePointer<Float>!, _ count: Int) -> diffusion_status {
    boundary {
        let m = try HandleRegistry.shared.lookup(model, as: ModelHandle.self, "model").model
        let latent = try latentPipeline(m)
        guard let prompt else { throw invalid("prompt is NULL") }
        guard let out else { throw invalid("out is NULL") }
        guard clipSkip >= 0 else { throw invalid("clip_skip \(clipSkip) must be >= 0") }
        let expected = m.info.contextLength * m.info.contextWidth
        guard count == expected else { throw invalid("count is \(count), expected \(expected) (context_length x context_width)") }
        let states = try latent.encodePrompts([try string(prompt, "prompt")], clipSkip: Int(clipSkip), threads: m.threads)
        out.update(from: states.data, count: expected)
    }
}

@c @implementation
public func diffusion_model_vae_encode(_ model: OpaquePointer!, _ images: UnsafePointer<Float>!, _ batch: Int32, _ height: Int32,
                                       _ width: Int32, _ seed: UnsafePointer<UInt64>!, _ latents: UnsafeMutablePointer<Float>!,
                                       _ count: Int) -> diffusion_status {
    boundary {
        let m = try HandleRegistry.shared.lookup(model, as: ModelHandle.self, "model").model
        let latent = try latentPipeline(m)
        guard let images else { throw invalid("images is NULL") }
        guard let latents else { throw invalid("latents is NULL") }
        let f = m.info.vaeScaleFactor, n = Int(batch), h = Int(height), w = Int(width)
        let inCount = try elementCount([n, 3, h, w], "images")
        guard h % f == 0, w % f == 0 else { throw invalid("height and width (\(h)x\(w)) must be multiples of \(f)") }
        let expected = n * m.info.latentChannels * (h / f) * (w / f)
        guard count == expected else { throw invalid("count is \(count), expected \(expected) (batch x latent_channels x height/\(f) x width/\(f))") }
        try m.checkMemory(batch: n, height: h / f, width: w / f)
        let x = try Tensor(n: n, c: 3, h: h, w: w)
        x.data.update(from: images, count: inCount)
        guard x.data.allFinite(inCount) else { throw invalid("images hold non-finite values") }
        var generator = seed.map { TorchGenerator(seed: $0.pointee) }
        let z = try latent.encode(x, generator: &generator, threads: m.threads)
        latents.update(from: z.data, count: expected)
    }
}

@c @implementation
public func diffusion_model_vae_decode(_ model: OpaquePointer!, _ latents: UnsafePointer<Float>!, _ batch: Int32, _ height: Int32,
                                       _ width: Int32, _ images: UnsafeMutablePointer<Float>!, _ count: Int) -> diffusion_status {
    boundary {
        let m = try HandleRegistry.shared.lookup(model, as: ModelHandle.self, "model").model
        _ = try latentPipeline(m)
        guard let latents else { throw invalid("latents is NULL") }
        guard let images else { throw invalid("images is NULL") }
        let f = m.info.vaeScaleFactor, n = Int(batch), h = Int(height), w = Int(width), c = m.info.latentChannels
        let inCount = try elementCount([n, c, h, w], "latents")
        let expected = try elementCount([n, 3, h * f, w * f], "images")
        guard count == expected else { throw invalid("count is \(count), expected \(expected) (batch x 3 x height*\(f) x width*\(f))") }
        let z = try Tensor(n: n, c: c, h: h, w: w)
        z.data.update(from: latents, count: inCount)
        guard z.data.allFinite(inCount) else { throw invalid("latents hold non-finite values") }
        let y = try m.decode(z)
        images.update(from: y.data, count: expected)
    }
}

@c @implementation
public func diffusion_predict_params_init(_ params: UnsafeMutablePointer<diffusion_predict_params>!, _ structSize: Int) {
    writeDefaults(diffusion_predict_params(struct_size: 0, x: nil, batch: 1, channels: 0, height: 0, width: 0, timesteps: nil,
                                           class_labels: nil, context: nil, context_tokens: 0, context_width: 0,
                                           out: nil, out_count: 0),
                  to: params, size: structSize)
}

@c @implementation
public func diffusion_model_predict_ex(_ model: OpaquePointer!, _ params: UnsafePointer<diffusion_predict_params>!) -> diffusion_status {
    boundary {
        let m = try HandleRegistry.shared.lookup(model, as: ModelHandle.self, "model").model
        guard params != nil else { throw invalid("params is NULL") }
        var defaults = diffusion_predict_params()
        diffusion_predict_params_init(&defaults, MemoryLayout<diffusion_predict_params>.size)
        let p = try readParams(params, defaults: defaults, "diffusion_predict_params")
        guard let x = p.x else { throw invalid("x is NULL") }
        guard let timesteps = p.timesteps else { throw invalid("timesteps is NULL") }
        guard let out = p.out else { throw invalid("out is NULL") }
        let info = m.info
        let n = Int(p.batch), h = Int(p.height), w = Int(p.width)
        guard Int(p.channels) == info.inChannels else {
            throw invalid("channels is \(p.channels), the model takes \(info.inChannels) input channels")
        }
        _ = try elementCount([n, info.inChannels, h, w], "x")
        let expected = try elementCount([n, info.outChannels, h, w], "out")
        guard p.out_count == expected else {
            throw invalid("out_count is \(p.out_count), expected \(expected) (batch x out_channels x height x width)")
        }
        try m.checkMemory(batch: n, height: h, width: w)
        var conditioning = Conditioning()
        if let labels = p.class_labels { conditioning.classLabels = (0..<n).map { Int(labels[$0]) } }
        if let context = p.context {
            let tokens = Int(p.context_tokens), width = Int(p.context_width)
            guard info.contextWidth > 0 else { throw invalid("this model takes no text states (context must be NULL)") }
            guard width == info.contextWidth, tokens >= 1, tokens <= 4096 else {
                throw invalid("context is [\(n), \(tokens), \(width)]; expected [\(n), 1...4096 tokens, \(info.contextWidth)]")
            }
            let count = try elementCount([n, tokens, width], "context")
            let states = try Tokens(n: n, length: tokens, width: width)
            states.data.update(from: context, count: count)
            guard states.data.allFinite(count) else { throw invalid("context holds non-finite values") }
            conditioning.context = states
        }
        // x = [x_t | extra conditioning channels] as diffusers' UNet takes it.
        let latentC = info.latentChannels, extraC = info.inChannels - latentC
        let xt = try Tensor(n: n, c: latentC, h: h, w: w)
        let extra = extraC > 0 ? try Tensor(n: n, c: extraC, h: h, w: w) : nil
        let plane = h * w
        for i in 0..<n {
            (xt.data + i * latentC * plane).update(from: x + i * info.inChannels * plane, count: latentC * plane)
            if let extra { (extra.data + i * extraC * plane).update(from: x + (i * info.inChannels + latentC) * plane, count: extraC * plane) }
        }
        conditioning.extraChannels = extra
        guard xt.data.allFinite(xt.count), extra.map({ $0.data.allFinite($0.count) }) ?? true else {
            throw invalid("x holds non-finite values")
        }
        let y = try m.predict(xt, timesteps: Array(UnsafeBufferPointer(start: timesteps, count: n)), conditioning: conditioning)
        try copyFinitePrediction(y, count: expected, to: out)
    }
}

@c @implementation
public func diffusion_sampler_set_guidance_rescale(_ sampler: OpaquePointer!, _ rescale: Float) -> diffusion_status {
    boundary { try lookupSampler(sampler).setGuidanceRescale(rescale) }
}

@c @implementation
public func diffusion_sampler_set_prompt_embeddings(_ sampler: OpaquePointer!, _ embeddings: UnsafePointer<Float>!,
                                                    _ negativeEmbeddings: UnsafePointer<Float>!, _ count: Int) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let model = s.model, let latent = model.latent else {
            throw DiffusionError(.unsupported, "prompt embeddings need a text pipeline (Stable Diffusion)")
        }
        guard let embeddings else { throw invalid("embeddings is NULL") }
        let (tokens, width) = (model.info.contextLength, model.info.contextWidth)
        let expected = s.batch * tokens * width
        guard count == expected else { throw invalid("count is \(count), expected \(expected) (batch x context_length x context_width)") }
        func states(_ p: UnsafePointer<Float>) throws -> Tokens {
            let t = try Tokens(n: s.batch, length: tokens, width: width)
            t.data.update(from: p, count: expected)
            guard t.data.allFinite(expected) else { throw invalid("embeddings hold non-finite values") }
            return t
        }
        let cond = try states(embeddings)
        let uncond = try negativeEmbeddings.map(states)
            ?? latent.encodePrompts([""], clipSkip: 0, threads: model.threads).repeatingEach(s.batch)
        s.setTextStates(cond, unconditional: uncond)
    }
}

@c @implementation
public func diffusion_sampler_set_mask(_ sampler: OpaquePointer!, _ image: UnsafePointer<UInt8>!, _ imageSize: Int,
                                       _ mask: UnsafePointer<UInt8>!, _ maskSize: Int, _ strength: Double) -> diffusion_status {
    boundary {
        let s = try lookupSampler(sampler)
        guard let model = s.model, model.latent != nil else {
            throw DiffusionError(.unsupported, "inpainting needs a latent (Stable Diffusion) pipeline")
        }
        guard let image else { throw invalid("image is NULL") }
        guard let mask else { throw invalid("mask is NULL") }
        let pixels = try pixelTensor(s, image, imageSize, "image_size")
        let plane = pixels.h * pixels.w
        guard maskSize == plane || maskSize == s.batch * plane else {
            throw invalid("mask_size is \(maskSize), expected \(plane) (height x width) or \(s.batch * plane) (one plane per image)")
        }
        let values = (0..<maskSize).map { Float(mask[$0]) / 255 }
        try model.setInpainting(image: pixels, mask: values, strength: strength, on: s)
    }
}
