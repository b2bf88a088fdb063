/// A 2-D convolution layer: weight [cout, cin, k, k] in its stored dtype (widened per call), bias.
public struct Conv2d {
    public let weight: StoredTensor
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
    }

    public func outputSize(h: Int, w: Int) -> (h: Int, w: Int) {
        ((h + padTop + padBottom - kernel) / stride + 1, (w + padLeft + padRight - kernel) / stride + 1)
    }

    /// y = conv(x) + bias as GEMMs over a group of images laid side by side:
    /// B = im2col of the group ([cin*k*k, images*oh*ow]), C = W · B.
    /// C is cut into fixed tiles (independent of the thread count, so results are too), each a
    /// single-threaded OpenBLAS call on one of our threads.
    public func callAsFunction(_ x: Tensor, threads: Int) -> Tensor {
        precondition(x.c == cin, "conv input channels")
        return weight.withFloats(threads: threads) { convolve(x, weight: $0, threads: threads) }
    }

    /// The most one im2col matrix may take: larger images are done in bands of output rows.
    static let im2colBudget = 32 << 20

    private func convolve(_ x: Tensor, weight: UnsafePointer<Float>, threads: Int) -> Tensor {
        let (oh, ow) = outputSize(h: x.h, w: x.w)
        let y = Tensor(n: x.n, c: cout, h: oh, w: ow)
        let ohw = oh * ow, ihw = x.hw
        let kk = cin * kernel * kernel
        let direct = kernel == 1 && stride == 1 && padTop == 0 && padLeft == 0 && padBottom == 0 && padRight == 0
        if !direct && kk * ohw * 4 > Conv2d.im2colBudget {
            // One image's im2col alone is too big (the VAE decoder at 512x512: 1.2 GB): bands.
            let bandRows = max(1, Conv2d.im2colBudget / (kk * ow * 4))
            let colBuffer = FloatBuffer(count: kk * min(bandRows, oh) * ow)
            let col = colBuffer.pointer
            for img in 0..<x.n {
                for oy0 in Swift.stride(from: 0, to: oh, by: bandRows) {
                    let rows = min(bandRows, oh - oy0), cols = rows * ow
                    parallelFor(cin, threads: threads) { ci in
                        im2col(x, image: img, channel: ci, firstRow: oy0, rows: rows, ow: ow, into: col, ld: cols)
                    }
                    gemmTiles(weight, segments: 1, segmentCols: cols, threads: threads) { _ in
                        (UnsafePointer(col), cols, y.data + img * cout * ohw + oy0 * ow, ohw)
                    }
                }
            }
            return withExtendedLifetime(colBuffer) { y }
        }
        // Images per group: keep B under ~16 MB. Large images write C straight into y (one tile
        // never spans two images); small ones (late, low-resolution layers) share tiles through a
        // staging buffer so their GEMMs are not tiny.
        let group = max(1, min(x.n, (16 << 20) / max(1, kk * ohw * 4)))
        let perImage = ohw >= 1024 || group == 1
        let colBuffer = direct && group == 1 ? nil : FloatBuffer(count: kk * ohw * group)
        let stagingBuffer = perImage ? nil : FloatBuffer(count: cout * ohw * group)
        let col = colBuffer?.pointer, staging = stagingBuffer?.pointer
        defer { withExtendedLifetime((colBuffer, stagingBuffer)) {} }
        for first in Swift.stride(from: 0, to: x.n, by: group) {
            let images = min(group, x.n - first)
            let cols = images * ohw
            // B: [kk, cols], column img * ohw + p
            let b: UnsafePointer<Float>
            if let col {
                parallelFor(cin * images, threads: threads) { job in
                    let img = job / cin, ci = job % cin
                    if direct {
                        (col + ci * cols + img * ohw).update(from: x.data + ((first + img) * cin + ci) * ihw, count: ohw)
                    } else {
                        im2col(x, image: first + img, channel: ci, firstRow: 0, rows: oh, ow: ow, into: col + img * ohw, ld: cols)
                    }
                }
                b = UnsafePointer(col)
            } else {
                b = UnsafePointer(x.data + first * cin * ihw)
            }
            // A segment is one image, or the whole group when staging.
            gemmTiles(weight, segments: perImage ? images : 1, segmentCols: perImage ? ohw : cols, threads: threads) { seg in
                if let staging { return (b, cols, staging, cols) }
                return (b + seg * ohw, col == nil ? ohw : cols, y.data + (first + seg) * cout * ohw, ohw)
            }
            if let staging {
                parallelFor(cout * images, threads: threads) { job in
                    let img = job / cout, co = job % cout
                    (y.data + ((first + img) * cout + co) * ohw).update(from: staging + co * cols + img * ohw, count: ohw)
                }
            }
        }
        return y
    }

    /// C = W · B + bias for `segments` independent column ranges, cut into fixed tiles (column
    /// block, row block) independent of the thread count, so results are too; each tile is a
    /// single-threaded OpenBLAS call on one of our threads. `operands(seg)` gives B, ldb, C, ldc.
    private func gemmTiles(_ weight: UnsafePointer<Float>, segments: Int, segmentCols: Int, threads: Int,
                           _ operands: (Int) -> (b: UnsafePointer<Float>, ldb: Int, c: UnsafeMutablePointer<Float>, ldc: Int)) {
        let kk = cin * kernel * kernel
        // Split columns before rows: every row block re-packs B, every column block only
        // re-packs the (smaller) weight panel.
        let wanted = max(2, 4 / segments)  // at least two per image: groups of 3 images balance on 2 threads
        let colTile = min(1024, max(128, (segmentCols / wanted + 63) / 64 * 64))
        let colTiles = (segmentCols + colTile - 1) / colTile
        var rowSplit = 1
        while segments * colTiles * rowSplit < 4 && cout / (rowSplit * 2) >= 32 { rowSplit *= 2 }
        let rowTile = (cout + rowSplit - 1) / rowSplit
        parallelFor(segments * colTiles * rowSplit, threads: threads) { t in
            let seg = t / (colTiles * rowSplit), rest = t % (colTiles * rowSplit)
            let c0 = (rest / rowSplit) * colTile, n = min(colTile, segmentCols - c0)
            let r0 = (rest % rowSplit) * rowTile, m = min(rowTile, cout - r0)
            guard m > 0 else { return }
            let (b, ldb, c, ldc) = operands(seg)
            let cTile = c + r0 * ldc + c0
            // The bias is filled in first and the GEMM accumulates onto it.
            if let bias {
                for i in 0..<m { (cTile + i * ldc).update(repeating: bias[r0 + i], count: n) }
            }
            sgemm(m: m, n: n, k: kk, a: weight + r0 * kk, lda: kk, b: b + c0, ldb: ldb,
                  beta: bias == nil ? 0 : 1, c: cTile, ldc: ldc)
        }
    }

    /// Rows (channel, ky, kx) of col[(ci, ky, kx), (oy - firstRow, ox)] (row stride ld) for output
    /// rows firstRow..<firstRow+rows: x[img, ci, oy*s - padTop + ky, ox*s - padLeft + kx], zero
    /// outside the image. The input rows needed are first copied into a zero-padded buffer, so
    /// every row is a plain strided copy.
    @inline(__always)
    private func im2col(_ x: Tensor, image img: Int, channel ci: Int, firstRow: Int, rows: Int, ow: Int,
                        into col: UnsafeMutablePointer<Float>, ld: Int) {
        let h = x.h, w = x.w
        let plane = x.data + (img * cin + ci) * h * w
        // Padded rows 0..<ph hold input rows top ..< top + ph.
        let top = firstRow * stride - padTop
        let ph = (rows - 1) * stride + kernel, pw = w + padLeft + padRight
        // Stack scratch for the usual small planes; pooled heap memory for big bands.
        if ph * pw <= 1 << 14 {
            withUnsafeTemporaryAllocation(of: Float.self, capacity: ph * pw) { buffer in
                fillIm2col(buffer.baseAddress!, plane: plane, top: top, ph: ph, pw: pw, h: h, w: w,
                           rows: rows, ow: ow, col: col, channel: ci, ld: ld)
            }
        } else {
            let padded = FloatBuffer(count: ph * pw)
            fillIm2col(padded.pointer, plane: plane, top: top, ph: ph, pw: pw, h: h, w: w,
                       rows: rows, ow: ow, col: col, channel: ci, ld: ld)
            withExtendedLifetime(padded) {}
        }
    }

    @inline(__always)
    private func fillIm2col(_ p: UnsafeMutablePointer<Float>, plane: UnsafePointer<Float>, top: Int, ph: Int, pw: Int,
                            h: Int, w: Int, rows: Int, ow: Int, col: UnsafeMutablePointer<Float>, channel ci: Int, ld: Int) {
        p.update(repeating: 0, count: ph * pw)
        var r = max(0, -top)
        while r < min(ph, h - top) {
            (p + r * pw + padLeft).update(from: plane + (top + r) * w, count: w)
            r += 1
        }
        var row = col + ci * kernel * kernel * ld
        for ky in 0..<kernel {
            for kx in 0..<kernel {
                for oy in 0..<rows {
                    let src = p + (oy * stride + ky) * pw + kx
                    let dst = row + oy * ow
                    if stride == 1 {
                        copyShortRow(dst, src, count: ow)
                    } else {
                        for ox in 0..<ow { dst[ox] = src[ox * stride] }
                    }
                }
                row += ld
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
