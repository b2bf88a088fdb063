/// A 2-D convolution layer's parameters: weight [cout, cin, k, k] stored as rows of `lda` floats,
/// [cin*k*k weights, bias]: the bias rides in the GEMM as one more column, against a row of ones
/// under the im2col matrix, so C needs no bias fill and is never read back.
public struct Conv2d {
    public let weight: FloatBuffer
    public let bias: FloatBuffer?
    let lda: Int
    public let cin: Int, cout: Int, kernel: Int, stride: Int
    /// Zero padding on each side (top, left, bottom, right).
    public let padTop: Int, padLeft: Int, padBottom: Int, padRight: Int

    public init(weight: FloatBuffer, bias: FloatBuffer?, cin: Int, cout: Int, kernel: Int, stride: Int = 1,
                padTop: Int, padLeft: Int, padBottom: Int, padRight: Int) {
        let kk = cin * kernel * kernel
        if let bias {
            let augmented = FloatBuffer(count: cout * (kk + 1), pooled: false)
            for co in 0..<cout {
                (augmented.pointer + co * (kk + 1)).update(from: weight.pointer + co * kk, count: kk)
                augmented.pointer[co * (kk + 1) + kk] = bias.pointer[co]
            }
            self.weight = augmented
            lda = kk + 1
        } else {
            self.weight = weight
            lda = kk
        }
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
        let (oh, ow) = outputSize(h: x.h, w: x.w)
        let y = Tensor(n: x.n, c: cout, h: oh, w: ow)
        let ohw = oh * ow, ihw = x.hw
        let kk = cin * kernel * kernel
        let direct = kernel == 1 && stride == 1 && padTop == 0 && padLeft == 0 && padBottom == 0 && padRight == 0
        // Images per group: keep B under ~16 MB. Large images write C straight into y (one tile
        // never spans two images); small ones (late, low-resolution layers) share tiles through a
        // staging buffer so their GEMMs are not tiny.
        let group = max(1, min(x.n, (16 << 20) / max(1, kk * ohw * 4)))
        let perImage = ohw >= 1024 || group == 1
        // B's rows: kk, plus the row of ones that multiplies the bias column
        let rows = bias == nil ? kk : kk + 1
        let colBuffer = direct && group == 1 ? nil : FloatBuffer(count: rows * ohw * group)
        let stagingBuffer = perImage ? nil : FloatBuffer(count: cout * ohw * group)
        let col = colBuffer?.pointer, staging = stagingBuffer?.pointer
        defer { withExtendedLifetime((colBuffer, stagingBuffer)) {} }
        let bias = self.bias?.pointer
        let lda = self.lda
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
                        im2col(x, image: first + img, channel: ci, oh: oh, ow: ow, into: col + img * ohw, ld: cols)
                    }
                }
                if rows > kk { (col + kk * cols).update(repeating: 1, count: cols) }
                b = UnsafePointer(col)
            } else {
                b = UnsafePointer(x.data + first * cin * ihw)
            }
            // Tiles: (segment, column block, row block); a segment is one image, or the whole
            // group when staging. Fixed sizes, so any thread count computes identical bytes.
            let segments = perImage ? images : 1
            let segmentCols = perImage ? ohw : cols
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
                let cBase: UnsafeMutablePointer<Float>, ldc: Int
                if let staging { cBase = staging; ldc = cols } else { cBase = y.data + (first + seg) * cout * ohw; ldc = ohw }
                let cTile = cBase + r0 * ldc + c0
                // Without an im2col matrix (a 1x1 conv on one image) the bias is filled in first.
                let fill = col == nil && bias != nil
                if fill, let bias {
                    for i in 0..<m { (cTile + i * ldc).update(repeating: bias[r0 + i], count: n) }
                }
                sgemm(m: m, n: n, k: fill ? kk : rows, a: weight.pointer + r0 * lda, lda: lda,
                      b: b + seg * ohw + c0, ldb: col == nil ? ohw : cols,
                      beta: fill ? 1 : 0, c: cTile, ldc: ldc)
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

    /// Rows (channel, ky, kx) of col[(ci, ky, kx), (oy, ox)] (row stride ld) =
    /// x[img, ci, oy*s - padTop + ky, ox*s - padLeft + kx], zero outside the image.
    /// The plane is first copied into a zero-padded buffer, so every row is a plain strided copy.
    @inline(__always)
    private func im2col(_ x: Tensor, image img: Int, channel ci: Int, oh: Int, ow: Int,
                        into col: UnsafeMutablePointer<Float>, ld: Int) {
        let h = x.h, w = x.w
        let plane = x.data + (img * cin + ci) * h * w
        let ph = h + padTop + padBottom, pw = w + padLeft + padRight
        withUnsafeTemporaryAllocation(of: Float.self, capacity: ph * pw) { buffer in
            let padded = buffer.baseAddress!
            padded.update(repeating: 0, count: ph * pw)
            for y in 0..<h { (padded + (y + padTop) * pw + padLeft).update(from: plane + y * w, count: w) }
            var row = col + ci * kernel * kernel * ld
            for ky in 0..<kernel {
                for kx in 0..<kernel {
                    for oy in 0..<oh {
                        let src = padded + (oy * stride + ky) * pw + kx
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
