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
    let scores = UnsafeMutablePointer<Float>.allocate(capacity: tokens * tokens)
    defer { scores.deallocate() }
    blasThreads(threads)
    for job in 0..<(q.n * heads) {
        let offset = job * d * tokens   // image-major, then head: (img * c + head * d) * tokens
        // scores[i, j] = scale * Σ_c q[c, i] k[c, j]
        sgemm(transA: true, m: tokens, n: tokens, k: d, alpha: scale,
              a: q.data + offset, lda: tokens, b: k.data + offset, ldb: tokens,
              c: scores, ldc: tokens)
        let rowsPerTask = 16
        parallelFor((tokens + rowsPerTask - 1) / rowsPerTask, threads: threads) { chunk in
            for i in (chunk * rowsPerTask)..<min(tokens, (chunk + 1) * rowsPerTask) {
                softmaxInPlace(scores + i * tokens, count: tokens)
            }
        }
        // out[c, i] = Σ_j v[c, j] scores[i, j]
        sgemm(transB: true, m: d, n: tokens, k: tokens,
              a: v.data + offset, lda: tokens, b: scores, ldb: tokens,
              c: out.data + offset, ldc: tokens)
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
