#if canImport(Glibc)
import Glibc
#endif

/// In place: x = (x + r) * scale
func addScaled(_ x: Tensor, _ r: Tensor, scale: Float) {
    precondition(x.count == r.count)
    let a = x.data, b = r.data
    if scale == 1 {
        for i in 0..<x.count { a[i] = a[i] + b[i] }
    } else {
        for i in 0..<x.count { a[i] = (a[i] + b[i]) * scale }
    }
}

/// Concatenates along channels: [a; b].
func concatChannels(_ a: Tensor, _ b: Tensor) -> Tensor {
    precondition(a.n == b.n && a.h == b.h && a.w == b.w)
    let y = Tensor(n: a.n, c: a.c + b.c, h: a.h, w: a.w)
    let sa = a.c * a.hw, sb = b.c * b.hw
    for i in 0..<a.n {
        (y.data + i * (sa + sb)).update(from: a.data + i * sa, count: sa)
        (y.data + i * (sa + sb) + sa).update(from: b.data + i * sb, count: sb)
    }
    return y
}

/// Nearest-neighbour 2x upsampling (F.interpolate(scale_factor=2, mode="nearest")).
func upsampleNearest2x(_ x: Tensor) -> Tensor {
    let y = Tensor(n: x.n, c: x.c, h: x.h * 2, w: x.w * 2)
    let w = x.w, ow = x.w * 2
    for plane in 0..<(x.n * x.c) {
        let s = x.data + plane * x.hw
        let d = y.data + plane * y.hw
        for iy in 0..<x.h {
            let row = d + (2 * iy) * ow
            for ix in 0..<w {
                let v = s[iy * w + ix]
                row[2 * ix] = v
                row[2 * ix + 1] = v
            }
            (row + ow).update(from: row, count: ow)
        }
    }
    return y
}
