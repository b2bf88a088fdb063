#if canImport(Glibc)
import Glibc
#endif

/// Multi-head scaled dot-product attention over spatial tokens.
///
/// q, k, v are channel-major [n, heads*d, h, w] (a 1x1 projection of NCHW activations); the result
/// has the same layout: out[:, head*d + i, token] = Σ_j softmax_j(q·k / sqrt(d)) v[:, head*d + i, j].
func spatialAttention(q: Tensor, k: Tensor, v: Tensor, heads: Int, threads: Int) -> Tensor {
    let tokens = q.hw
    let d = q.c / heads
    let out = Tensor(n: q.n, c: q.c, h: q.h, w: q.w)
    let scale = 1 / Float(d).squareRoot()
    // Jobs are (image, head, block of query rows): fixed blocks, so any thread count gives the
    // same bytes.
    let rowBlock = 128
    let blocks = (tokens + rowBlock - 1) / rowBlock
    parallelFor(q.n * heads * blocks, threads: threads) { job in
        let offset = (job / blocks) * d * tokens   // (img * c + head * d) * tokens
        let i0 = (job % blocks) * rowBlock, rows = min(rowBlock, tokens - i0)
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: rows * tokens)
        defer { scores.deallocate() }
        // scores[i, j] = Σ_c q[c, i0 + i] k[c, j] (the scale goes into the softmax)
        gemm(m: rows, n: tokens, k: d, a: StridedSource(q.data + offset + i0, strideK: tokens, strideL: 1),
             b: StridedSource(k.data + offset, strideK: tokens, strideL: 1),
             out: GEMMOutput(c: scores, ldc: tokens, n: tokens), threads: 1)
        for i in 0..<rows { softmaxInPlace(scores + i * tokens, count: tokens, scale: scale) }
        // out[c, i0 + i] = Σ_j v[c, j] scores[i, j]
        gemm(m: d, n: rows, k: tokens, a: StridedSource(v.data + offset, strideK: 1, strideL: tokens),
             b: StridedSource(UnsafePointer(scores), strideK: 1, strideL: tokens),
             out: GEMMOutput(c: out.data + offset + i0, ldc: tokens, n: rows), threads: 1)
    }
    return out
}

/// row = softmax(scale · row) over `count` values (scale > 0), in float32: max, exp(scale · (x − max))
/// with exp16 (~1 ulp), sum, normalise. -inf entries (masked keys) give 0.
@inline(__always)
func softmaxInPlace(_ row: UnsafeMutablePointer<Float>, count: Int, scale: Float = 1) {
    let raw = UnsafeMutableRawPointer(row)
    var m16 = SIMD16<Float>(repeating: -.infinity)
    var j = 0
    while j + 16 <= count {
        // compare + blend: pointwiseMax goes lane by lane (NaN-aware)
        let v = raw.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self)
        m16.replace(with: v, where: v .> m16)
        j += 16
    }
    var m = m16.max()
    while j < count { m = max(m, row[j]); j += 1 }
    var s16 = SIMD16<Float>(repeating: 0)
    j = 0
    while j + 16 <= count {
        let e = exp16((raw.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self) - m) * scale)
        raw.storeBytes(of: e, toByteOffset: 4 * j, as: SIMD16<Float>.self)
        s16 += e
        j += 16
    }
    var sum = s16.sum()
    while j < count { let e = expf((row[j] - m) * scale); row[j] = e; sum += e; j += 1 }
    let inv = 1 / sum
    j = 0
    while j + 16 <= count {
        raw.storeBytes(of: raw.loadUnaligned(fromByteOffset: 4 * j, as: SIMD16<Float>.self) * inv, toByteOffset: 4 * j, as: SIMD16<Float>.self)
        j += 16
    }
    while j < count { row[j] *= inv; j += 1 }
}

/// Multi-head scaled dot-product attention over token rows, with keys of any length:
/// out[b, i, h·d + c] = Σ_j softmax_j(scale · q[b, i, h·d ..] · k[b, j, h·d ..]) v[b, j, h·d + c].
/// q, k, v and out are row-major with row strides ldq, ldk, ldv, ldo (so q, k and v may be
/// column ranges of one fused projection). `causal` masks keys after the query (CLIP's text
/// encoder). Work is split into (image, head, block of queries) jobs of fixed size, each with its
/// own scores [block, keys], so memory stays bounded and any thread count gives the same bytes.
func attention(q: UnsafePointer<Float>, ldq: Int, k: UnsafePointer<Float>, ldk: Int, v: UnsafePointer<Float>, ldv: Int,
               out: UnsafeMutablePointer<Float>, ldo: Int, batch: Int, queries: Int, keys: Int, heads: Int, headDim d: Int,
               causal: Bool = false, threads: Int) {
    let scale = 1 / Float(d).squareRoot()
    let rowBlock = 256
    let blocks = (queries + rowBlock - 1) / rowBlock
    parallelFor(batch * heads * blocks, threads: threads) { job in
        let b = job / (heads * blocks), h = (job / blocks) % heads
        let i0 = (job % blocks) * rowBlock, rows = min(rowBlock, queries - i0)
        let scores = FloatBuffer(count: rows * keys)
        let s = scores.pointer
        let qh = q + (b * queries + i0) * ldq + h * d
        let kh = k + b * keys * ldk + h * d
        let vh = v + b * keys * ldv + h * d
        // scores[i, j] = q_i · k_j (the scale goes into the softmax)
        gemm(m: rows, n: keys, k: d, a: StridedSource(qh, strideK: 1, strideL: ldq),
             b: StridedSource(kh, strideK: 1, strideL: ldk), out: GEMMOutput(c: s, ldc: keys, n: keys), threads: 1)
        for i in 0..<rows {
            let row = s + i * keys
            if causal, i0 + i + 1 < keys { (row + i0 + i + 1).update(repeating: -.infinity, count: keys - i0 - i - 1) }
            softmaxInPlace(row, count: keys, scale: scale)
        }
        // out_i = Σ_j scores[i, j] v_j
        gemm(m: rows, n: d, k: keys, a: StridedSource(UnsafePointer(s), strideK: 1, strideL: keys),
             b: StridedSource(vh, strideK: ldv, strideL: 1),
             out: GEMMOutput(c: out + (b * queries + i0) * ldo + h * d, ldc: ldo, n: d), threads: 1)
        withExtendedLifetime(scores) {}
    }
}
