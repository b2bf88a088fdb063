import Foundation
import Testing
@testable import DiffusionCore

// The packed-weight GEMM through its public layers (Conv2d, Linear) against a direct float64
// loop: every im2col path (pointwise, same-size 3 × 3 with border lanes, stride 2, asymmetric
// padding, rows of a panel spanning several output rows, images past one), edge tiles (rows not
// a multiple of 6, columns not of 16), k blocks (k > 384), F32 and F16 weights, any thread count
// giving the same bytes; flash attention (several key blocks, partial panels, d in two k blocks,
// the causal mask) in both layouts.

/// A deterministic stream of values in [-1, 1).
private struct Noise {
    var state: UInt64
    mutating func next() -> Float {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int64(bitPattern: state) >> 40) / Float(1 << 23)
    }
    mutating func values(_ n: Int) -> [Float] { (0..<n).map { _ in next() } }
}

/// float32 -> bfloat16 -> float32, round to nearest even, denormals to zero: written here
/// independently of the library's conversion, as the oracle of the bf16 mode's rounding.
func bf16Rounded(_ x: Float) -> Float {
    let bits = x.bitPattern
    if bits & 0x7F80_0000 == 0 { return Float(bitPattern: bits & 0x8000_0000) }
    let rounded = (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000
    return Float(bitPattern: rounded)
}

/// Writes one tensor (F32 or F16 bytes) to a fresh safetensors file and returns it stored, its
/// layers computing in `precision`.
private func storedTensor(_ values: [Float], shape: [Int], f16: Bool, precision: Precision = .exact) throws -> StoredTensor {
    var data = [UInt8]()
    for v in values {
        if f16 {
            let bits = Float16(v).bitPattern
            data += [UInt8(bits & 0xFF), UInt8(bits >> 8)]
        } else {
            let bits = v.bitPattern
            data += (0..<4).map { UInt8(truncatingIfNeeded: bits >> (8 * $0)) }
        }
    }
    let header = "{\"w\":{\"dtype\":\"\(f16 ? "F16" : "F32")\",\"shape\":\(shape),\"data_offsets\":[0,\(data.count)]}}"
    var bytes = (0..<8).map { UInt8(truncatingIfNeeded: UInt64(header.utf8.count) >> (8 * UInt64($0))) }
    bytes += Array(header.utf8) + data
    let path = NSTemporaryDirectory() + "gemm-test-" + UUID().uuidString + ".safetensors"
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
    defer { try? FileManager.default.removeItem(atPath: path) }
    let file = try SafeTensorsFile(path: path)
    file.precision = precision
    return try file.stored("w", shape: shape)
}

/// max |got − want| / max |want|, NaN when anything is NaN (so `<=` fails on it).
private func relativeError(_ got: [Float], _ want: [Double]) -> Double {
    var diff = 0.0, scale = 0.0
    for (g, w) in zip(got, want) {
        let d = abs(Double(g) - w)
        if d.isNaN || d > diff { diff = d }
        scale = Swift.max(scale, abs(w))
    }
    return got.count == want.count ? diff / scale : .nan
}

struct ConvCase: CustomStringConvertible, Sendable {
    var n: Int, cin: Int, cout: Int, h: Int, w: Int, kernel: Int, stride: Int
    var pads: (Int, Int, Int, Int)  // top, left, bottom, right
    var f16: Bool
    var description: String {
        "n\(n) \(cin)->\(cout) \(h)x\(w) k\(kernel) s\(stride) pad\(pads)\(f16 ? " f16" : "")"
    }
}

private let convCases: [ConvCase] = [
    ConvCase(n: 1, cin: 8, cout: 12, h: 32, w: 32, kernel: 3, stride: 1, pads: (1, 1, 1, 1), f16: false),
    ConvCase(n: 2, cin: 5, cout: 7, h: 8, w: 8, kernel: 3, stride: 1, pads: (1, 1, 1, 1), f16: false),
    ConvCase(n: 3, cin: 64, cout: 13, h: 4, w: 4, kernel: 3, stride: 1, pads: (1, 1, 1, 1), f16: true),
    ConvCase(n: 1, cin: 3, cout: 6, h: 5, w: 7, kernel: 3, stride: 1, pads: (1, 1, 1, 1), f16: false),
    ConvCase(n: 2, cin: 3, cout: 4, h: 1, w: 1, kernel: 3, stride: 1, pads: (1, 1, 1, 1), f16: false),
    ConvCase(n: 2, cin: 48, cout: 17, h: 9, w: 11, kernel: 1, stride: 1, pads: (0, 0, 0, 0), f16: true),
    ConvCase(n: 2, cin: 6, cout: 9, h: 9, w: 10, kernel: 3, stride: 2, pads: (1, 1, 1, 1), f16: false),
    ConvCase(n: 1, cin: 4, cout: 8, h: 8, w: 8, kernel: 3, stride: 2, pads: (0, 0, 1, 1), f16: true),
    ConvCase(n: 1, cin: 2, cout: 3, h: 6, w: 6, kernel: 3, stride: 1, pads: (0, 0, 0, 0), f16: false),
    ConvCase(n: 1, cin: 3, cout: 5, h: 7, w: 20, kernel: 3, stride: 1, pads: (1, 1, 1, 1), f16: false),
    // Winograd shapes (also run through im2col): k blocks (cin > 384) and chunks of tile rows
    // spanning images; one tile row per image; F16.
    ConvCase(n: 2, cin: 400, cout: 13, h: 64, w: 32, kernel: 3, stride: 1, pads: (1, 1, 1, 1), f16: false),
    ConvCase(n: 3, cin: 17, cout: 20, h: 2, w: 64, kernel: 3, stride: 1, pads: (1, 1, 1, 1), f16: true),
    // 8 tiles per row (half panels); a panel's two tile rows in different images.
    ConvCase(n: 2, cin: 9, cout: 7, h: 6, w: 16, kernel: 3, stride: 1, pads: (1, 1, 1, 1), f16: false),
    ConvCase(n: 1, cin: 30, cout: 11, h: 16, w: 48, kernel: 3, stride: 1, pads: (1, 1, 1, 1), f16: true),
]

/// Both precisions. bf16: im2col must match the float64 loop over the bf16-rounded weights and
/// inputs to 1e-5 (only the float32 sums differ), which shows the mode rounds each operand once,
/// to nearest even; Winograd rounds the transformed values instead, so it is held to 1e-2 of the
/// unrounded loop (bf16 keeps 8 bits: 2^-9 = 2e-3 relative per value), as is im2col.
@Test(arguments: convCases, Precision.allCases)
func convolutionMatchesDirectLoop(_ t: ConvCase, _ precision: Precision) throws {
    var noise = Noise(state: UInt64(t.cin * 1000 + t.cout * 10 + t.h))
    let kk = t.cin * t.kernel * t.kernel
    var weights = noise.values(t.cout * kk)
    if t.f16 { weights = weights.map { Float(Float16($0)) } }  // the values the file holds
    let bias = noise.values(t.cout)
    let conv = Conv2d(weight: try storedTensor(weights, shape: [t.cout, t.cin, t.kernel, t.kernel], f16: t.f16,
                                               precision: precision),
                      bias: bias, cin: t.cin, cout: t.cout, kernel: t.kernel, stride: t.stride,
                      padTop: t.pads.0, padLeft: t.pads.1, padBottom: t.pads.2, padRight: t.pads.3)
    let x = try Tensor(n: t.n, c: t.cin, h: t.h, w: t.w)
    let input = noise.values(x.count)
    x.data.update(from: input, count: x.count)
    let (oh, ow) = conv.outputSize(h: t.h, w: t.w)

    let bf16 = precision == .bf16
    let w16 = weights.map(bf16Rounded), x16 = input.map(bf16Rounded)
    var want = [Double](repeating: 0, count: t.n * t.cout * oh * ow)
    var wantRounded = want
    for b in 0..<t.n {
        for co in 0..<t.cout {
            for oy in 0..<oh {
                for ox in 0..<ow {
                    var s = Double(bias[co]), r = s
                    for ci in 0..<t.cin {
                        for ky in 0..<t.kernel {
                            for kx in 0..<t.kernel {
                                let iy = oy * t.stride - t.pads.0 + ky, ix = ox * t.stride - t.pads.1 + kx
                                guard iy >= 0, iy < t.h, ix >= 0, ix < t.w else { continue }
                                let wi = (co * t.cin + ci) * t.kernel * t.kernel + ky * t.kernel + kx
                                let xi = ((b * t.cin + ci) * t.h + iy) * t.w + ix
                                s += Double(weights[wi]) * Double(input[xi])
                                if bf16 { r += Double(w16[wi]) * Double(x16[xi]) }
                            }
                        }
                    }
                    want[((b * t.cout + co) * oh + oy) * ow + ox] = s
                    wantRounded[((b * t.cout + co) * oh + oy) * ow + ox] = r
                }
            }
        }
    }
    // im2col to 1e-6 of the float64 loop. Winograd F(2×2, 3×3) to 1e-5: its input and output
    // transforms add a few roundings per value (ENGINE.md measures 5.9e-7 relative at 320 input
    // channels and 2.0e-6 at 1280 for one layer); these small layers stay far below 1e-5.
    var algorithms: [(Conv2d.Algorithm, Double)] = [(.im2col, bf16 ? 1e-2 : 1e-6)]
    if conv.usesWinograd(x, .winograd) { algorithms.append((.winograd, bf16 ? 1e-2 : 1e-5)) }
    for (algorithm, tolerance) in algorithms {
        let one = try conv.forward(x, threads: 1, algorithm: algorithm).copyToArray()
        let two = try conv.forward(x, threads: 2, algorithm: algorithm).copyToArray()
        let three = try conv.forward(x, threads: 3, algorithm: algorithm).copyToArray()
        let error = relativeError(one, want)
        #expect(error <= tolerance, "\(t) \(algorithm) \(precision): relative error \(error)")
        if bf16 && algorithm == .im2col {
            let rounded = relativeError(one, wantRounded)
            #expect(rounded <= 1e-5, "\(t) bf16: relative error \(rounded) against the loop over rounded operands")
        }
        #expect(one.map(\.bitPattern) == two.map(\.bitPattern), "\(t) \(algorithm): 1 and 2 threads differ")
        #expect(one.map(\.bitPattern) == three.map(\.bitPattern), "\(t) \(algorithm): 1 and 3 threads differ")
        // Released weights (a pipeline stage done with them) pack again on the next call.
        conv.weight.file.releaseResidentPages()
        let again = try conv.forward(x, threads: 2, algorithm: algorithm).copyToArray()
        #expect(again.map(\.bitPattern) == one.map(\.bitPattern), "\(t) \(algorithm): repacked weights differ")
        if conv.usesWinograd(x) == (algorithm == .winograd) {
            #expect(try conv(x, threads: 2).copyToArray().map(\.bitPattern) == one.map(\.bitPattern), "\(t): automatic choice differs")
        }
    }
}

/// The shapes the Winograd cases above rely on take that path, and the others do not.
@Test func winogradApplicability() {
    let same = (1, 1, 1, 1)
    #expect(WinogradConv.applicable(kernel: 3, stride: 1, pads: same, n: 1, h: 32, w: 32))
    #expect(WinogradConv.applicable(kernel: 3, stride: 1, pads: same, n: 2, h: 64, w: 32))
    #expect(WinogradConv.applicable(kernel: 3, stride: 1, pads: same, n: 3, h: 2, w: 64))
    #expect(WinogradConv.applicable(kernel: 3, stride: 1, pads: same, n: 2, h: 6, w: 16))
    #expect(WinogradConv.applicable(kernel: 3, stride: 1, pads: same, n: 1, h: 16, w: 48))
    #expect(!WinogradConv.applicable(kernel: 3, stride: 1, pads: same, n: 1, h: 6, w: 16))  // 24 tiles: no whole panels
    #expect(!WinogradConv.applicable(kernel: 3, stride: 1, pads: same, n: 1, h: 7, w: 32))  // odd height
    #expect(!WinogradConv.applicable(kernel: 3, stride: 1, pads: same, n: 1, h: 8, w: 8))
    #expect(!WinogradConv.applicable(kernel: 3, stride: 1, pads: same, n: 1, h: 7, w: 20))
    #expect(!WinogradConv.applicable(kernel: 3, stride: 2, pads: same, n: 1, h: 32, w: 32))
    #expect(!WinogradConv.applicable(kernel: 3, stride: 1, pads: (0, 0, 1, 1), n: 1, h: 32, w: 32))
    #expect(!WinogradConv.applicable(kernel: 1, stride: 1, pads: (0, 0, 0, 0), n: 1, h: 32, w: 32))
}

/// Both precisions; bf16 against the loop over bf16-rounded operands (see the convolutions).
@Test(arguments: [(1, 3, 5, false), (7, 20, 33, true), (50, 400, 19, false), (13, 700, 40, true), (12, 64, 64, false)],
      Precision.allCases)
func linearMatchesDirectLoop(_ shape: (rows: Int, inFeatures: Int, outFeatures: Int, f16: Bool), _ precision: Precision) throws {
    var noise = Noise(state: UInt64(shape.rows * 7 + shape.inFeatures))
    var weights = noise.values(shape.outFeatures * shape.inFeatures)
    if shape.f16 { weights = weights.map { Float(Float16($0)) } }
    let bias = noise.values(shape.outFeatures)
    let linear = Linear(weight: try storedTensor(weights, shape: [shape.outFeatures, shape.inFeatures], f16: shape.f16,
                                                 precision: precision),
                        bias: bias, inFeatures: shape.inFeatures, outFeatures: shape.outFeatures)
    let bf16 = precision == .bf16
    // Rows with a stride wider than the features, as attention's fused projections read them.
    let ldx = shape.inFeatures + 3
    let x = noise.values(shape.rows * ldx)
    var want = [Double](repeating: 0, count: shape.rows * shape.outFeatures)
    for r in 0..<shape.rows {
        for o in 0..<shape.outFeatures {
            var s = Double(bias[o])
            for i in 0..<shape.inFeatures {
                let w = weights[o * shape.inFeatures + i], v = x[r * ldx + i]
                s += bf16 ? Double(bf16Rounded(w)) * Double(bf16Rounded(v)) : Double(w) * Double(v)
            }
            want[r * shape.outFeatures + o] = s
        }
    }
    var outputs = [[Float]]()
    for threads in [1, 2] {
        var y = [Float](repeating: .nan, count: shape.rows * shape.outFeatures)
        try x.withUnsafeBufferPointer { xp in
            try y.withUnsafeMutableBufferPointer { try linear.apply(xp.baseAddress!, rows: shape.rows, ldx: ldx, into: $0.baseAddress!, threads: threads) }
        }
        outputs.append(y)
    }
    let error = relativeError(outputs[0], want)
    #expect(error <= (bf16 ? 1e-5 : 1e-6), "\(shape) \(precision): relative error \(error)")
    #expect(outputs[0].map(\.bitPattern) == outputs[1].map(\.bitPattern), "\(shape): 1 and 2 threads differ")
}

// MARK: - Attention

/// softmax(q·k/sqrt(d)) v per (image, head) in float64, token-row layout with row stride `width`.
private func referenceAttention(q: [Float], k: [Float], v: [Float], batch: Int, queries: Int, keys: Int,
                                heads: Int, d: Int, causal: Bool) -> [Double] {
    let width = heads * d
    var out = [Double](repeating: 0, count: batch * queries * width)
    for b in 0..<batch {
        for h in 0..<heads {
            for i in 0..<queries {
                let visible = causal ? min(keys, i + 1) : keys
                var scores = [Double](repeating: 0, count: visible)
                for j in 0..<visible {
                    var s = 0.0
                    for c in 0..<d { s += Double(q[(b * queries + i) * width + h * d + c]) * Double(k[(b * keys + j) * width + h * d + c]) }
                    scores[j] = s / Double(d).squareRoot()
                }
                let m = scores.max()!
                let e = scores.map { Foundation.exp($0 - m) }
                let sum = e.reduce(0, +)
                for c in 0..<d {
                    var acc = 0.0
                    for j in 0..<visible { acc += e[j] / sum * Double(v[(b * keys + j) * width + h * d + c]) }
                    out[(b * queries + i) * width + h * d + c] = acc
                }
            }
        }
    }
    return out
}

/// bf16: q, k, v and the probabilities rounded to bf16 (8 bits) leave about 2^-9 relative per
/// product, so 1e-2 of the float64 loop (d 400 takes two depth blocks, as the VAE's 512-wide
/// head). An odd d and odd key counts exercise the pair padding.
@Test(arguments: [(2, 3, 37, 200, 20, false), (1, 2, 77, 77, 40, true), (1, 1, 50, 13, 400, false), (2, 1, 16, 390, 8, true),
                  (1, 2, 30, 45, 13, false)], Precision.allCases)
func attentionMatchesDirectLoop(_ c: (batch: Int, heads: Int, queries: Int, keys: Int, d: Int, causal: Bool), _ precision: Precision) throws {
    var noise = Noise(state: UInt64(c.queries * 31 + c.keys))
    let width = c.heads * c.d
    let q = noise.values(c.batch * c.queries * width).map { $0 * 3 }
    let k = noise.values(c.batch * c.keys * width), v = noise.values(c.batch * c.keys * width)
    let want = referenceAttention(q: q, k: k, v: v, batch: c.batch, queries: c.queries, keys: c.keys,
                                  heads: c.heads, d: c.d, causal: c.causal)
    var outputs = [[Float]]()
    for threads in [1, 2] {
        var out = [Float](repeating: .nan, count: c.batch * c.queries * width)
        try out.withUnsafeMutableBufferPointer { o in
            try attention(q: q, ldq: width, k: k, ldk: width, v: v, ldv: width, out: o.baseAddress!, ldo: width,
                      batch: c.batch, queries: c.queries, keys: c.keys, heads: c.heads, headDim: c.d,
                      causal: c.causal, precision: precision, threads: threads)
        }
        outputs.append(out)
    }
    let error = relativeError(outputs[0], want)
    #expect(error <= (precision == .bf16 ? 1e-2 : 1e-5), "\(c) \(precision): relative error \(error)")
    // And the bf16 kernel did run (rounding shows) where it applies.
    if precision == .bf16 { #expect(error > 1e-4, "\(c): bf16 as exact as float32 (\(error)): not rounded?") }
    #expect(outputs[0].map(\.bitPattern) == outputs[1].map(\.bitPattern), "\(c): 1 and 2 threads differ")

}

@Test(arguments: Precision.allCases)
func spatialAttentionMatchesDirectLoop(_ precision: Precision) throws {
    let (n, heads, d, h, w) = (2, 2, 24, 5, 9)
    let tokens = h * w, channels = heads * d
    var noise = Noise(state: 99)
    let tensors = try (0..<3).map { _ -> Tensor in
        let t = try Tensor(n: n, c: channels, h: h, w: w)
        t.data.update(from: noise.values(t.count), count: t.count)
        return t
    }
    // Token-row copies of the channel-major tensors for the reference.
    func rows(_ t: Tensor) throws -> [Float] {
        var r = [Float](repeating: 0, count: t.count)
        for b in 0..<n { for ch in 0..<channels { for p in 0..<tokens { r[(b * tokens + p) * channels + ch] = t.data[(b * channels + ch) * tokens + p] } } }
        return r
    }
    let want = referenceAttention(q: try rows(tensors[0]), k: try rows(tensors[1]), v: try rows(tensors[2]), batch: n,
                                  queries: tokens, keys: tokens, heads: heads, d: d, causal: false)
    let out = try spatialAttention(q: tensors[0], k: tensors[1], v: tensors[2], heads: heads, precision: precision, threads: 2)
    let got = try rows(out)
    let error = relativeError(got, want)
    #expect(error <= (precision == .bf16 ? 1e-2 : 1e-5), "spatial attention \(precision): relative error \(error)")
    if precision == .bf16 { #expect(error > 1e-4, "spatial attention: bf16 as exact as float32 (\(error)): not rounded?") }
}

/// The weights' planned memory (the memory budget's "weights") counts what packed copies hold
/// beyond the stored weight: a float32 3 × 3 convolution's im2col panels pad cout to whole panels
/// of 6, and its Winograd U (16 float32 matrices cin × cout padded) is 16/9 of the weight; an F16
/// weight's U is made per call (nothing kept), its panels stay 2 bytes.
@Test(arguments: [false, true])
func plannedBytesCountPackedCopies(_ f16: Bool) throws {
    let cin = 5, cout = 7, padded = 12, size = f16 ? 2 : 4
    let weight = try storedTensor([Float](repeating: 0.5, count: cout * cin * 9), shape: [cout, cin, 3, 3], f16: f16)
    let mapped = weight.file.mappedBytes
    #expect(weight.file.plannedBytes == mapped)
    let conv = Conv2d(weight: weight, bias: nil, cin: cin, cout: cout, kernel: 3, stride: 1,
                      padTop: 1, padLeft: 1, padBottom: 1, padRight: 1)
    let im2colExtra = cin * 9 * (padded - cout) * size
    let winogradExtra = f16 ? 0 : 16 * cin * padded * 4 - cout * cin * 9 * 4
    #expect(weight.file.plannedBytes == mapped + im2colExtra + winogradExtra)
    withExtendedLifetime(conv) {}
}
