#if canImport(Glibc)
import Glibc
#endif

/// diffusers' `get_timestep_embedding`: [n, dim] sinusoids of the timesteps, in float32 like
/// diffusers (exponent = −ln(10000) · j / (half − freq_shift)).
func sinusoidalEmbedding(_ t: [Float], dim: Int, flipSinToCos: Bool, freqShift: Int) -> [Float] {
    let half = dim / 2
    var out = [Float](repeating: 0, count: t.count * dim)
    let logMax = Float(-log(10000.0))
    let denom = Float(half) - Float(freqShift)
    for (i, ti) in t.enumerated() {
        for j in 0..<half {
            let freq = expf(logMax * Float(j) / denom)
            let arg = ti * freq
            let (s, c) = (sinf(arg), cosf(arg))
            out[i * dim + j] = flipSinToCos ? c : s
            out[i * dim + half + j] = flipSinToCos ? s : c
        }
    }
    return out
}

/// diffusers `TimestepEmbedding`: linear_2(silu(linear_1(x))), on a few rows.
struct TimestepMLP {
    let linear1: Linear, linear2: Linear

    init(_ w: WeightLoader, _ prefix: String, inFeatures: Int, outFeatures: Int) throws {
        linear1 = try w.linear("\(prefix).linear_1", inFeatures: inFeatures, outFeatures: outFeatures)
        linear2 = try w.linear("\(prefix).linear_2", inFeatures: outFeatures, outFeatures: outFeatures)
    }

    func callAsFunction(_ x: [Float], rows: Int) throws -> [Float] {
        var h = try x.withUnsafeBufferPointer { try linear1($0.baseAddress!, rows: rows) }
        for j in h.indices { h[j] = siluScalar(h[j]) }
        return try h.withUnsafeBufferPointer { try linear2($0.baseAddress!, rows: rows) }
    }
}
