#if canImport(Glibc)
import Glibc
#endif

/// erf over 16 lanes: Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), odd symmetry.
@inline(__always)
func erf16(_ x: SIMD16<Float>) -> SIMD16<Float> {
    let a = unsafeBitCast(unsafeBitCast(x, to: SIMD16<UInt32>.self) & 0x7FFF_FFFF, to: SIMD16<Float>.self)
    let t = 1 / (1 + 0.327_591_1 * a)
    var p = SIMD16<Float>(repeating: 1.061_405_429)
    p = p * t - 1.453_152_027
    p = p * t + 1.421_413_741
    p = p * t - 0.284_496_736
    p = p * t + 0.254_829_592
    let y = 1 - p * t * exp16(-a * a)
    var r = y
    r.replace(with: -y, where: x .< 0)
    return r
}

/// torch's exact GELU: x/2 · (1 + erf(x / √2)).
@inline(__always)
func gelu16(_ x: SIMD16<Float>) -> SIMD16<Float> { 0.5 * x * (1 + erf16(x * 0.707_106_781_186_547_6)) }

/// CLIP's quick_gelu: x · sigmoid(1.702 x).
@inline(__always)
func quickGelu16(_ x: SIMD16<Float>) -> SIMD16<Float> { x / (1 + exp16(-1.702 * x)) }

public enum Activation: String, Sendable {
    case gelu, quickGelu = "quick_gelu", silu

    @inline(__always)
    func apply16(_ x: SIMD16<Float>) -> SIMD16<Float> {
        switch self {
        case .gelu: return gelu16(x)
        case .quickGelu: return quickGelu16(x)
        case .silu: return silu16(x)
        }
    }

    /// In place over `count` values.
    func apply(_ x: UnsafeMutablePointer<Float>, count: Int, threads: Int) {
        let block = 1 << 14
        parallelFor((count + block - 1) / block, threads: threads) { job in
            let start = job * block, end = min(count, start + block)
            var i = start
            let raw = UnsafeMutableRawPointer(x)
            while i + 16 <= end {
                raw.storeBytes(of: apply16(raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)),
                               toByteOffset: 4 * i, as: SIMD16<Float>.self)
                i += 16
            }
            if i < end {
                var v = SIMD16<Float>(repeating: 0)
                for k in i..<end { v[k - i] = x[k] }
                v = apply16(v)
                for k in i..<end { x[k] = v[k - i] }
            }
        }
    }
}

/// GEGLU's gate: for each row of [hidden | gate] (2·width values), out = hidden · gelu(gate).
func geglu(_ x: UnsafePointer<Float>, rows: Int, width: Int, into out: UnsafeMutablePointer<Float>, threads: Int) {
    parallelFor(rows, threads: threads) { r in
        let h = x + r * 2 * width, g = h + width, o = out + r * width
        var i = 0
        let rh = UnsafeRawPointer(h), rg = UnsafeRawPointer(g), ro = UnsafeMutableRawPointer(o)
        while i + 16 <= width {
            let v = rh.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self)
                * gelu16(rg.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self))
            ro.storeBytes(of: v, toByteOffset: 4 * i, as: SIMD16<Float>.self)
            i += 16
        }
        if i < width {
            var hv = SIMD16<Float>(repeating: 0), gv = SIMD16<Float>(repeating: 0)
            for k in i..<width { hv[k - i] = h[k]; gv[k - i] = g[k] }
            let v = hv * gelu16(gv)
            for k in i..<width { o[k] = v[k - i] }
        }
    }
}

/// NCHW → tokens [n, h·w, c].
func tokens(from x: Tensor, threads: Int) throws -> Tokens {
    let y = try Tokens(n: x.n, length: x.hw, width: x.c)
    let hw = x.hw, c = x.c
    parallelFor(x.n * c, threads: threads) { job in
        let img = job / c, ch = job % c
        let src = x.data + job * hw, dst = y.data + img * hw * c + ch
        for p in 0..<hw { dst[p * c] = src[p] }
    }
    return y
}

/// tokens [n, h·w, c] → NCHW, adding `residual` (NCHW of the same shape) when given.
func nchw(from t: Tokens, h: Int, w: Int, adding residual: Tensor?, threads: Int) throws -> Tensor {
    let y = try Tensor(n: t.n, c: t.width, h: h, w: w)
    let hw = h * w, c = t.width
    parallelFor(t.n * c, threads: threads) { job in
        let img = job / c, ch = job % c
        let src = t.data + img * hw * c + ch, dst = y.data + job * hw
        if let r = residual?.data {
            for p in 0..<hw { dst[p] = src[p * c] + r[job * hw + p] }
        } else {
            for p in 0..<hw { dst[p] = src[p * c] }
        }
    }
    return y
}

/// In place: a += b over `count` values.
func addInPlace(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, count: Int) {
    for i in 0..<count { a[i] += b[i] }
}
