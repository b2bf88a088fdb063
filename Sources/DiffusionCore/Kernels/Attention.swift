/// Multi-head scaled dot-product attention over spatial tokens.
///
/// q, k, v are channel-major [n, heads*d, h, w] (a 1x1 projection of NCHW activations); the result
/// has the same layout: out[:, head*d + i, token] = Σ_j softmax_j(q·k / sqrt(d)) v[:, head*d + i, j].
func spatialAttention(q: Tensor, k: Tensor, v: Tensor, heads: Int, precision: Precision = .exact, threads: Int) throws -> Tensor {
    let tokens = q.hw, d = q.c / heads
    let out = try Tensor(n: q.n, c: q.c, h: q.h, w: q.w)
    try flashAttention(groups: q.n * heads, queries: tokens, keys: tokens, headDim: d, causal: false, precision: precision,
                   threads: threads) { g in
        let offset = g * d * tokens   // (image · c + head · d) · tokens
        return (HeadMatrix(base: UnsafePointer(q.data + offset), tokenStride: 1, featureStride: tokens),
                HeadMatrix(base: UnsafePointer(k.data + offset), tokenStride: 1, featureStride: tokens),
                HeadMatrix(base: UnsafePointer(v.data + offset), tokenStride: 1, featureStride: tokens),
                HeadMatrix(base: out.data + offset, tokenStride: 1, featureStride: tokens))
    }
    return out
}

/// Multi-head scaled dot-product attention over token rows, with keys of any length:
/// out[b, i, h·d + c] = Σ_j softmax_j(scale · q[b, i, h·d ..] · k[b, j, h·d ..]) v[b, j, h·d + c].
/// q, k, v and out are row-major with row strides ldq, ldk, ldv, ldo (so q, k and v may be
/// column ranges of one fused projection). `causal` masks keys after the query (CLIP's text
/// encoder). See `flashAttention`.
func attention(q: UnsafePointer<Float>, ldq: Int, k: UnsafePointer<Float>, ldk: Int, v: UnsafePointer<Float>, ldv: Int,
               out: UnsafeMutablePointer<Float>, ldo: Int, batch: Int, queries: Int, keys: Int, heads: Int, headDim d: Int,
               causal: Bool = false, precision: Precision = .exact, threads: Int) throws {
    try flashAttention(groups: batch * heads, queries: queries, keys: keys, headDim: d, causal: causal, precision: precision,
                   threads: threads) { g in
        let b = g / heads, h = g % heads
        return (HeadMatrix(base: q + b * queries * ldq + h * d, tokenStride: ldq, featureStride: 1),
                HeadMatrix(base: k + b * keys * ldk + h * d, tokenStride: ldk, featureStride: 1),
                HeadMatrix(base: v + b * keys * ldv + h * d, tokenStride: ldv, featureStride: 1),
                HeadMatrix(base: out + b * queries * ldo + h * d, tokenStride: ldo, featureStride: 1))
    }
}
