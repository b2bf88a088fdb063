/// Stable Diffusion's components around its UNet: the CLIP tokenizer and text encoder (prompt →
/// text states) and the VAE (latents ↔ images), as diffusers' StableDiffusionPipeline uses them.
public final class LatentPipeline {
    public let tokenizer: CLIPTokenizer
    public let textEncoder: CLIPTextModel
    public let vae: AutoencoderKL
    private let textWeights: SafeTensorsFile
    /// Bytes of the text encoder's and the VAE's weight files.
    public let weightBytes: Int
    /// Pixels per latent along each side: 2^(VAE levels − 1).
    public let vaeScaleFactor: Int
    public let scalingFactor: Float
    /// Added after dividing by scalingFactor on decode (SD3-style VAEs); 0 for SD 1.x / 2.x.
    public let shiftFactor: Float

    init(folder: PipelineFolder, unet: UNet2DConditionConfig) throws {
        tokenizer = try CLIPTokenizer(folder: try folder.folder("tokenizer"))
        let (textJSON, textConfigPath) = try folder.config("text_encoder")
        // The text encoder stays float32 in either precision: it runs once per prompt (a small
        // share of the time), and its states steer every step.
        textWeights = try folder.weights("text_encoder", stem: "model", precision: .exact)
        do {
            textEncoder = try CLIPTextModel(config: try CLIPTextConfig(json: textJSON), weights: textWeights)
        } catch let e as DiffusionError {
            throw e.code == .modelMismatch ? e : e.context(textConfigPath)
        }
        let (vaeJSON, vaeConfigPath) = try folder.config("vae")
        let vaeWeights = try folder.weights("vae", stem: "diffusion_pytorch_model")
        let vaeConfig: AutoencoderKLConfig
        do {
            vaeConfig = try AutoencoderKLConfig(json: vaeJSON)
            vae = try AutoencoderKL(config: vaeConfig, weights: vaeWeights)
        } catch let e as DiffusionError {
            throw e.code == .modelMismatch ? e : e.context(vaeConfigPath)
        }
        weightBytes = textWeights.plannedBytes + vaeWeights.plannedBytes
        guard vaeConfig.inChannels == vaeConfig.outChannels else {
            throw DiffusionError(.unsupported, "\(vaeConfigPath): in_channels \(vaeConfig.inChannels) differs from out_channels \(vaeConfig.outChannels) (the init image and the output must have the same channels)")
        }
        guard textEncoder.hiddenSize == unet.crossAttentionDim else {
            throw DiffusionError(.modelMismatch, "the text encoder's width \(textEncoder.hiddenSize) differs from the UNet's cross_attention_dim \(unet.crossAttentionDim)")
        }
        guard vaeConfig.latentChannels == unet.outChannels else {
            throw DiffusionError(.modelMismatch, "the VAE's latent_channels \(vaeConfig.latentChannels) differ from the UNet's out_channels \(unet.outChannels)")
        }
        guard tokenizer.modelMaxLength <= textEncoder.maxLength else {
            throw DiffusionError(.modelMismatch, "the tokenizer's model_max_length \(tokenizer.modelMaxLength) exceeds the text encoder's \(textEncoder.maxLength) positions")
        }
        vaeScaleFactor = 1 << (vaeConfig.blockOutChannels.count - 1)
        scalingFactor = Float(vaeConfig.scalingFactor)
        shiftFactor = Float(vaeConfig.shiftFactor ?? 0)
    }

    /// Token ids, padded to model_max_length, as diffusers' tokenizer call in encode_prompt.
    public func tokenize(_ prompt: String) -> [Int] { tokenizer.encode(prompt) }

    /// Text states [n, tokens, width] of `prompts`, as diffusers' encode_prompt (clip_skip k ≥ 1:
    /// the k-th last layer's output through the final LayerNorm).
    public func encodePrompts(_ prompts: [String], clipSkip: Int, threads: Int) throws -> Tokens {
        let ids = prompts.flatMap { tokenizer.encode($0) }
        defer { textWeights.releaseResidentPages() }  // not needed again until the next prompt
        return try textEncoder.encode(ids: ids, count: prompts.count, clipSkip: clipSkip > 0 ? clipSkip : nil, threads: threads)
    }

    /// Images in [-1, 1] from latents: vae.decode(latents / scaling_factor + shift_factor), one
    /// image at a time (the same numbers as a batch, a batch's memory), tiled as diffusers'
    /// enable_tiling when a whole-image decode would not fit the memory budget.
    public func decode(_ latents: Tensor, threads: Int, progress: ((Int, Int) throws -> Void)? = nil) throws -> Tensor {
        var images: [Tensor] = []
        let per = latents.c * latents.hw
        for n in 0..<latents.n {
            try progress?(n, latents.n)
            let z = try Tensor(n: 1, c: latents.c, h: latents.h, w: latents.w)
            for i in 0..<per { z.data[i] = latents.data[n * per + i] / scalingFactor + shiftFactor }
            images.append(vae.decodeNeedsTiling(height: z.h, width: z.w, batch: 1, threads: threads)
                          ? try vae.decodeTiled(z, threads: threads) : try vae.decode(z, threads: threads))
        }
        try progress?(latents.n, latents.n)
        return images.count == 1 ? images[0] : try Tensor.concatenatedBatch(images)
    }

    /// Latents of images in [-1, 1]: (posterior sample − shift_factor) · scaling_factor with the
    /// sample drawn from `generator` (one draw for the whole batch, as latent_dist.sample), or the
    /// posterior mean without one. Tiled like diffusers' enable_tiling when the image is too large.
    public func encode(_ images: Tensor, generator: inout TorchGenerator?, threads: Int) throws -> Tensor {
        let (mean, logvar) = vae.encodeNeedsTiling(height: images.h, width: images.w, batch: images.n, threads: threads)
            ? try vae.encodeTiled(images, threads: threads) : try vae.encode(images, threads: threads)
        var z = mean
        if var g = generator {
            z = try vae.sample(mean: mean, logvar: logvar, generator: &g)
            generator = g
        }
        let out = try Tensor(n: z.n, c: z.c, h: z.h, w: z.w)
        for i in 0..<out.count { out.data[i] = (z.data[i] - shiftFactor) * scalingFactor }
        return out
    }
}
