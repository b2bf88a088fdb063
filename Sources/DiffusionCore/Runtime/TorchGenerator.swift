#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A port of PyTorch's CPU generator (`at::CPUGeneratorImpl`, mt19937) and of the CPU
/// `normal_` kernel, so that
///
///     var g = TorchGenerator(seed: s)
///     g.normal(count: n)
///
/// gives the same float32 values as `torch.randn(n, generator=torch.Generator().manual_seed(s))`,
/// and consecutive calls on one generator continue the way consecutive `torch.randn` calls do.
///
/// What torch does (ATen 2.x, `native/cpu/DistributionTemplates.h`, `core/DistributionsHelper.h`):
///
/// * Engine: mt19937 seeded with the low 32 bits of the 64-bit seed (`init_genrand`).
///   `random()` is one tempered 32-bit output, `random64()` is `(first << 32) | second`.
/// * `n < 16` (the TensorIterator path): every element is `at::normal_distribution<double>`,
///   cast to float. It draws `u1, u2` as `(random64() & (2^53-1)) * 2^-53`, then
///   `r = sqrt(-2 * log1p(-u2))`, `theta = 2*pi*u1`, returns `r*cos(theta)` and caches
///   `r*sin(theta)` in the generator (`next_double_normal_sample`). The next scalar-path
///   element, in this call or a later one, consumes the cache instead of drawing. Only
///   `manual_seed` clears it; the `n >= 16` path neither uses nor clears it.
/// * `n >= 16` (`normal_fill`): fill all `n` values with float uniforms
///   `(random() & 0xFFFFFF) * 2^-24`; transform every full block of 16 in place (lanes `j` and
///   `j+8` form a Box-Muller pair: `u1 = 1 - d[j]`, `u2 = d[j+8]`, `d[j] = r*cos`,
///   `d[j+8] = r*sin`); if `n % 16 != 0`, draw 16 fresh uniforms into the last 16 slots
///   (overwriting finished values) and transform them. So `n + 16` draws when `n % 16 != 0`.
/// * The block transform depends on the CPU build torch dispatches to:
///   - x86 with AVX2 or AVX512 (`normal_stub` has no AVX512 variant, so AVX512 machines run
///     the AVX2 kernel): float32 Cephes `log256_ps`/`sincos256_ps` from `avx_mathfun.h`,
///     compiled by GCC with mul+add contracted into FMAs. `.avx2` replays that instruction
///     sequence lane by lane, FMAs included (checked against the disassembly of
///     libtorch_cpu.so 2.15 and, bitwise, against its outputs).
///   - the DEFAULT build (x86 without AVX2): scalar float `logf`, `cosf`, `sinf`, `sqrtf`,
///     `theta = float(2*pi (double) * u2)`. `.scalarFloat` does the same with this
///     platform's libm, so it is bitwise only where the libm is the one torch used (glibc).
///     (ARM builds take this scalar template too, but with their own libm.)
public struct TorchGenerator: Sendable {
    /// Which torch `normal_fill` block transform to reproduce for fills of 16 or more.
    public enum NormalKernel: Sendable {
        /// The x86 AVX2 kernel (what torch runs on any AVX2 or AVX512 x86 CPU). Default.
        case avx2
        /// The scalar float kernel of torch's DEFAULT (no AVX2) build, using libm.
        case scalarFloat
    }

    /// The seed last given to `init` or `manualSeed` (torch's `initial_seed()`).
    public private(set) var initialSeed: UInt64
    public var kernel: NormalKernel

    private var engine: MT19937
    /// torch's `next_double_normal_sample`: the cached second value of the scalar path.
    private var nextDoubleNormal: Double?

    public init(seed: UInt64, kernel: NormalKernel = .avx2) {
        initialSeed = seed
        self.kernel = kernel
        engine = MT19937(seed: seed)
        nextDoubleNormal = nil
    }

    /// `Generator.manual_seed(seed)`: reseeds the engine and drops the cached normal.
    /// (Python's negative seeds map to their two's-complement UInt64.)
    public mutating func manualSeed(_ seed: UInt64) {
        initialSeed = seed
        engine = MT19937(seed: seed)
        nextDoubleNormal = nil
    }

    /// torch `CPUGeneratorImpl::random()`: one 32-bit mt19937 output.
    public mutating func random() -> UInt32 {
        engine.next()
    }

    /// torch `CPUGeneratorImpl::random64()`: two outputs, the first one in the high half.
    public mutating func random64() -> UInt64 {
        let hi = UInt64(engine.next())
        let lo = UInt64(engine.next())
        return hi << 32 | lo
    }

    /// Fills `out` exactly as `torch.randn(out.count)` (float32, CPU) would, advancing the state.
    public mutating func fillNormal(_ out: UnsafeMutableBufferPointer<Float>) {
        guard let base = out.baseAddress else { return }
        let n = out.count
        if n < 16 {
            for i in 0..<n { base[i] = Float(nextScalarNormal()) }
            return
        }
        engine.fillUniform24(base, count: n)
        var i = 0
        while i + 16 <= n {
            transform16(base + i)
            i += 16
        }
        if n % 16 != 0 {
            engine.fillUniform24(base + (n - 16), count: 16)
            transform16(base + (n - 16))
        }
    }

    /// `torch.randn(count)` as an array.
    public mutating func normal(count: Int) -> [Float] {
        precondition(count >= 0, "count must be non-negative")
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            fillNormal(buffer)
            initialized = count
        }
    }

    // MARK: - Scalar path (n < 16): at::normal_distribution<double>

    private mutating func uniformDouble() -> Double {
        // uniform_real<double>: 53 low bits of random64(), times 2^-53.
        Double(random64() & ((1 << 53) - 1)) * 0x1p-53
    }

    private mutating func nextScalarNormal() -> Double {
        if let cached = nextDoubleNormal {
            nextDoubleNormal = nil
            return cached * 1.0 + 0.0  // transformation::normal(x, mean: 0, std: 1)
        }
        let u1 = uniformDouble()
        let u2 = uniformDouble()
        let r = (-2.0 * log1p(-u2)).squareRoot()
        let theta = 2.0 * Double.pi * u1
        nextDoubleNormal = r * sin(theta)
        return r * cos(theta) * 1.0 + 0.0
    }

    // MARK: - Vector path (n >= 16): NormalFill16

    @inline(__always)
    private func transform16(_ d: UnsafeMutablePointer<Float>) {
        switch kernel {
        case .avx2:
            for j in 0..<8 {
                let (c, s) = AVX2BoxMuller.pair(oneMinusU1: d[j], u2: d[j + 8])
                d[j] = c
                d[j + 8] = s
            }
        case .scalarFloat:
            for j in 0..<8 {
                let u1 = 1 - d[j]
                let u2 = d[j + 8]
                let radius = (-2 * logf(u1)).squareRoot()
                let theta = Float(2.0 * Double.pi * Double(u2))
                // std::fma(radius * cos(theta), std = 1, mean = 0)
                d[j] = radius * cosf(theta) + 0
                d[j + 8] = radius * sinf(theta) + 0
            }
        }
    }
}

// MARK: - mt19937 (at::mt19937_engine)

extension TorchGenerator {
    /// torch's `at::mt19937_engine`: standard MT19937 with `init_genrand` seeding.
    struct MT19937: Sendable {
        private static let n = 624
        private static let m = 397
        private static let matrixA: UInt32 = 0x9908_B0DF
        private static let upperMask: UInt32 = 0x8000_0000
        private static let lowerMask: UInt32 = 0x7FFF_FFFF

        private var state: [UInt32]
        /// Index of the next word to temper; `n` means the state must be regenerated first.
        private var index: Int

        init(seed: UInt64) {
            var s = [UInt32](repeating: 0, count: MT19937.n)
            s[0] = UInt32(truncatingIfNeeded: seed)
            for j in 1..<MT19937.n {
                let prev = s[j - 1]
                s[j] = 1_812_433_253 &* (prev ^ (prev >> 30)) &+ UInt32(j)
            }
            state = s
            index = MT19937.n
        }

        @inline(__always)
        private static func temper(_ v: UInt32) -> UInt32 {
            var y = v
            y ^= y >> 11
            y ^= (y << 7) & 0x9D2C_5680
            y ^= (y << 15) & 0xEFC6_0000
            y ^= y >> 18
            return y
        }

        private static func twist(_ s: UnsafeMutablePointer<UInt32>) {
            @inline(__always) func mix(_ u: UInt32, _ v: UInt32) -> UInt32 {
                let y = (u & upperMask) | (v & lowerMask)
                return (y >> 1) ^ ((v & 1) == 0 ? 0 : matrixA)
            }
            for k in 0..<(n - m) { s[k] = s[k + m] ^ mix(s[k], s[k + 1]) }
            for k in (n - m)..<(n - 1) { s[k] = s[k + m - n] ^ mix(s[k], s[k + 1]) }
            s[n - 1] = s[m - 1] ^ mix(s[n - 1], s[0])
        }

        mutating func next() -> UInt32 {
            if index >= MT19937.n {
                state.withUnsafeMutableBufferPointer { MT19937.twist($0.baseAddress!) }
                index = 0
            }
            let y = state[index]
            index += 1
            return MT19937.temper(y)
        }

        /// `count` float uniforms in [0, 1) as torch's uniform_real<float> makes them:
        /// `(random() & 0xFFFFFF) * 2^-24`, one engine output each.
        mutating func fillUniform24(_ out: UnsafeMutablePointer<Float>, count: Int) {
            var idx = index
            var written = 0
            state.withUnsafeMutableBufferPointer { buf in
                let s = buf.baseAddress!
                while written < count {
                    if idx >= MT19937.n {
                        MT19937.twist(s)
                        idx = 0
                    }
                    let k = min(count - written, MT19937.n - idx)
                    for i in 0..<k {
                        out[written + i] = Float(MT19937.temper(s[idx + i]) & 0xFF_FFFF) * 0x1p-24
                    }
                    idx += k
                    written += k
                }
            }
            index = idx
        }
    }
}

// MARK: - AVX2 kernel, one lane

extension TorchGenerator {
    /// One lane of torch's AVX2 `NormalFill16<float>`: `log256_ps`, `sqrt`, `sincos256_ps`
    /// from `avx_mathfun.h`, in the operation order GCC emitted for libtorch_cpu (mul+add pairs
    /// contracted into FMAs where it contracted them). Every `fma` here is a real fused op: the
    /// rounding of each step must match, not just the formula. (Evaluating the same polynomials
    /// without fusion differs from torch in ~1% of outputs, by up to 4.8e-7; libm float
    /// log/sin/cos in ~17%, by up to 4.8e-7; double log/sin/cos in ~66%, by up to 1.9e-6.)
    enum AVX2BoxMuller {
        // Constants as float bit patterns (the values `_PS256_CONST` rounds to).
        static let sqrtHF = Float(bitPattern: 0x3F35_04F3)  // 0.707106781186547524
        static let logP0 = Float(bitPattern: 0x3D90_21BB)
        static let logP1 = Float(bitPattern: 0xBDEB_D1B8)
        static let logP2 = Float(bitPattern: 0x3DEF_251A)
        static let logP3 = Float(bitPattern: 0xBDFE_5D4F)
        static let logP4 = Float(bitPattern: 0x3E11_E9BF)
        static let logP5 = Float(bitPattern: 0xBE2A_AE50)
        static let logP6 = Float(bitPattern: 0x3E4C_CEAC)
        static let logP7 = Float(bitPattern: 0xBE7F_FFFC)
        static let logP8 = Float(bitPattern: 0x3EAA_AAAA)
        static let logQ1 = Float(bitPattern: 0xB95E_8083)  // -2.12194440e-4
        static let logQ2 = Float(bitPattern: 0x3F31_8000)  // 0.693359375
        static let twoPi = Float(bitPattern: 0x40C9_0FDB)  // float(2*pi)
        static let fourOverPi = Float(bitPattern: 0x3FA2_F983)
        static let minusDP1 = Float(bitPattern: 0xBF49_0000)  // -0.78515625
        static let minusDP2 = Float(bitPattern: 0xB97D_A000)  // -2.4187564849853515625e-4
        static let minusDP3 = Float(bitPattern: 0xB322_2169)  // -3.77489497744594108e-8
        static let cosP0 = Float(bitPattern: 0x37CC_F5CE)
        static let cosP1 = Float(bitPattern: 0xBAB6_061A)
        static let cosP2 = Float(bitPattern: 0x3D2A_AAA5)
        static let sinP0 = Float(bitPattern: 0xB94C_A1F9)
        static let sinP1 = Float(bitPattern: 0x3C08_839E)
        static let sinP2 = Float(bitPattern: 0xBE2A_AAA3)

        /// Fused multiply-add `a * b + c` with a single rounding, as `vfmadd*ps` computes it.
        ///
        /// `Float.addingProduct` would be exact too, but this module is not built with `-mfma`,
        /// so it becomes a libm `fmaf` call per operation. Instead: the product of two floats is
        /// exact in double, so `s` is the exact result rounded once, to 53 bits, and rounding it on
        /// to float gives the correctly rounded result unless `s` sits exactly halfway between two
        /// floats (the second rounding could then go the wrong way) or outside the normal float
        /// range. Only those cases take the libm call: ~2.6 per million operations over 9M
        /// samples, none of which actually rounded differently, so the fallback is insurance.
        @inline(__always)
        static func fma(_ a: Float, _ b: Float, _ c: Float) -> Float {
            let s = Double(a) * Double(b) + Double(c)
            let bits = s.bitPattern
            if _slowPath(bits & 0x1FFF_FFFF == 0x1000_0000 || bits & 0x7FF0_0000_0000_0000 < 0x3810_0000_0000_0000) {
                return c.addingProduct(a, b)
            }
            return Float(s)
        }

        /// `log256_ps` for one lane. `v` is in [2^-24, 1] here (u1 = 1 - uniform), so the
        /// `x <= 0` NaN mask and the denormal clamp of the original never fire.
        @inline(__always)
        static func log(_ v: Float) -> Float {
            let bits = max(v, Float(bitPattern: 0x0080_0000)).bitPattern
            var e = Float(Int32(bitPattern: bits >> 23) - 0x7F) + 1
            var x = Float(bitPattern: (bits & ~0x7F80_0000) | 0x3F00_0000)  // mantissa in [0.5, 1)
            let tmp: Float
            if x < sqrtHF {
                tmp = x
                e = e - 1
            } else {
                tmp = 0
            }
            x = (x + -1) + tmp
            let z = x * x
            var y = fma(logP0, x, logP1)
            y = fma(y, x, logP2)
            y = fma(y, x, logP3)
            y = fma(y, x, logP4)
            y = fma(y, x, logP5)
            y = fma(y, x, logP6)
            y = fma(y, x, logP7)
            y = fma(y, x, logP8)
            y = x * y
            y = fma(y, z, e * logQ1)
            y = y - z * 0.5  // fused in torch; z * 0.5 is exact, so it rounds once either way
            x = x + y
            return e * logQ2 + x  // fused in torch; |e| <= 126 times a 9-bit constant is exact
        }

        /// One Box-Muller pair: `(r * cos(theta), r * sin(theta))` with `u1 = 1 - oneMinusU1`.
        @inline(__always)
        static func pair(oneMinusU1 d: Float, u2: Float) -> (Float, Float) {
            let radius = (log(1 - d) * -2).squareRoot()

            // sincos256_ps(theta); theta = twoPi * u2 is >= 0, so the sine's input sign is +.
            let theta = twoPi * u2
            let ax = Float(bitPattern: theta.bitPattern & 0x7FFF_FFFF)
            let signIn = theta.bitPattern & 0x8000_0000
            var j = Int32(ax * fourOverPi)  // cvttps2dq (truncation)
            j = (j &+ 1) & ~1
            let yj = Float(j)
            let signSin = signIn ^ (UInt32(bitPattern: j & 4) << 29)
            let signCos = UInt32(bitPattern: ~(j &- 2) & 4) << 29
            let polyIsSinFirst = (j & 2) == 0

            // All three are fused in torch. The first two products are exact in float (yj <= 8
            // is a small integer; DP1 and DP2 have 8 and 12 significant bits), so a plain
            // multiply-add rounds the same way.
            var x = yj * minusDP1 + ax
            x = minusDP2 * yj + x
            x = fma(yj, minusDP3, x)

            let z = x * x
            let halfZ = z * 0.5
            var yc = fma(cosP0, z, cosP1)
            yc = fma(yc, z, cosP2)
            yc = z * yc
            yc = fma(z, yc, -halfZ)
            yc = yc + 1

            var ys = fma(sinP0, z, sinP1)
            ys = fma(ys, z, sinP2)
            ys = z * ys
            ys = fma(x, ys, x)

            // Mask selection exactly as the and/andnot/sub/add sequence does it.
            let ysin2: Float = polyIsSinFirst ? ys : 0
            let ysin1: Float = polyIsSinFirst ? 0 : yc
            let sinV = ysin2 + ysin1
            let cosV = (ys - ysin2) + (yc - ysin1)
            let s = Float(bitPattern: sinV.bitPattern ^ signSin)
            let c = Float(bitPattern: cosV.bitPattern ^ signCos)

            // _mm256_fmadd_ps(n, std = 1, mean = 0) == n + 0 (which turns -0 into +0)
            return (radius * c + 0, radius * s + 0)
        }
    }
}
