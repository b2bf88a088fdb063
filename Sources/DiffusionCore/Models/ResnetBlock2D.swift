/// diffusers `ResnetBlock2D` (conv_shortcut 1x1 when channels change, no up/down sampling). With
/// `tembDim` nil it has no time-embedding projection (diffusers' temb_channels=None: the VAE's
/// resnets), and is called without an embedding.
struct ResnetBlock2D {
    let norm1: GroupNorm, conv1: Conv2d
    let timeProj: Linear?
    let norm2: GroupNorm, conv2: Conv2d
    let shortcut: Conv2d?
    let scaleShift: Bool
    let inverseOutputScale: Float

    init(_ w: WeightLoader, _ p: String, cin: Int, cout: Int, tembDim: Int?, groups: Int, eps: Double,
         scaleShift: Bool, outputScale: Double) throws {
        norm1 = try w.groupNorm("\(p).norm1", groups: groups, channels: cin, eps: eps)
        conv1 = try w.conv3x3("\(p).conv1", cin: cin, cout: cout)
        timeProj = try tembDim.map {
            try w.linear("\(p).time_emb_proj", inFeatures: $0, outFeatures: scaleShift ? 2 * cout : cout)
        }
        norm2 = try w.groupNorm("\(p).norm2", groups: groups, channels: cout, eps: eps)
        conv2 = try w.conv3x3("\(p).conv2", cin: cout, cout: cout)
        shortcut = cin != cout ? try w.conv1x1("\(p).conv_shortcut", cin: cin, cout: cout) : nil
        self.scaleShift = scaleShift
        inverseOutputScale = Float(1 / outputScale)
    }

    /// A block without time embedding (temb_channels None).
    init(_ w: WeightLoader, _ p: String, cin: Int, cout: Int, groups: Int, eps: Double, outputScale: Double = 1) throws {
        try self.init(w, p, cin: cin, cout: cout, tembDim: nil, groups: groups, eps: eps, scaleShift: false,
                      outputScale: outputScale)
    }

    /// `activatedEmb` is silu(emb), [n, tembDim], for a block with a time projection; nil (or
    /// ignored) for one without.
    func callAsFunction(_ x: Tensor, activatedEmb: [Float]?, threads: Int) throws -> Tensor {
        var h = try norm1(x, silu: true, threads: threads)
        h = try conv1(h, threads: threads)
        let c = h.c, hw = h.hw
        if let timeProj, let emb = activatedEmb {
            let t = try emb.withUnsafeBufferPointer { try timeProj($0.baseAddress!, rows: x.n) }
            if !scaleShift {
                // h = h + temb[:, :, None, None]; then norm2 and act
                for i in 0..<h.n {
                    for ch in 0..<c {
                        let v = t[i * c + ch]
                        let row = h.data + (i * c + ch) * hw
                        for j in 0..<hw { row[j] += v }
                    }
                }
                h = try norm2(h, silu: true, threads: threads)
            } else {
                // h = act(norm2(h) * (1 + scale) + shift)
                h = try norm2(h, threads: threads)
                for i in 0..<h.n {
                    for ch in 0..<c {
                        let scale = 1 + t[i * 2 * c + ch], shift = t[i * 2 * c + c + ch]
                        let row = h.data + (i * c + ch) * hw
                        for j in 0..<hw { row[j] = siluScalar(row[j] * scale + shift) }
                    }
                }
            }
        } else {
            h = try norm2(h, silu: true, threads: threads)
        }
        h = try conv2(h, threads: threads)
        let residual = try shortcut.map { try $0(x, threads: threads) } ?? x
        // output = (input_tensor + hidden_states) / output_scale_factor
        let out = try Tensor(n: h.n, c: h.c, h: h.h, w: h.w)
        let a = residual.data, b = h.data, o = out.data, s = inverseOutputScale
        for j in 0..<out.count { o[j] = (a[j] + b[j]) * s }
        return out
    }

    func callAsFunction(_ x: Tensor, threads: Int) throws -> Tensor {
        try callAsFunction(x, activatedEmb: nil, threads: threads)
    }
}

/// diffusers `Attention` as used by the UNet2D blocks: optional group norm, q/k/v projections,
/// multi-head softmax attention, output projection, residual, division by the rescale factor.
struct SpatialSelfAttention {
    let norm: GroupNorm?
    let q: Conv2d, k: Conv2d, v: Conv2d, out: Conv2d
    let heads: Int
    let inverseRescale: Float

    init(_ w: WeightLoader, _ p: String, channels: Int, headDim: Int, groups: Int?, eps: Double, rescale: Double) throws {
        norm = try groups.map { try w.groupNorm("\(p).group_norm", groups: $0, channels: channels, eps: eps) }
        // Checkpoints saved before diffusers 0.14 use query/key/value/proj_attn.
        q = try w.linearAsConv(["\(p).query", "\(p).to_q"], cin: channels, cout: channels)
        k = try w.linearAsConv(["\(p).key", "\(p).to_k"], cin: channels, cout: channels)
        v = try w.linearAsConv(["\(p).value", "\(p).to_v"], cin: channels, cout: channels)
        out = try w.linearAsConv(["\(p).proj_attn", "\(p).to_out.0"], cin: channels, cout: channels)
        heads = channels / headDim
        inverseRescale = Float(1 / rescale)
    }

    func callAsFunction(_ x: Tensor, threads: Int) throws -> Tensor {
        let h = try norm.map { try $0(x, threads: threads) } ?? x
        let a = try spatialAttention(q: q(h, threads: threads), k: k(h, threads: threads), v: v(h, threads: threads),
                                 heads: heads, precision: q.weight.file.precision, threads: threads)
        let y = try out(a, threads: threads)
        addScaled(y, x, scale: inverseRescale)
        return y
    }
}
