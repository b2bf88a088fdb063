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
        // scores[i, j] = scale * Σ_c q[c, i0 + i] k[c, j]
        sgemm(transA: true, m: rows, n: tokens, k: d, alpha: scale,
              a: q.data + offset + i0, lda: tokens, b: k.data + offset, ldb: tokens,
              c: scores, ldc: tokens)
        for i in 0..<rows { softmaxInPlace(scores + i * tokens, count: tokens) }
        // out[c, i0 + i] = Σ_j v[c, j] scores[i, j]
        sgemm(transB: true, m: d, n: rows, k: tokens,
              a: v.data + offset, lda: tokens, b: scores, ldb: tokens,
              c: out.data + offset + i0, ldc: tokens)
    }
    return out
}

@inline(__always)
func softmaxInPlace(_ row: UnsafeMutablePointer<Float>, count: Int) {
    var m = -Float.infinity
    for j in 0..<count { m = max(m, row[j]) }
    var sum: Float = 0
    for j in 0..<count {
        let e = expf(row[j] - m)
        row[j] = e
        sum += e
    }
    let inv = 1 / sum
    for j in 0..<count { row[j] *= inv }
}
