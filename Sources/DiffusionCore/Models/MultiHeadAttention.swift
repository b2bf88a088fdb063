/// diffusers `Attention` / transformers `CLIPAttention` over token rows: q from the input, k and v
/// from the context (cross-attention) or the input itself, `heads` heads of width dim / heads,
/// softmax(q kᵀ / sqrt(d)) v, then the output projection.
struct MultiHeadAttention {
    let q: Linear, k: Linear, v: Linear, out: Linear
    let heads: Int, headDim: Int
    let causal: Bool

    /// `names`: the projections' key names (q, k, v, out) under `prefix`.
    init(_ w: WeightLoader, _ prefix: String, dim: Int, contextDim: Int, heads: Int, projectionBias: Bool,
         causal: Bool = false, names: (String, String, String, String) = ("to_q", "to_k", "to_v", "to_out.0")) throws {
        guard heads >= 1, dim % heads == 0 else {
            throw DiffusionError(.unsupported, "\(prefix): \(heads) attention heads do not divide width \(dim)")
        }
        q = try w.linear("\(prefix).\(names.0)", inFeatures: dim, outFeatures: dim, bias: projectionBias)
        k = try w.linear("\(prefix).\(names.1)", inFeatures: contextDim, outFeatures: dim, bias: projectionBias)
        v = try w.linear("\(prefix).\(names.2)", inFeatures: contextDim, outFeatures: dim, bias: projectionBias)
        out = try w.linear("\(prefix).\(names.3)", inFeatures: dim, outFeatures: dim)
        self.heads = heads
        headDim = dim / heads
        self.causal = causal
    }

    /// Attention of `x` [n, L, dim] over `context` [n, Lk, contextDim] (nil: self-attention).
    func callAsFunction(_ x: Tokens, context: Tokens?, threads: Int) throws -> Tokens {
        let ctx = context ?? x
        let dim = q.outFeatures
        let qs = try Tokens(n: x.n, length: x.length, width: dim)
        let ks = try Tokens(n: ctx.n, length: ctx.length, width: dim)
        let vs = try Tokens(n: ctx.n, length: ctx.length, width: dim)
        try q.apply(x.data, rows: x.rows, into: qs.data, threads: threads)
        try k.apply(ctx.data, rows: ctx.rows, into: ks.data, threads: threads)
        try v.apply(ctx.data, rows: ctx.rows, into: vs.data, threads: threads)
        let a = try Tokens(n: x.n, length: x.length, width: dim)
        try attention(q: qs.data, ldq: dim, k: ks.data, ldk: dim, v: vs.data, ldv: dim, out: a.data, ldo: dim,
                  batch: x.n, queries: x.length, keys: ctx.length, heads: heads, headDim: headDim, causal: causal,
                  precision: q.weight.file.precision, threads: threads)
        let y = try Tokens(n: x.n, length: x.length, width: out.outFeatures)
        try out.apply(a.data, rows: a.rows, into: y.data, threads: threads)
        return y
    }
}

/// diffusers `BasicTransformerBlock` (layer_norm type): x += attn1(norm1(x)); x += attn2(norm2(x),
/// context); x += ff(norm3(x)) with a GEGLU feed-forward (inner width 4 · dim).
struct BasicTransformerBlock {
    let norm1: LayerNorm, attn1: MultiHeadAttention
    let norm2: LayerNorm, attn2: MultiHeadAttention
    let norm3: LayerNorm, ffIn: Linear, ffOut: Linear

    init(_ w: WeightLoader, _ p: String, dim: Int, contextDim: Int, heads: Int) throws {
        norm1 = try w.layerNorm("\(p).norm1", channels: dim, eps: 1e-5)
        attn1 = try MultiHeadAttention(w, "\(p).attn1", dim: dim, contextDim: dim, heads: heads, projectionBias: false)
        norm2 = try w.layerNorm("\(p).norm2", channels: dim, eps: 1e-5)
        attn2 = try MultiHeadAttention(w, "\(p).attn2", dim: dim, contextDim: contextDim, heads: heads, projectionBias: false)
        norm3 = try w.layerNorm("\(p).norm3", channels: dim, eps: 1e-5)
        ffIn = try w.linear("\(p).ff.net.0.proj", inFeatures: dim, outFeatures: 8 * dim)
        ffOut = try w.linear("\(p).ff.net.2", inFeatures: 4 * dim, outFeatures: dim)
    }

    /// Updates `x` [n, L, dim] in place.
    func callAsFunction(_ x: Tokens, context: Tokens, threads: Int) throws {
        let a = try attn1(try norm1(x, threads: threads), context: nil, threads: threads)
        addInPlace(x.data, a.data, count: x.count)
        let c = try attn2(try norm2(x, threads: threads), context: context, threads: threads)
        addInPlace(x.data, c.data, count: x.count)
        let h = try norm3(x, threads: threads)
        let inner = ffOut.inFeatures
        let projected = try Tokens(n: x.n, length: x.length, width: 2 * inner)
        try ffIn.apply(h.data, rows: h.rows, into: projected.data, threads: threads)
        let gated = try Tokens(n: x.n, length: x.length, width: inner)
        geglu(projected.data, rows: x.rows, width: inner, into: gated.data, threads: threads)
        let y = try Tokens(n: x.n, length: x.length, width: x.width)
        try ffOut.apply(gated.data, rows: gated.rows, into: y.data, threads: threads)
        addInPlace(x.data, y.data, count: x.count)
    }
}

/// diffusers `Transformer2DModel` for continuous inputs: GroupNorm (eps 1e-6), proj_in (1x1 conv,
/// or linear with use_linear_projection), transformer blocks over the h·w tokens, proj_out, residual.
struct SpatialTransformer {
    let norm: GroupNorm
    let projIn: Linear, projOut: Linear
    let blocks: [BasicTransformerBlock]

    init(_ w: WeightLoader, _ p: String, channels: Int, heads: Int, layers: Int, contextDim: Int, groups: Int,
         linearProjection: Bool) throws {
        norm = try w.groupNorm("\(p).norm", groups: groups, channels: channels, eps: 1e-6)
        projIn = try w.linearOrPointwise("\(p).proj_in", inFeatures: channels, outFeatures: channels, pointwise: !linearProjection)
        blocks = try (0..<layers).map {
            try BasicTransformerBlock(w, "\(p).transformer_blocks.\($0)", dim: channels, contextDim: contextDim, heads: heads)
        }
        projOut = try w.linearOrPointwise("\(p).proj_out", inFeatures: channels, outFeatures: channels, pointwise: !linearProjection)
    }

    func callAsFunction(_ x: Tensor, context: Tokens, threads: Int) throws -> Tensor {
        let normed = try tokens(from: try norm(x, threads: threads), threads: threads)
        let h = try Tokens(n: x.n, length: x.hw, width: projIn.outFeatures)
        try projIn.apply(normed.data, rows: normed.rows, into: h.data, threads: threads)
        for block in blocks { try block(h, context: context, threads: threads) }
        let y = try Tokens(n: x.n, length: x.hw, width: projOut.outFeatures)
        try projOut.apply(h.data, rows: h.rows, into: y.data, threads: threads)
        return try nchw(from: y, h: x.h, w: x.w, adding: x, threads: threads)
    }
}
