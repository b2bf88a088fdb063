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

    /// y = conv(x) + bias as one GEMM per group of images: B = im2col of the group laid side by
    /// side ([cin*k*k, images*oh*ow]), C = W · B, OpenBLAS spreading the GEMM over the threads.
    /// Putting images side by side keeps the small late-stage layers from re-packing the weights
    /// once per image.
    public func callAsFunction(_ x: Tensor, threads: Int) -> Tensor {
        precondition(x.c == cin, "conv input channels")
        let (oh, ow) = outputSize(h: x.h, w: x.w)
        let y = Tensor(n: x.n, c: cout, h: oh, w: ow)
        let ohw = oh * ow, ihw = x.hw
        let kk = cin * kernel * kernel
        let direct = kernel == 1 && stride == 1 && padTop == 0 && padLeft == 0 && padBottom == 0 && padRight == 0
        // Images per GEMM: keep B under ~32 MB.
        let group = max(1, min(x.n, (32 << 20) / max(1, kk * ohw * 4)))
        let col = direct && group == 1 ? nil : UnsafeMutablePointer<Float>.allocate(capacity: kk * ohw * group)
        let staging = group == 1 ? nil : UnsafeMutablePointer<Float>.allocate(capacity: cout * ohw * group)
        defer { col?.deallocate(); staging?.deallocate() }
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
                b = UnsafePointer(col)
            } else {
                b = UnsafePointer(x.data + first * cin * ihw)
            }
            // C: straight into y for one image, else into staging then scattered to NCHW
            let c = staging ?? (y.data + first * cout * ohw)
            if let bp = bias?.pointer {
                for co in 0..<cout { (c + co * cols).update(repeating: bp[co], count: cols) }
            }
            blasThreads(threads)
            sgemm(m: cout, n: cols, k: kk, a: weight.pointer, lda: kk, b: b, ldb: cols,
                  beta: bias == nil ? 0 : 1, c: c, ldc: cols)
            if let staging {
                parallelFor(cout * images, threads: threads) { job in
                    let img = job / cout, co = job % cout
                    (y.data + ((first + img) * cout + co) * ohw).update(from: staging + co * cols + img * ohw, count: ohw)
                }
            }
        }
        return y
    }

    /// Rows (channel, ky, kx) of col[(ci, ky, kx), (oy, ox)] (row stride ld) = x[img, ci, oy*s - padTop + ky, ox*s - padLeft + kx],
    /// zero outside the image.
    @inline(__always)
    private func im2col(_ x: Tensor, image img: Int, channel ci: Int, oh: Int, ow: Int,
                        into col: UnsafeMutablePointer<Float>, ld: Int) {
        let h = x.h, w = x.w
        let plane = x.data + (img * cin + ci) * h * w
        var row = col + ci * kernel * kernel * ld
        for ky in 0..<kernel {
            for kx in 0..<kernel {
                for oy in 0..<oh {
                    let dst = row + oy * ow
                    let iy = oy * stride - padTop + ky
                    guard iy >= 0 && iy < h else {
                        dst.update(repeating: 0, count: ow)
                        continue
                    }
                    let line = plane + iy * w
                    if stride == 1 {
                        // ix = ox - padLeft + kx is inside [0, w) for ox in [lo, hi): one contiguous copy.
                        let lo = min(ow, max(0, padLeft - kx)), hi = max(lo, min(ow, w + padLeft - kx))
                        if lo > 0 { dst.update(repeating: 0, count: lo) }
                        if hi > lo { (dst + lo).update(from: line + (lo - padLeft + kx), count: hi - lo) }
                        if hi < ow { (dst + hi).update(repeating: 0, count: ow - hi) }
                    } else {
                        for ox in 0..<ow {
                            let ix = ox * stride - padLeft + kx
                            dst[ox] = (ix >= 0 && ix < w) ? line[ix] : 0
                        }
                    }
                }
                row += ld
            }
        }
    }
}
