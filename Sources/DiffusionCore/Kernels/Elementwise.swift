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
func concatChannels(_ a: Tensor, _ b: Tensor) throws -> Tensor {
    precondition(a.n == b.n && a.h == b.h && a.w == b.w)
    let y = try Tensor(n: a.n, c: a.c + b.c, h: a.h, w: a.w)
    let sa = a.c * a.hw, sb = b.c * b.hw
    for i in 0..<a.n {
        (y.data + i * (sa + sb)).update(from: a.data + i * sa, count: sa)
        (y.data + i * (sa + sb) + sa).update(from: b.data + i * sb, count: sb)
    }
    return y
}

/// Nearest-neighbour 2x upsampling (F.interpolate(scale_factor=2, mode="nearest")).
func upsampleNearest2x(_ x: Tensor) throws -> Tensor {
    let y = try Tensor(n: x.n, c: x.c, h: x.h * 2, w: x.w * 2)
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

/// Nearest-neighbour resize to h × w (F.interpolate(size=(h, w), mode="nearest"): source index
/// floor(dst · in / out) in float32, as torch computes it).
func upsampleNearest(_ x: Tensor, h oh: Int, w ow: Int) throws -> Tensor {
    if oh == 2 * x.h && ow == 2 * x.w { return try upsampleNearest2x(x) }
    let y = try Tensor(n: x.n, c: x.c, h: oh, w: ow)
    let sy = Float(x.h) / Float(oh), sx = Float(x.w) / Float(ow)
    let cols = (0..<ow).map { min(Int((Float($0) * sx).rounded(.down)), x.w - 1) }
    for plane in 0..<(x.n * x.c) {
        let s = x.data + plane * x.hw, d = y.data + plane * y.hw
        for oy in 0..<oh {
            let row = s + min(Int((Float(oy) * sy).rounded(.down)), x.h - 1) * x.w
            for ox in 0..<ow { d[oy * ow + ox] = row[cols[ox]] }
        }
    }
    return y
}
