import CDiffusion

/// How a model's convolutions and linear layers compute.
public enum Precision: String, Sendable, CaseIterable {
    /// float32 products and sums: every fidelity bar against diffusers (the default).
    case exact = "f32"
    /// The fast mode: weights and activations rounded to bfloat16 (nearest even), their products
    /// summed in float32 by `vdpbf16ps` (bit-exactly emulated on CPUs without AVX512-BF16). Norm
    /// statistics, softmax, attention, activations, the text encoder and the scheduler stay
    /// float32.
    case bf16 = "bf16"

    /// Whether this CPU runs the bf16 mode's instruction (else it is emulated: same bits, slower).
    public static var bf16Native: Bool { cdiffusion_bf16_native() != 0 }
}

/// float32 -> bfloat16 bits (in the low half of each lane) as `cdiffusion_bf16_round` rounds:
/// to nearest even, denormals to signed zero, NaN kept quiet. Branch-free, so it vectorises.
@inline(__always)
func bf16Round(_ v: SIMD16<Float>) -> SIMD16<UInt32> {
    let x = unsafeBitCast(v, to: SIMD16<UInt32>.self)
    let rounded = (x &+ 0x7FFF &+ ((x &>> 16) & 1)) &>> 16
    let magnitude = x & 0x7FFF_FFFF
    // All ones where the exponent is 0 (denormal or zero), where the value is NaN.
    let denormal = SIMD16<UInt32>() &- (((x & 0x7F80_0000) &- 1) &>> 31)
    let nan = SIMD16<UInt32>() &- ((0x7F80_0000 &- magnitude) &>> 31)
    return (rounded & ~(denormal | nan)) | ((x &>> 16) & 0x8000 & denormal) | (((x &>> 16) | 0x40) & nan)
}
