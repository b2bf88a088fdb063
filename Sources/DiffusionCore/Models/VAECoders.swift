/// The halves of diffusers' `AutoencoderKL` (models/autoencoders/vae.py `Encoder` and `Decoder`),
/// as AutoencoderKL builds them: group norms with eps 1e-6, resnets without time embedding, a
/// UNetMidBlock2D of resnet, single-head attention over all channels, resnet.

/// diffusers `UNetMidBlock2D` with temb_channels None: resnet, optional attention (group norm,
/// one head of all channels; to_q/to_k/to_v/to_out.0 or the pre-0.14 query/key/value/proj_attn),
/// resnet.
struct VAEMidBlock {
    let first: ResnetBlock2D, attention: SpatialSelfAttention?, second: ResnetBlock2D

    init(_ w: WeightLoader, _ p: String, channels c: Int, groups: Int, attention withAttention: Bool) throws {
        first = try ResnetBlock2D(w, "\(p).resnets.0", cin: c, cout: c, groups: groups, eps: VAEEncoder.eps)
        attention = withAttention
            ? try SpatialSelfAttention(w, "\(p).attentions.0", channels: c, headDim: c, groups: groups, eps: VAEEncoder.eps,
                                       rescale: 1)
            : nil
        second = try ResnetBlock2D(w, "\(p).resnets.1", cin: c, cout: c, groups: groups, eps: VAEEncoder.eps)
    }

    func callAsFunction(_ x: Tensor, threads: Int) throws -> Tensor {
        var h = try first(x, threads: threads)
        if let attention { h = try attention(h, threads: threads) }
        return try second(h, threads: threads)
    }
}

/// diffusers `Encoder` (double_z): conv_in, DownEncoderBlock2D × levels (a stride-2 downsampler
/// on all but the last), mid block, conv_norm_out + SiLU, conv_out to 2 × latent_channels.
struct VAEEncoder {
    static let eps = 1e-6

    private struct Level {
        var resnets: [ResnetBlock2D] = []
        var downsample: Conv2d? = nil
    }

    private let convIn: Conv2d
    private let down: [Level]
    private let mid: VAEMidBlock
    private let normOut: GroupNorm
    private let convOut: Conv2d

    init(_ w: WeightLoader, config: AutoencoderKLConfig) throws {
        let ch = config.blockOutChannels, groups = config.normNumGroups
        convIn = try w.conv3x3("encoder.conv_in", cin: config.inChannels, cout: ch[0])
        var levels: [Level] = []
        var output = ch[0]
        for i in ch.indices {
            let input = output
            output = ch[i]
            var level = Level()
            for j in 0..<config.layersPerBlock {
                level.resnets.append(try ResnetBlock2D(w, "encoder.down_blocks.\(i).resnets.\(j)", cin: j == 0 ? input : output,
                                                       cout: output, groups: groups, eps: Self.eps))
            }
            if i != ch.count - 1 {
                // Downsample2D with padding 0: pad right and bottom by one, then a stride-2 conv.
                level.downsample = try w.conv("encoder.down_blocks.\(i).downsamplers.0.conv", cin: output, cout: output,
                                              kernel: 3, stride: 2, pad: (0, 0, 1, 1))
            }
            levels.append(level)
        }
        down = levels
        let last = ch[ch.count - 1]
        mid = try VAEMidBlock(w, "encoder.mid_block", channels: last, groups: groups, attention: config.midBlockAddAttention)
        normOut = try w.groupNorm("encoder.conv_norm_out", groups: groups, channels: last, eps: Self.eps)
        convOut = try w.conv3x3("encoder.conv_out", cin: last, cout: 2 * config.latentChannels)
    }

    /// [n, in_channels, h, w] → [n, 2 × latent_channels, h / 2^(levels−1), w / 2^(levels−1)]
    /// (each downsampler floors odd sizes; h and w must be at least 2^(levels−1)).
    func callAsFunction(_ x: Tensor, threads: Int) throws -> Tensor {
        var h = try convIn(x, threads: threads)
        for level in down {
            for r in level.resnets { h = try r(h, threads: threads) }
            if let conv = level.downsample { h = try conv(h, threads: threads) }
        }
        h = try mid(h, threads: threads)
        h = try normOut(h, silu: true, threads: threads)
        return try convOut(h, threads: threads)
    }
}

/// diffusers `Decoder` (norm_type "group"): conv_in, mid block, UpDecoderBlock2D × levels with
/// layers_per_block + 1 resnets and a nearest-2x + conv upsampler on all but the last,
/// conv_norm_out + SiLU, conv_out.
struct VAEDecoder {
    private struct Level {
        var resnets: [ResnetBlock2D] = []
        var upsample: Conv2d? = nil
    }

    private let convIn: Conv2d
    private let mid: VAEMidBlock
    private let up: [Level]
    private let normOut: GroupNorm
    private let convOut: Conv2d

    init(_ w: WeightLoader, config: AutoencoderKLConfig) throws {
        let ch = config.blockOutChannels, groups = config.normNumGroups, eps = VAEEncoder.eps
        let reversed = Array(ch.reversed())
        convIn = try w.conv3x3("decoder.conv_in", cin: config.latentChannels, cout: reversed[0])
        mid = try VAEMidBlock(w, "decoder.mid_block", channels: reversed[0], groups: groups, attention: config.midBlockAddAttention)
        var levels: [Level] = []
        var output = reversed[0]
        for i in reversed.indices {
            let previous = output
            output = reversed[i]
            var level = Level()
            for j in 0..<(config.layersPerBlock + 1) {
                level.resnets.append(try ResnetBlock2D(w, "decoder.up_blocks.\(i).resnets.\(j)", cin: j == 0 ? previous : output,
                                                       cout: output, groups: groups, eps: eps))
            }
            if i != reversed.count - 1 {
                level.upsample = try w.conv3x3("decoder.up_blocks.\(i).upsamplers.0.conv", cin: output, cout: output)
            }
            levels.append(level)
        }
        up = levels
        normOut = try w.groupNorm("decoder.conv_norm_out", groups: groups, channels: ch[0], eps: eps)
        convOut = try w.conv3x3("decoder.conv_out", cin: ch[0], cout: config.outChannels)
    }

    /// [n, latent_channels, h, w] → [n, out_channels, h × 2^(levels−1), w × 2^(levels−1)].
    func callAsFunction(_ z: Tensor, threads: Int) throws -> Tensor {
        var h = try convIn(z, threads: threads)
        h = try mid(h, threads: threads)
        for level in up {
            for r in level.resnets { h = try r(h, threads: threads) }
            if let conv = level.upsample { h = try conv(try upsampleNearest2x(h), threads: threads) }
        }
        h = try normOut(h, silu: true, threads: threads)
        return try convOut(h, threads: threads)
    }
}
