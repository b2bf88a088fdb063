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

    public func callAsFunction(_ x: Tensor, silu: Bool = false, threads: Int) throws -> Tensor {
        let y = try Tensor(n: x.n, c: x.c, h: x.h, w: x.w)
        let perGroup = channels / groups
        let hw = x.hw
        let len = perGroup * hw
        let g = gamma.pointer, b = beta.pointer
        parallelFor(x.n * groups, threads: threads) { ng in
            let src = x.data + ng * len
            let dst = y.data + ng * len
            // Two passes: mean, then the biased variance, as torch computes them.
            let mean = sum(src, count: len) / Float(len)
            let variance = sumSquaredDeviations(src, count: len, mean: mean) / Float(len)
            let rstd = 1 / (variance + eps).squareRoot()
            let c0 = (ng % groups) * perGroup
            for cc in 0..<perGroup {
                let scale = g[c0 + cc] * rstd
                let shift = b[c0 + cc] - mean * scale
                scaleShiftSiLU(src + cc * hw, dst + cc * hw, count: hw, scale: scale, shift: shift, silu: silu)
            }
        }
        return y
    }
}

@inline(__always)
func siluScalar(_ v: Float) -> Float { v / (1 + expf(-v)) }
