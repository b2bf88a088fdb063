/// exp over 16 lanes: x = n ln2 + r with |r| <= ln2/2, exp(r) by a degree-6 polynomial
/// (Cephes expf coefficients, ~1 ulp), then scaled by 2^n through the exponent bits.
@inline(__always)
func exp16(_ x: SIMD16<Float>) -> SIMD16<Float> {
    // Clamp with compares and blends: SIMD's clamped(lowerBound:upperBound:) goes lane by lane
    // (NaN-aware min/max), which made this the hottest loop of small-image networks.
    var x = x
    x.replace(with: -87.3, where: x .< -87.3)
    x.replace(with: 88.3, where: x .> 88.3)
    // Adding 1.5 * 2^23 rounds x log2(e) to an integer held in the low mantissa bits.
    let magic: Float = 12_582_912
    let shifted = x * 1.442_695_04 + magic
    let n = shifted - magic
    // r = x - n ln2, with ln2 split in two so the product is exact enough
    var r = x - n * 0.693_359_375
    r = r + n * 2.121_944_40e-4
    var p = SIMD16<Float>(repeating: 1.987_569_15e-4)
    p = p * r + 1.398_199_95e-3
    p = p * r + 8.333_451_90e-3
    p = p * r + 4.166_579_59e-2
    p = p * r + 1.666_666_55e-1
    p = p * r + 5.000_000_12e-1
    let e = p * (r * r) + r + 1
    // 2^n: n + 127 into the exponent field
    let bits = (unsafeBitCast(shifted, to: SIMD16<UInt32>.self) &- magic.bitPattern &+ 127) &<< 23
    return e * unsafeBitCast(bits, to: SIMD16<Float>.self)
}

/// silu(x) = x / (1 + exp(-x)) over 16 lanes.
@inline(__always)
func silu16(_ x: SIMD16<Float>) -> SIMD16<Float> { x / (1 + exp16(-x)) }

/// y[i] = silu(a[i] * scale + shift) for i < count (y may alias a).
@inline(__always)
func scaleShiftSiLU(_ a: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int,
                    scale: Float, shift: Float, silu: Bool) {
    var i = 0
    let ra = UnsafeRawPointer(a), ry = UnsafeMutableRawPointer(y)
    while i + 16 <= count {
        var v = ra.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self) * scale + shift
        if silu { v = silu16(v) }
        ry.storeBytes(of: v, toByteOffset: i * 4, as: SIMD16<Float>.self)
        i += 16
    }
    while i < count {
        let v = a[i] * scale + shift
        y[i] = silu ? siluScalar(v) : v
        i += 1
    }
}

/// Σ a[i] and Σ (a[i] - mean)^2 in float, 16 lanes, then lanes summed.
@inline(__always)
func sum(_ a: UnsafePointer<Float>, count: Int) -> Float {
    var acc = SIMD16<Float>(repeating: 0)
    var i = 0
    let ra = UnsafeRawPointer(a)
    while i + 16 <= count { acc += ra.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self); i += 16 }
    var s = acc.sum()
    while i < count { s += a[i]; i += 1 }
    return s
}

@inline(__always)
func sumSquaredDeviations(_ a: UnsafePointer<Float>, count: Int, mean: Float) -> Float {
    var acc = SIMD16<Float>(repeating: 0)
    var i = 0
    let ra = UnsafeRawPointer(a)
    while i + 16 <= count {
        let d = ra.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self) - mean
        acc += d * d
        i += 16
    }
    var s = acc.sum()
    while i < count { let d = a[i] - mean; s += d * d; i += 1 }
    return s
}
