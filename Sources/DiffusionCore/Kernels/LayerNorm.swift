/// torch.nn.LayerNorm over the last dimension (elementwise affine), for token activations.
public struct LayerNorm {
    public let channels: Int
    public let eps: Float
    public let gamma: [Float], beta: [Float]

    /// y[r, :] = (x[r, :] − mean) / sqrt(var + eps) · gamma + beta for `rows` rows of `channels`
    /// (biased variance, two passes, as torch). y may alias x.
    public func apply(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>, threads: Int) {
        let c = channels, eps = eps
        gamma.withUnsafeBufferPointer { gp in
            beta.withUnsafeBufferPointer { bp in
                let g = gp.baseAddress!, b = bp.baseAddress!
                let block = 64
                parallelFor((rows + block - 1) / block, threads: threads) { job in
                    for r in (job * block)..<min(rows, (job + 1) * block) {
                        let src = x + r * c, dst = y + r * c
                        let mean = sum(src, count: c) / Float(c)
                        let rstd = 1 / (sumSquaredDeviations(src, count: c, mean: mean) / Float(c) + eps).squareRoot()
                        for i in 0..<c { dst[i] = (src[i] - mean) * rstd * g[i] + b[i] }
                    }
                }
            }
        }
    }

    /// A new token tensor holding the normalised `x`.
    public func callAsFunction(_ x: Tokens, threads: Int) throws -> Tokens {
        let y = try Tokens(n: x.n, length: x.length, width: x.width)
        apply(x.data, rows: x.n * x.length, into: y.data, threads: threads)
        return y
    }
}
