/// diffusers `UNet2DConditionModel` as Stable Diffusion 1.x / 2.x use it: CrossAttnDownBlock2D /
/// DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D / CrossAttnUpBlock2D; text states enter every
/// transformer's cross-attention; inpainting's extra channels are appended to x_t.
public final class UNet2DConditionModel {
    public let config: UNet2DConditionConfig

    private typealias Level = UNetLevel<SpatialTransformer>

    private let convIn: Conv2d
    private let timeMLP: TimestepMLP
    private let down: [Level]
    private let mid: (ResnetBlock2D, SpatialTransformer, ResnetBlock2D)?
    private let up: [Level]
    private let normOut: GroupNorm
    private let convOut: Conv2d

    public init(config: UNet2DConditionConfig, weights file: SafeTensorsFile) throws {
        self.config = config
        let w = WeightLoader(file: file)
        let ch = config.blockOutChannels, levels = ch.count
        let groups = config.normNumGroups, eps = config.normEps
        let temb = config.timeEmbedDim
        let scaleShift = config.resnetTimeScaleShift == "scale_shift"
        let context = config.crossAttentionDim

        convIn = try w.conv3x3("conv_in", cin: config.inChannels, cout: ch[0])
        timeMLP = try TimestepMLP(w, "time_embedding", inFeatures: ch[0], outFeatures: temb)

        func resnet(_ p: String, _ cin: Int, _ cout: Int, scale: Double = 1) throws -> ResnetBlock2D {
            try ResnetBlock2D(w, p, cin: cin, cout: cout, tembDim: temb, groups: groups, eps: eps,
                              scaleShift: scaleShift, outputScale: scale)
        }
        func transformer(_ p: String, _ c: Int, heads: Int, layers: Int) throws -> SpatialTransformer {
            try SpatialTransformer(w, p, channels: c, heads: heads, layers: layers, contextDim: context, groups: groups,
                                   linearProjection: config.useLinearProjection)
        }

        var downLevels: [Level] = []
        var output = ch[0]
        for (i, type) in config.downBlockTypes.enumerated() {
            let input = output
            output = ch[i]
            var level = Level()
            for j in 0..<config.layersPerBlock[i] {
                let p = "down_blocks.\(i)"
                level.resnets.append(try resnet("\(p).resnets.\(j)", j == 0 ? input : output, output))
                if type == "CrossAttnDownBlock2D" {
                    level.attentions.append(try transformer("\(p).attentions.\(j)", output, heads: config.attentionHeads[i],
                                                              layers: config.transformerLayersPerBlock[i]))
                }
            }
            if i != levels - 1 {
                let pad = config.downsamplePadding
                // padding == 0: diffusers pads right and bottom by one before the stride-2 conv.
                level.resample = try w.conv("down_blocks.\(i).downsamplers.0.conv", cin: output, cout: output, kernel: 3,
                                            stride: 2, pad: pad == 0 ? (0, 0, 1, 1) : (pad, pad, pad, pad))
            }
            downLevels.append(level)
        }
        down = downLevels

        if config.midBlockType != nil {
            let c = ch[levels - 1], scale = config.midBlockScaleFactor
            mid = (try resnet("mid_block.resnets.0", c, c, scale: scale),
                   try transformer("mid_block.attentions.0", c, heads: config.attentionHeads[levels - 1],
                                   layers: config.transformerLayersPerBlock[levels - 1]),
                   try resnet("mid_block.resnets.1", c, c, scale: scale))
        } else {
            mid = nil
        }

        var upLevels: [Level] = []
        let rc = Array(ch.reversed()), rHeads = Array(config.attentionHeads.reversed())
        let rLayers = Array(config.layersPerBlock.reversed()), rTransformers = Array(config.transformerLayersPerBlock.reversed())
        output = rc[0]
        for (i, type) in config.upBlockTypes.enumerated() {
            let prevOutput = output
            output = rc[i]
            let input = rc[min(i + 1, levels - 1)]
            var level = Level()
            let layers = rLayers[i] + 1
            for j in 0..<layers {
                let p = "up_blocks.\(i)"
                let skip = j == layers - 1 ? input : output
                let resIn = j == 0 ? prevOutput : output
                level.resnets.append(try resnet("\(p).resnets.\(j)", resIn + skip, output))
                if type == "CrossAttnUpBlock2D" {
                    level.attentions.append(try transformer("\(p).attentions.\(j)", output, heads: rHeads[i], layers: rTransformers[i]))
                }
            }
            if i != levels - 1 {
                level.resample = try w.conv3x3("up_blocks.\(i).upsamplers.0.conv", cin: output, cout: output)
            }
            upLevels.append(level)
        }
        up = upLevels

        normOut = try w.groupNorm("conv_norm_out", groups: groups, channels: ch[0], eps: eps)
        convOut = try w.conv3x3("conv_out", cin: ch[0], cout: config.outChannels)
    }

    /// A generous upper bound of one forward pass's working memory (latent h × w), so impossible
    /// sizes are refused instead of crashing.
    public func estimatedBytes(batch n: Int, height h: Int, width w: Int, threads: Int) -> Double {
        let hw = Double(h) * Double(w), nd = Double(n)
        var activations = 0.0, peak = 0.0
        for (l, c) in config.blockOutChannels.enumerated() {
            let s = hw / Double(1 << (2 * l)), cd = Double(c)
            activations += nd * cd * s * Double(config.layersPerBlock[l] + 2)
            // a transformer block's temporaries: q, k, v, attention, projections, GEGLU (8 widths)
            peak = max(peak, nd * cd * s * 16)
        }
        let scores = Double(max(threads, 1)) * 64 * max(hw, 77)
        let im2col = Double(gemmScratchBytes(threads: threads)) / 4
        // Winograd: the widest conv (an up block's concatenated input) as if it took that path.
        let c = config.blockOutChannels.max() ?? 0
        let winograd = Double(WinogradConv.scratchBytes(cin: 2 * c, cout: c, width: w)) / 4
        return 4 * (activations + peak + scores + im2col + winograd)
    }

    /// emb = time_embedding(sinusoids(t)); returns silu(emb), as every resnet applies the activation
    /// before its projection.
    private func embedding(_ timesteps: [Float]) throws -> [Float] {
        let c0 = config.blockOutChannels[0]
        var emb = try timeMLP(sinusoidalEmbedding(timesteps, dim: c0, flipSinToCos: config.flipSinToCos, freqShift: config.freqShift),
                          rows: timesteps.count)
        for j in emb.indices { emb[j] = siluScalar(emb[j]) }
        return emb
    }

    /// One forward pass: x [n, in_channels, h, w] (x_t with any extra channels already appended),
    /// context [n, tokens, cross_attention_dim].
    func forward(_ x: Tensor, timesteps: [Float], context: Tokens, threads: Int) throws -> Tensor {
        let emb = try embedding(timesteps)
        var sample = x
        if config.centerInputSample {
            sample = try Tensor(n: x.n, c: x.c, h: x.h, w: x.w)
            for i in 0..<x.count { sample.data[i] = 2 * x.data[i] - 1 }
        }
        sample = try convIn(sample, threads: threads)
        sample = try unetBody(sample, down: down, mid: { x in
            guard let (r0, attn, r1) = self.mid else { return x }
            let h = try attn(try r0(x, activatedEmb: emb, threads: threads), context: context, threads: threads)
            return try r1(h, activatedEmb: emb, threads: threads)
        }, up: up, emb: emb, threads: threads) { transformer, x in try transformer(x, context: context, threads: threads) }
        sample = try normOut(sample, silu: true, threads: threads)
        return try convOut(sample, threads: threads)
    }
}

extension UNet2DConditionModel: Denoiser {
    public var sampleChannels: Int { config.outChannels }
    public var outChannels: Int { config.outChannels }

    /// Needs text states [n, tokens, cross_attention_dim]; an inpainting UNet also needs the extra
    /// channels [n, in_channels − out_channels, h, w].
    public func predict(_ x: Tensor, timesteps: [Float], conditioning: Conditioning, threads: Int) throws -> Tensor {
        guard x.c == config.outChannels else {
            throw DiffusionError(.invalidArgument, "x_t has \(x.c) channels, the model's latents have \(config.outChannels)")
        }
        guard let context = conditioning.context else {
            throw DiffusionError(.invalidArgument, "this UNet2DConditionModel needs text states (encoder hidden states)")
        }
        guard context.n == x.n, context.width == config.crossAttentionDim, context.length >= 1 else {
            throw DiffusionError(.invalidArgument, "text states are [\(context.n), \(context.length), \(context.width)]; expected [\(x.n), tokens, \(config.crossAttentionDim)]")
        }
        guard conditioning.classLabels == nil else { throw DiffusionError(.invalidArgument, "this model takes no class labels") }
        var input = x
        let extra = config.extraChannels
        if extra > 0 {
            guard let e = conditioning.extraChannels, e.n == x.n, e.c == extra, e.h == x.h, e.w == x.w else {
                throw DiffusionError(.invalidArgument, "this UNet takes \(config.inChannels) input channels: x_t's \(config.outChannels) and \(extra) conditioning channels [\(x.n), \(extra), \(x.h), \(x.w)] (inpainting: mask and masked-image latents)")
            }
            input = try concatChannels(x, e)
        } else if conditioning.extraChannels != nil {
            throw DiffusionError(.invalidArgument, "this UNet takes no extra input channels")
        }
        return try forward(input, timesteps: timesteps, context: context, threads: threads)
    }
}
