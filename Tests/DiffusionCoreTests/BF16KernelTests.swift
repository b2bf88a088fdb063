import CDiffusion
import Testing
@testable import DiffusionCore

// The bf16 mode's micro-kernel: the vdpbf16ps kernel and its emulation give the same bits (tiny
// and denormal values included, where the instruction reads inputs as zero and flushes results),
// and the emulation computes what the instruction's definition says, checked here by a float64-free
// Swift oracle on normal values: per lane, acc = fma(odd, odd, acc), then fma(even, even, acc).

private struct Bits {
    var state: UInt64
    mutating func next() -> UInt32 {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return UInt32(truncatingIfNeeded: state >> 32)
    }
    /// A bf16 with a random sign and mantissa; exponent near 1 (`tiny`: also 0 and tiny ones).
    mutating func bf16(tiny: Bool) -> UInt32 {
        let e = tiny && next() % 4 == 0 ? (next() % 3 == 0 ? 0 : next() % 30) : 117 + next() % 20
        return (next() & 0x8000) | (e << 7) | (next() & 0x7F)
    }
    mutating func pair(tiny: Bool) -> UInt32 { bf16(tiny: tiny) | bf16(tiny: tiny) << 16 }
    mutating func float(tiny: Bool) -> Float {
        let e = tiny && next() % 3 == 0 ? next() % 40 : 110 + next() % 30
        return Float(bitPattern: (next() & 0x8000_0000) | (e << 23) | (next() & 0x7F_FFFF))
    }
}

private struct TileCase: Sendable, CustomStringConvertible {
    var pairs: Int, wide: Bool, overwrite: Bool, tiny: Bool
    var description: String { "kc2 \(pairs) \(wide ? "6x32" : "6x16")\(overwrite ? " overwrite" : "")\(tiny ? " tiny" : "")" }
}

private let tileCases = [
    TileCase(pairs: 1, wide: false, overwrite: true, tiny: false),
    TileCase(pairs: 37, wide: true, overwrite: false, tiny: false),
    TileCase(pairs: 128, wide: true, overwrite: true, tiny: false),
    TileCase(pairs: 200, wide: false, overwrite: false, tiny: true),
    TileCase(pairs: 64, wide: true, overwrite: false, tiny: true),
]

@Test(arguments: tileCases)
private func bf16TileMatchesDefinition(_ t: TileCase) {
    var bits = Bits(state: UInt64(t.pairs * 31 + (t.wide ? 1 : 0) + (t.tiny ? 7 : 0)))
    let a = (0..<(6 * t.pairs)).map { _ in bits.pair(tiny: t.tiny) }
    let b = (0..<(32 * t.pairs)).map { _ in bits.pair(tiny: t.tiny) }
    let ldc = 40  // wider than the tile: the stride is honoured
    let c = (0..<(6 * ldc)).map { _ in bits.float(tiny: t.tiny) }
    func run(_ kernel: (Int, UnsafePointer<UInt32>, UnsafePointer<UInt32>, UnsafePointer<UInt32>?, UnsafeMutablePointer<Float>,
                        UnsafeMutablePointer<Float>?, Int, Int32) -> Void) -> [Float] {
        var out = c
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                out.withUnsafeMutableBufferPointer { cp in
                    // b1 is the second 16 columns; its C block starts 20 floats in (not adjacent).
                    kernel(t.pairs, ap.baseAddress!, bp.baseAddress!, t.wide ? bp.baseAddress! + 16 * t.pairs : nil,
                           cp.baseAddress!, t.wide ? cp.baseAddress! + 20 : nil, ldc, t.overwrite ? 1 : 0)
                }
            }
        }
        return out
    }
    let emulated = run { cdiffusion_bf16_tile_emulated($0, $1, 0, $2, $3, $4, $5, $6, $7) }
    if cdiffusion_bf16_cpu_has_instructions() != 0 {
        var ran: Int32 = 0
        let native = run { ran = cdiffusion_bf16_tile_native($0, $1, 0, $2, $3, $4, $5, $6, $7) }
        #expect(ran == 1)
        #expect(native.map(\.bitPattern) == emulated.map(\.bitPattern), "\(t): vdpbf16ps and the emulation differ")
    } else {
        print("bf16TileMatchesDefinition: this CPU has no AVX512-BF16; the native kernel is not compared (\(t))")
    }
    let dispatched = run { cdiffusion_bf16_tile($0, $1, $2, $3, $4, $5, $6, $7) }
    #expect(dispatched.map(\.bitPattern) == emulated.map(\.bitPattern))
    // A as 6 rows in place (a linear layer's rounded input): the same bits as the packed panel.
    let lda = t.pairs + 3
    var rowsA = [UInt32](repeating: 0xFFFF_FFFF, count: 6 * lda)
    for p in 0..<t.pairs { for r in 0..<6 { rowsA[r * lda + p] = a[6 * p + r] } }
    func runRows(_ kernel: (Int, UnsafePointer<UInt32>, Int, UnsafePointer<UInt32>, UnsafePointer<UInt32>?,
                            UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>?, Int, Int32) -> Void) -> [Float] {
        var out = c
        rowsA.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                out.withUnsafeMutableBufferPointer { cp in
                    kernel(t.pairs, ap.baseAddress!, lda, bp.baseAddress!, t.wide ? bp.baseAddress! + 16 * t.pairs : nil,
                           cp.baseAddress!, t.wide ? cp.baseAddress! + 20 : nil, ldc, t.overwrite ? 1 : 0)
                }
            }
        }
        return out
    }
    #expect(runRows { cdiffusion_bf16_tile_emulated($0, $1, $2, $3, $4, $5, $6, $7, $8) }.map(\.bitPattern)
            == emulated.map(\.bitPattern), "\(t): rows (emulated) differ from the packed panel")
    #expect(runRows { cdiffusion_bf16_tile_rows($0, $1, $2, $3, $4, $5, $6, $7, $8) }.map(\.bitPattern)
            == emulated.map(\.bitPattern), "\(t): rows (dispatched) differ from the packed panel")
    if cdiffusion_bf16_cpu_has_instructions() != 0 {
        #expect(runRows { _ = cdiffusion_bf16_tile_native($0, $1, $2, $3, $4, $5, $6, $7, $8) }.map(\.bitPattern)
                == emulated.map(\.bitPattern), "\(t): rows (native) differ from the packed panel")
    }
    guard !t.tiny else { return }
    // The definition, on normal values (no denormal arises: exponents stay near 1).
    var want = c
    for r in 0..<6 {
        for j in 0..<(t.wide ? 32 : 16) {
            let (block, lane) = (j / 16, j % 16)
            var acc: Float = 0
            for p in 0..<t.pairs {
                let x = a[6 * p + r], y = b[block * 16 * t.pairs + 16 * p + lane]
                acc = acc.addingProduct(Float(bitPattern: x & 0xFFFF_0000), Float(bitPattern: y & 0xFFFF_0000))
                acc = acc.addingProduct(Float(bitPattern: x << 16), Float(bitPattern: y << 16))
            }
            let at = r * ldc + block * 20 + lane
            want[at] = t.overwrite ? acc : want[at] + acc
        }
    }
    #expect(emulated.map(\.bitPattern) == want.map(\.bitPattern), "\(t): the emulation differs from the definition")
    // Untouched: C outside the tile.
    for r in 0..<6 {
        for j in 0..<ldc where !(j < 16 || (t.wide && j >= 20 && j < 36)) {
            #expect(emulated[r * ldc + j].bitPattern == c[r * ldc + j].bitPattern)
        }
    }
}

/// The conversion: round to nearest even (ties to even both ways), denormals to signed zero,
/// NaN stays NaN, overflow to infinity; and the pair layout, in place, odd depths padded with 0.
@Test func bf16Conversion() {
    func round(_ x: Float) -> UInt16 { cdiffusion_bf16_round(x) }
    #expect(round(1.0) == 0x3F80)
    #expect(round(Float(bitPattern: 0x3F80_8000)) == 0x3F80)  // tie, even below
    #expect(round(Float(bitPattern: 0x3F81_8000)) == 0x3F82)  // tie, even above
    #expect(round(Float(bitPattern: 0x3F80_8001)) == 0x3F81)
    #expect(round(Float(bitPattern: 0x0000_0001)) == 0)
    #expect(round(-Float(bitPattern: 0x007F_FFFF)) == 0x8000)
    #expect(round(.greatestFiniteMagnitude) == 0x7F80)
    #expect(Float(bitPattern: UInt32(round(.nan)) << 16).isNaN)
    #expect(round(-.infinity) == 0xFF80)
    var bits = Bits(state: 5)
    for _ in 0..<10_000 {
        let x = bits.float(tiny: true)
        #expect(UInt32(round(x)) << 16 == bf16Rounded(x).bitPattern, "\(x)")
    }
    // The Swift vector rounding (Winograd's U, attention's P) gives the C conversion's bits, for
    // normal, tiny, zero, infinite and NaN values of both signs.
    var specials: [Float] = [0, -0, .infinity, -.infinity, .nan, -.nan, .greatestFiniteMagnitude, -.leastNonzeroMagnitude,
                             Float(bitPattern: 0x7FA0_0001), Float(bitPattern: 0x3F80_8000), -Float(bitPattern: 0x3F81_8000)]
    for _ in 0..<(16 * 1000) { specials.append(bits.float(tiny: true) * (bits.next() % 2 == 0 ? 1 : -1)) }
    for chunk in stride(from: 0, to: specials.count - 15, by: 16) {
        let v = SIMD16<Float>(specials[chunk..<chunk + 16])
        let got = bf16Round(v)
        for j in 0..<16 { #expect(got[j] == UInt32(round(v[j])), "\(v[j].bitPattern)") }
    }
    // 5 rows of a 3-lane panel, in place.
    let rows = (0..<15).map { Float($0 + 1) }
    var slab = rows
    slab.withUnsafeMutableBufferPointer { p in
        let words = UnsafeMutableRawPointer(p.baseAddress!).assumingMemoryBound(to: UInt32.self)
        cdiffusion_bf16_pairs(p.baseAddress!, 5, 3, words)
    }
    let words = slab.map(\.bitPattern)
    for pair in 0..<3 {
        for lane in 0..<3 {
            let lo = UInt32(round(rows[2 * pair * 3 + lane]))
            let hi = 2 * pair + 1 < 5 ? UInt32(round(rows[(2 * pair + 1) * 3 + lane])) : 0
            #expect(words[pair * 3 + lane] == lo | hi << 16, "pair \(pair) lane \(lane)")
        }
    }
}
