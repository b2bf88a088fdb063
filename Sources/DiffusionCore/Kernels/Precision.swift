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
