#if canImport(Glibc)
import Glibc
#endif

/// diffusers `UNet2DModel` (positional time embedding; Down/AttnDown, Up/AttnUp, UNetMidBlock2D).
public final class UNet2DModel {
    public let config: UNet2DConfig

    private typealias Level = UNetLevel<SpatialSelfAttention>

    private let convIn: Conv2d
    private let timeMLP: TimestepMLP
    private let classTable: StoredTensor?          // nn.Embedding(num_class_embeds, time_embed_dim)
    private let classMLP: TimestepMLP?           // class_embed_type "timestep"
    private let down: [Level]
    private let mid: (ResnetBlock2D, SpatialSelfAttention?, ResnetBlock2D)?
    private let up: [Level]
    private let normOut: GroupNorm
    private let convOut: Conv2d

    public init(config: UNet2DConfig, weights file: SafeTensorsFile) throws {
        self.config = config
        let w = WeightLoader(file: file)
        let ch = config.blockOutChannels
        let groups = config.normNumGroups ?? min(ch[0] / 4, 32)
        let eps = config.normEps
        let temb = config.timeEmbedDim
        let scaleShift = config.resnetTimeScaleShift == "scale_shift"

        convIn = try w.conv3x3("conv_in", cin: config.inChannels, cout: ch[0])
        timeMLP = try TimestepMLP(w, "time_embedding", inFeatures: ch[0], outFeatures: temb)
        if config.classEmbedType == "timestep" {
            classTable = nil
            classMLP = try TimestepMLP(w, "class_embedding", inFeatures: ch[0], outFeatures: temb)
        } else {
            classTable = try config.numClassEmbeds.map { try w.stored("class_embedding.weight", [$0, temb]) }
            classMLP = nil
        }

        func resnet(_ p: String, _ cin: Int, _ cout: Int, scale: Double = 1) throws -> ResnetBlock2D {
            try ResnetBlock2D(w, p, cin: cin, cout: cout, tembDim: temb, groups: groups, eps: eps,
                              scaleShift: scaleShift, outputScale: scale)
        }
        func attention(_ p: String, _ c: Int, groups g: Int?, rescale: Double = 1) throws -> SpatialSelfAttention {
            try SpatialSelfAttention(w, p, channels: c, headDim: config.attentionHeadDim ?? c, groups: g, eps: eps,
                                     rescale: rescale)
        }

        var downLevels: [Level] = []
        var output = ch[0]
        for (i, type) in config.downBlockTypes.enumerated() {
            let input = output
            output = ch[i]
            var level = Level()
            for j in 0..<config.layersPerBlock {
                let p = "down_blocks.\(i)"
                level.resnets.append(try resnet("\(p).resnets.\(j)", j == 0 ? input : output, output))
                if type == "AttnDownBlock2D" {
                    level.attentions.append(try attention("\(p).attentions.\(j)", output, groups: groups))
                }
            }
            if i != ch.count - 1 {
                let pad = config.downsamplePadding
                // padding == 0: diffusers pads right and bottom by one before the stride-2 conv.
                level.resample = try w.conv("down_blocks.\(i).downsamplers.0.conv", cin: output, cout: output,
                                            kernel: 3, stride: 2,
                                            pad: pad == 0 ? (0, 0, 1, 1) : (pad, pad, pad, pad))
            }
            downLevels.append(level)
        }
        down = downLevels

        if config.midBlockType != nil {
            let c = ch.last!
            let scale = config.midBlockScaleFactor
            let attnGroups = config.attnNormNumGroups ?? (scaleShift ? nil : groups)
            mid = (try resnet("mid_block.resnets.0", c, c, scale: scale),
                   config.addAttention ? try attention("mid_block.attentions.0", c, groups: attnGroups, rescale: scale) : nil,
                   try resnet("mid_block.resnets.1", c, c, scale: scale))
        } else {
            mid = nil
        }

        var upLevels: [Level] = []
        let reversed = Array(ch.reversed())
        output = reversed[0]
        for (i, type) in config.upBlockTypes.enumerated() {
            let prevOutput = output
            output = reversed[i]
            let input = reversed[min(i + 1, ch.count - 1)]
            var level = Level()
            let layers = config.layersPerBlock + 1
            for j in 0..<layers {
                let p = "up_blocks.\(i)"
                let skip = j == layers - 1 ? input : output
                let resIn = j == 0 ? prevOutput : output
                level.resnets.append(try resnet("\(p).resnets.\(j)", resIn + skip, output))
                if type == "AttnUpBlock2D" {
                    level.attentions.append(try attention("\(p).attentions.\(j)", output, groups: groups))
                }
            }
            if i != ch.count - 1 {
                level.resample = try w.conv3x3("up_blocks.\(i).upsamplers.0.conv", cin: output, cout: output)
            }
            upLevels.append(level)
        }
        up = upLevels

        normOut = try w.groupNorm("conv_norm_out", groups: groups, channels: ch[0], eps: eps)
        convOut = try w.conv3x3("conv_out", cin: ch[0], cout: config.outChannels)
    }

    /// A generous upper bound of the memory one forward pass needs (activations and skips,
    /// im2col tiles, attention), so impossible sizes are refused instead of crashing. Attention is
    /// flash-style: q, k, v, the output, packed copies of k and v and the block's norm and residual
    /// (12 activations of its level, generously) and per-thread tiles, never the tokens x tokens
    /// scores. Measured: the plain fixture at batch 8, 256x256 (16,384 tokens in its mid block)
    /// peaks 383 MB over the process's base (pooled blocks included), estimated 0.48 GB; batch 64:
    /// 1.54 GB, estimated 3.76 GB. (Until this change the scores term, tokens² per thread, made
    /// that batch-8 call 2.5 GB and a batch-1 512x512 one 34.6 GB.)
    public func estimatedBytes(batch n: Int, height h: Int, width w: Int, threads: Int) -> Double {
        let ch = config.blockOutChannels.map(Double.init)
        let hw = Double(h) * Double(w), nd = Double(n), t = Double(max(threads, 1))
        var activations = 0.0, peak = 0.0, attention = 0.0
        for (l, c) in ch.enumerated() {
            let s = hw / pow(4, Double(l))
            activations += nd * c * s * Double(config.layersPerBlock + 2)
            peak = max(peak, nd * 2 * c * s)
            let hasAttention = config.downBlockTypes[l].hasPrefix("Attn") || config.upBlockTypes[ch.count - 1 - l].hasPrefix("Attn")
                || (l == ch.count - 1 && config.midBlockType != nil && config.addAttention)
            if hasAttention { attention = max(attention, 12 * nd * c * s + t * 64 * (c + 192)) }
        }
        let im2col = t * 9 * 2 * (ch.max() ?? 0) * min(512, hw)
        let c = Int(ch.max() ?? 0)
        let winograd = Double(WinogradConv.scratchBytes(cin: 2 * c, cout: c, width: w)) / 4
        return 4 * (activations + 8 * peak + im2col + attention + winograd)
    }

    func timestepEmbedding(_ t: [Float], dim: Int) -> [Float] {
        sinusoidalEmbedding(t, dim: dim, flipSinToCos: config.flipSinToCos, freqShift: config.freqShift)
    }

    /// emb = linear_2(silu(linear_1(proj(t)))) (+ class embedding); returns silu(emb) as every
    /// resnet applies the activation before its projection.
    private func embedding(timesteps: [Float], classLabels: [Int]?) throws -> [Float] {
        let n = timesteps.count, temb = config.timeEmbedDim, c0 = config.blockOutChannels[0]
        var emb = try timeMLP(timestepEmbedding(timesteps, dim: c0), rows: n)
        if let labels = classLabels {
            if let table = classTable {
                var row = [Float](repeating: 0, count: temb)
                for i in 0..<n {
                    row.withUnsafeMutableBufferPointer { table.widenRows(labels[i], 1, into: $0.baseAddress!) }
                    for j in 0..<temb { emb[i * temb + j] += row[j] }
                }
            } else if let classMLP {
                let c = try classMLP(timestepEmbedding(labels.map { Float($0) }, dim: c0), rows: n)
                for j in emb.indices { emb[j] += c[j] }
            }
        }
        for j in emb.indices { emb[j] = siluScalar(emb[j]) }
        return emb
    }

    /// One forward pass. `x` is [n, in_channels, h, w]; `classLabels` is required exactly when
    /// the model has a class embedding (checked by the caller).
    public func forward(_ x: Tensor, timesteps: [Float], classLabels: [Int]?, threads: Int) throws -> Tensor {
        let emb = try embedding(timesteps: timesteps, classLabels: classLabels)
        var sample = x
        if config.centerInputSample {
            sample = try Tensor(n: x.n, c: x.c, h: x.h, w: x.w)
            for i in 0..<x.count { sample.data[i] = 2 * x.data[i] - 1 }
        }
        sample = try convIn(sample, threads: threads)
        sample = try unetBody(sample, down: down, mid: { x in
            guard let (r0, attn, r1) = self.mid else { return x }
            var h = try r0(x, activatedEmb: emb, threads: threads)
            if let attn { h = try attn(h, threads: threads) }
            return try r1(h, activatedEmb: emb, threads: threads)
        }, up: up, emb: emb, threads: threads) { attention, x in try attention(x, threads: threads) }
        sample = try normOut(sample, silu: true, threads: threads)
        return try convOut(sample, threads: threads)
    }
}

extension UNet2DModel: Denoiser {
    public var sampleChannels: Int { config.inChannels }
    public var outChannels: Int { config.outChannels }

    /// Class labels are required exactly when the model has a class embedding; text states and
    /// extra channels are refused.
    public func predict(_ x: Tensor, timesteps: [Float], conditioning: Conditioning, threads: Int) throws -> Tensor {
        guard x.c == config.inChannels else {
            throw DiffusionError(.invalidArgument, "input has \(x.c) channels, the model takes \(config.inChannels)")
        }
        guard conditioning.context == nil, conditioning.extraChannels == nil else {
            throw DiffusionError(.invalidArgument, "a UNet2DModel takes no text states or extra channels")
        }
        if config.hasClassEmbedding {
            guard let labels = conditioning.classLabels else {
                throw DiffusionError(.invalidArgument, "this model is class-conditional: class labels are required")
            }
            guard labels.count == x.n else { throw DiffusionError(.invalidArgument, "\(labels.count) class labels for a batch of \(x.n)") }
            try config.checkClassLabels(labels)
        } else if conditioning.classLabels != nil {
            throw DiffusionError(.invalidArgument, "this model is not class-conditional: class labels must be NULL")
        }
        return try forward(x, timesteps: timesteps, classLabels: conditioning.classLabels, threads: threads)
    }
}
