/// A 2-D convolution layer: weight [cout, cin, k, k] as gemm's A panels in its stored dtype
/// (`PackedPanels`), bias.
public struct Conv2d {
    public let weight: StoredTensor
    let packed: PackedPanels
    /// The 16 Winograd matrices, for 3 × 3 stride-1 padding-1 layers (packed on first use).
    let winograd: PackedPanels?
    public let bias: [Float]?
    public let cin: Int, cout: Int, kernel: Int, stride: Int
    /// Zero padding on each side (top, left, bottom, right).
    public let padTop: Int, padLeft: Int, padBottom: Int, padRight: Int

    public init(weight: StoredTensor, bias: [Float]?, cin: Int, cout: Int, kernel: Int, stride: Int = 1,
                padTop: Int, padLeft: Int, padBottom: Int, padRight: Int) {
        self.weight = weight
        self.bias = bias
        self.cin = cin; self.cout = cout; self.kernel = kernel; self.stride = stride
        self.padTop = padTop; self.padLeft = padLeft; self.padBottom = padBottom; self.padRight = padRight
        let kk = cin * kernel * kernel
        precondition(weight.count == cout * kk, "conv weight shape")
        packed = weight.packed(k: kk, width: cout, strideK: 1, strideL: kk, panel: MicroKernel.rows)
        winograd = kernel == 3 && stride == 1 && (padTop, padLeft, padBottom, padRight) == (1, 1, 1, 1)
            ? PackedPanels(weight, k: cin, width: cout, strideK: 9, strideL: cin * 9, panel: MicroKernel.rows, winograd: true)
            : nil
    }

    enum Algorithm { case automatic, im2col, winograd }

    /// Whether a call on x takes the Winograd path: a shape it handles, with enough tiles that
    /// the per-call transforms pay — more when U is made per call (F16 / BF16 weights) than when
    /// it is kept (F32).
    func usesWinograd(_ x: Tensor, _ algorithm: Algorithm = .automatic) -> Bool {
        guard winograd != nil,
              WinogradConv.applicable(kernel: kernel, stride: stride, pads: (padTop, padLeft, padBottom, padRight),
                                      n: x.n, h: x.h, w: x.w)
        else { return false }
        switch algorithm {
        case .im2col: return false
        case .winograd: return true
        case .automatic: return x.n * x.h * x.w / 4 >= (weight.dtype == .f32 ? 64 : 256)
        }
    }

    public func outputSize(h: Int, w: Int) -> (h: Int, w: Int) {
        ((h + padTop + padBottom - kernel) / stride + 1, (w + padLeft + padRight - kernel) / stride + 1)
    }

    /// y = conv(x) + bias as one GEMM: C [cout, pixels of every image] = W [cout, cin·k·k] ·
    /// im2col(x), where the im2col columns are made panel by panel as the GEMM packs them (never
    /// in full) and the weight is read in its stored dtype.
    public func callAsFunction(_ x: Tensor, threads: Int) throws -> Tensor {
        try forward(x, threads: threads, algorithm: .automatic)
    }

    func forward(_ x: Tensor, threads: Int, algorithm: Algorithm) throws -> Tensor {
        precondition(x.c == cin, "conv input channels")
        let (oh, ow) = outputSize(h: x.h, w: x.w)
        let y = try Tensor(n: x.n, c: cout, h: oh, w: ow)
        if usesWinograd(x, algorithm), let winograd {
            try winograd.withPanels(threads: threads) { u in
                try bias.withPointer { b in try WinogradConv.run(x: x, y: y, u: u, bias: b, cin: cin, cout: cout, threads: threads) }
            }
            return y
        }
        let ohw = oh * ow, kk = cin * kernel * kernel
        // Each image's columns padded to whole panels, so no panel spans two images.
        let segment = (ohw + MicroKernel.cols - 1) / MicroKernel.cols * MicroKernel.cols
        let source = Im2colSource(x: UnsafePointer(x.data), c: cin, h: x.h, w: x.w, kernel: kernel, stride: stride,
                                  padTop: padTop, padLeft: padLeft, oh: oh, ow: ow, segment: segment)
        let out = GEMMOutput(c: y.data, ldc: ohw, segmentColumns: segment, segmentValid: ohw, segmentStride: cout * ohw)
        try packed.withPanels(threads: threads) { a in
            try bias.withPointer { b in
                try gemm(m: cout, n: x.n * segment, k: kk, a: a, b: source, out: out, bias: b.map { .rows($0) } ?? .none, threads: threads)
            }
        }
        return y
    }
}

/// The im2col matrix of a convolution's input as a gemm operand, packed straight from the
/// activation: element (k = (ci, ky, kx), column = image · segment + oy · ow + ox) is
/// x[image, ci, oy·stride − padTop + ky, ox·stride − padLeft + kx], zero outside the image and
/// for the padding columns past oh · ow of each image.
struct Im2colSource: PanelSource {
    let x: UnsafePointer<Float>
    let c: Int, h: Int, w: Int, kernel: Int, stride: Int, padTop: Int, padLeft: Int
    let oh: Int, ow: Int, segment: Int

    /// Stride 1 and an output the input's size (3 × 3 with padding 1): lane j of a panel reads
    /// x[p0 + j + (ky − padTop) · w + kx − padLeft] of its channel for every tap, so each packed
    /// row is one 16-float load with the lanes outside the image masked to zero.
    private var sameSize: Bool { stride == 1 && oh == h && ow == w }

    /// `pairs`: write rows kk and kk + 1 rounded to bf16 as one row of pairs (d unused).
    @inline(__always)
    private func packSameSize(_ d: UnsafeMutablePointer<Float>, kc: Int, k0: Int, p0: Int, n: Int, image: Int,
                              pairs: UnsafeMutablePointer<UInt32>? = nil) {
        typealias I = SIMD16<Int32>
        let hw = h * w, before = image * c * hw, total = (image + 1) * c * hw
        let plane = x + before
        // Lane masks (all ones where the tap reads inside the image): by kernel row and column.
        // Plain shifts and ands, which vectorise (SIMDMask logic does not).
        @inline(__always) func within(_ v: I, _ bound: Int) -> I {
            ~(v &>> 31) & ((v &- I(repeating: Int32(bound))) &>> 31)
        }
        let lanes = I(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
        var oy = I(), ox = I()
        for j in 0..<16 { let q = p0 + j; oy[j] = Int32(q / w); ox[j] = Int32(q % w) }
        let live = within(lanes, n)
        withUnsafeTemporaryAllocation(of: I.self, capacity: 2 * kernel) { masks in
            let m = masks.baseAddress!
            for t in 0..<kernel {
                m[t] = live & within(oy &+ I(repeating: Int32(t - padTop)), h)
                m[kernel + t] = within(ox &+ I(repeating: Int32(t - padLeft)), w)
            }
            var ci = k0 / (kernel * kernel), ky = (k0 / kernel) % kernel, kx = k0 % kernel
            var even = I()
            for kk in 0..<kc {
                let mask = m[ky] & m[kernel + kx]
                let start = ci * hw + p0 + (ky - padTop) * w + kx - padLeft
                var bits: I
                if before + start >= 0 && before + start + 16 <= total {
                    bits = UnsafeRawPointer(plane + start).loadUnaligned(as: I.self) & mask
                } else {
                    bits = I()
                    for j in 0..<16 where mask[j] != 0 { bits[j] = Int32(bitPattern: plane[start + j].bitPattern) }
                }
                if let pairs {
                    if kk % 2 == 0 {
                        even = bits
                    } else {
                        let word = bf16Round(unsafeBitCast(even, to: SIMD16<Float>.self))
                            | bf16Round(unsafeBitCast(bits, to: SIMD16<Float>.self)) &<< 16
                        UnsafeMutableRawPointer(pairs + kk / 2 * 16).storeBytes(of: word, as: SIMD16<UInt32>.self)
                    }
                } else {
                    UnsafeMutableRawPointer(d + kk * 16).storeBytes(of: bits, as: I.self)
                }
                kx += 1
                if kx == kernel {
                    kx = 0; ky += 1
                    if ky == kernel { ky = 0; ci += 1 }
                }
            }
            if let pairs, kc % 2 == 1 {
                UnsafeMutableRawPointer(pairs + kc / 2 * 16).storeBytes(of: bf16Round(unsafeBitCast(even, to: SIMD16<Float>.self)),
                                                                      as: SIMD16<UInt32>.self)
            }
        }
    }

    /// bf16 pairs straight from the activation for same-size convolutions (3 × 3 with padding 1):
    /// rows kk and kk + 1 of a panel are rounded and interleaved as they are loaded. Other shapes
    /// take the float32 packing and a rounding pass.
    func packPairs(k0: Int, kc: Int, l0: Int, width: Int, into dst: UnsafeMutablePointer<UInt32>) -> Bool {
        guard sameSize, kernel > 1 else { return false }
        let pairs = (kc + 1) / 2
        var q = 0
        while q * 16 < width {
            let col = l0 + q * 16
            let d = dst + q * 16 * pairs
            let img = col / segment, p0 = col - img * segment
            let n = min(16, width - q * 16, oh * ow - p0)
            q += 1
            guard n > 0 else {
                d.update(repeating: 0, count: 16 * pairs)
                continue
            }
            packSameSize(UnsafeMutablePointer(bitPattern: 64)!, kc: kc, k0: k0, p0: p0, n: n, image: img, pairs: d)
        }
        return true
    }

    @inline(never)
    func pack(k0: Int, kc: Int, l0: Int, width: Int, panel: Int, into dst: UnsafeMutablePointer<Float>) {
        let hw = h * w, ohw = oh * ow
        let pointwise = kernel == 1 && stride == 1 && padTop == 0 && padLeft == 0 && oh == h && ow == w
        // A panel's columns as runs along output rows: (first lane, lanes, oy, ox of the first).
        withUnsafeTemporaryAllocation(of: Int.self, capacity: 4 * panel) { buffer in
            let runs = buffer.baseAddress!
            var q = 0
            while q * panel < width {
                let col = l0 + q * panel
                let d = dst + q * panel * kc
                let img = col / segment, p0 = col - img * segment
                let n = min(panel, width - q * panel, ohw - p0)
                q += 1
                guard n > 0 else {
                    d.update(repeating: 0, count: panel * kc)
                    continue
                }
                let plane = x + img * c * hw
                if pointwise {
                    for kk in 0..<kc {
                        let row = d + kk * panel
                        copyShortRow(row, plane + (k0 + kk) * hw + p0, count: n)
                        if n < panel { (row + n).update(repeating: 0, count: panel - n) }
                    }
                    continue
                }
                if sameSize && panel == 16 {
                    packSameSize(d, kc: kc, k0: k0, p0: p0, n: n, image: img)
                    continue
                }
                var runCount = 0, j = 0
                while j < n {
                    let p = p0 + j, oy = p / ow, ox = p - oy * ow
                    let len = min(n - j, ow - ox)
                    runs[4 * runCount] = j; runs[4 * runCount + 1] = len
                    runs[4 * runCount + 2] = oy * stride - padTop; runs[4 * runCount + 3] = ox * stride - padLeft
                    runCount += 1
                    j += len
                }
                var ci = k0 / (kernel * kernel), ky = (k0 / kernel) % kernel, kx = k0 % kernel
                for kk in 0..<kc {
                    let row = d + kk * panel
                    if n < panel { (row + n).update(repeating: 0, count: panel - n) }
                    let base = plane + ci * hw
                    for r in 0..<runCount {
                        let j0 = runs[4 * r], len = runs[4 * r + 1]
                        let iy = runs[4 * r + 2] + ky, ix0 = runs[4 * r + 3] + kx
                        let out = row + j0
                        if iy < 0 || iy >= h {
                            out.update(repeating: 0, count: len)
                            continue
                        }
                        let src = base + iy * w
                        if stride == 1 {
                            // Zero the lanes left and right of the image, copy the rest.
                            let lo = min(len, max(0, -ix0)), hi = max(lo, min(len, w - ix0))
                            for t in 0..<lo { out[t] = 0 }
                            copyShortRow(out + lo, src + ix0 + lo, count: hi - lo)
                            for t in hi..<len { out[t] = 0 }
                        } else {
                            for t in 0..<len {
                                let ix = ix0 + t * stride
                                out[t] = ix >= 0 && ix < w ? src[ix] : 0
                            }
                        }
                    }
                    kx += 1
                    if kx == kernel {
                        kx = 0; ky += 1
                        if ky == kernel { ky = 0; ci += 1 }
                    }
                }
            }
        }
    }
}

/// dst[0..<count] = src[0..<count] for rows of a few to a few hundred floats: vector moves
/// without a call, since im2col copies millions of short rows.
@inline(__always)
func copyShortRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count: Int) {
    let d = UnsafeMutableRawPointer(dst), s = UnsafeRawPointer(src)
    var i = 0
    while i + 16 <= count {
        d.storeBytes(of: s.loadUnaligned(fromByteOffset: 4 * i, as: SIMD16<Float>.self), toByteOffset: 4 * i, as: SIMD16<Float>.self)
        i += 16
    }
    if i + 8 <= count {
        d.storeBytes(of: s.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self), toByteOffset: 4 * i, as: SIMD8<Float>.self)
        i += 8
    }
    if i + 4 <= count {
        d.storeBytes(of: s.loadUnaligned(fromByteOffset: 4 * i, as: SIMD4<Float>.self), toByteOffset: 4 * i, as: SIMD4<Float>.self)
        i += 4
    }
    while i < count { dst[i] = src[i]; i += 1 }
}
