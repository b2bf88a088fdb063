#if canImport(Glibc)
import Glibc
#endif

/// torch.nn.GroupNorm with affine parameters, optionally followed by SiLU.
public struct GroupNorm {
    public let groups: Int
    public let channels: Int
    public let eps: Float
    public let gamma: FloatBuffer
    public let beta: FloatBuffer

    public init(groups: Int, channels: Int, eps: Float, gamma: FloatBuffer, beta: FloatBuffer) {
        self.groups = groups; self.channels = channels; self.eps = eps; self.gamma = gamma; self.beta = beta
    }

    public func callAsFunction(_ x: Tensor, silu: Bool = false, threads: Int) -> Tensor {
        let y = Tensor(n: x.n, c: x.c, h: x.h, w: x.w)
        let perGroup = channels / groups
        let hw = x.hw
        let len = perGroup * hw
        let g = gamma.pointer, b = beta.pointer
        parallelFor(x.n * groups, threads: threads) { ng in
            let src = x.data + ng * len
            let dst = y.data + ng * len
            // Two passes in double: mean, then biased variance (as torch computes it).
            var sum = 0.0
            for i in 0..<len { sum += Double(src[i]) }
            let mean = sum / Double(len)
            var sq = 0.0
            for i in 0..<len { let d = Double(src[i]) - mean; sq += d * d }
            let rstd = Float(1.0 / (sq / Double(len) + Double(eps)).squareRoot())
            let m = Float(mean)
            let c0 = (ng % groups) * perGroup
            for cc in 0..<perGroup {
                let scale = g[c0 + cc] * rstd
                let shift = b[c0 + cc] - m * scale
                let s = src + cc * hw, d = dst + cc * hw
                if silu {
                    for i in 0..<hw { d[i] = siluScalar(s[i] * scale + shift) }
                } else {
                    for i in 0..<hw { d[i] = s[i] * scale + shift }
                }
            }
        }
        return y
    }
}

@inline(__always)
func siluScalar(_ v: Float) -> Float { v / (1 + expf(-v)) }
