/// round(clamp(x / 2 + 0.5, 0, 1) · 255) of NCHW values in [-1, 1], written NHWC as 8-bit, as
/// diffusers' image processor and numpy_to_pil do (NaN → 0).
public func pixelBytes(_ x: Tensor, into out: UnsafeMutablePointer<UInt8>) {
    let hw = x.hw, channels = x.c
    for n in 0..<x.n {
        for c in 0..<channels {
            let plane = x.data + (n * channels + c) * hw
            for i in 0..<hw {
                let v = plane[i] / 2 + 0.5
                let clamped = v.isNaN ? 0 : min(max(v, 0), 1) * 255
                out[(n * hw + i) * channels + c] = UInt8(clamped.rounded(.toNearestOrEven))
            }
        }
    }
}

/// NHWC 8-bit pixels → NCHW x = pixel / 255 · 2 − 1 (float32, as diffusers' VaeImageProcessor).
public func tensor(fromPixels pixels: UnsafePointer<UInt8>, n: Int, channels c: Int, height: Int, width: Int) throws -> Tensor {
    let x = try Tensor(n: n, c: c, h: height, w: width)
    let hw = height * width
    for img in 0..<n {
        for ch in 0..<c {
            for i in 0..<hw { x.data[(img * c + ch) * hw + i] = 2 * (Float(pixels[(img * hw + i) * c + ch]) / 255) - 1 }
        }
    }
    return x
}
