/// A 2-D convolution layer's parameters: weight [cout, cin, k, k] stored as [cout, cin*k*k].
public struct Conv2d {
    public let weight: FloatBuffer
    public let bias: FloatBuffer?
    public let cin: Int, cout: Int, kernel: Int, stride: Int
    /// Zero padding on each side (top, left, bottom, right).
    public let padTop: Int, padLeft: Int, padBottom: Int, padRight: Int

    public init(weight: FloatBuffer, bias: FloatBuffer?, cin: Int, cout: Int, kernel: Int, stride: Int = 1,
                padTop: Int, padLeft: Int, padBottom: Int, padRight: Int) {
        self.weight = weight; self.bias = bias
        self.cin = cin; self.cout = cout; self.kernel = kernel; self.stride = stride
        self.padTop = padTop; self.padLeft = padLeft; self.padBottom = padBottom; self.padRight = padRight
    }

    public func outputSize(h: Int, w: Int) -> (h: Int, w: Int) {
        ((h + padTop + padBottom - kernel) / stride + 1, (w + padLeft + padRight - kernel) / stride + 1)
    }

    /// y = conv(x) + bias, as im2col tiles × weight through GEMM, tiles in parallel.
    public func callAsFunction(_ x: Tensor, threads: Int) -> Tensor {
        precondition(x.c == cin, "conv input channels")
        let (oh, ow) = outputSize(h: x.h, w: x.w)
        let y = Tensor(n: x.n, c: cout, h: oh, w: ow)
        let ohw = oh * ow
        let kk = cin * kernel * kernel
        // Fixed tiling (independent of the thread count): output columns, then output channels
        // when there are too few column tiles to keep threads busy.
        let colTile = 512
        let colTiles = (ohw + colTile - 1) / colTile
        var coutSplit = 1
        while x.n * colTiles * coutSplit < 8 && cout / (coutSplit * 2) >= 32 { coutSplit *= 2 }
        let coutTile = (cout + coutSplit - 1) / coutSplit
        let direct = kernel == 1 && stride == 1 && padTop == 0 && padLeft == 0 && padBottom == 0 && padRight == 0
        let tiles = x.n * colTiles * coutSplit
        let wp = weight.pointer
        let bp = bias?.pointer
        parallelFor(tiles, threads: threads) { t in
            let img = t / (colTiles * coutSplit)
            let rest = t % (colTiles * coutSplit)
            let ct = rest / coutSplit
            let co0 = (rest % coutSplit) * coutTile
            let co1 = min(cout, co0 + coutTile)
            if co0 >= co1 { return }
            let p0 = ct * colTile
            let p = min(colTile, ohw - p0)
            let yBase = y.data + img * cout * ohw + p0
            if let bp {
                for co in co0..<co1 { (yBase + co * ohw).update(repeating: bp[co], count: p) }
            }
            let beta: Float = bp == nil ? 0 : 1
            if direct {
                sgemm(m: co1 - co0, n: p, k: kk, a: wp + co0 * kk, lda: kk,
                      b: x.data + img * cin * ohw + p0, ldb: ohw,
                      beta: beta, c: yBase + co0 * ohw, ldc: ohw)
                return
            }
            let col = UnsafeMutablePointer<Float>.allocate(capacity: kk * p)
            defer { col.deallocate() }
            im2col(x, image: img, p0: p0, p: p, ow: ow, into: col)
            sgemm(m: co1 - co0, n: p, k: kk, a: wp + co0 * kk, lda: kk, b: col, ldb: p,
                  beta: beta, c: yBase + co0 * ohw, ldc: ohw)
        }
        return y
    }

    /// col[(ci, ky, kx), j] = x[img, ci, oy*s - padTop + ky, ox*s - padLeft + kx] for output
    /// positions p0 ..< p0+p (j = position - p0), zero outside the image.
    @inline(__always)
    private func im2col(_ x: Tensor, image img: Int, p0: Int, p: Int, ow: Int, into col: UnsafeMutablePointer<Float>) {
        let h = x.h, w = x.w
        let src = x.data + img * cin * h * w
        var row = 0
        for ci in 0..<cin {
            let plane = src + ci * h * w
            for ky in 0..<kernel {
                for kx in 0..<kernel {
                    let dst = col + row * p
                    var j = 0
                    var pos = p0
                    while j < p {
                        let oy = pos / ow
                        var ox = pos % ow
                        let iy = oy * stride - padTop + ky
                        // Run along one output row at a time.
                        let run = min(ow - ox, p - j)
                        if iy < 0 || iy >= h {
                            (dst + j).update(repeating: 0, count: run)
                        } else {
                            let line = plane + iy * w
                            if stride == 1 {
                                for r in 0..<run {
                                    let ix = ox + r - padLeft + kx
                                    dst[j + r] = (ix >= 0 && ix < w) ? line[ix] : 0
                                }
                            } else {
                                for r in 0..<run {
                                    let ix = (ox + r) * stride - padLeft + kx
                                    dst[j + r] = (ix >= 0 && ix < w) ? line[ix] : 0
                                }
                            }
                        }
                        ox += run
                        j += run
                        pos += run
                    }
                    row += 1
                }
            }
        }
    }
}
