import DiffusionCore
#if canImport(Glibc)
import Glibc
#endif

/// img2img's x_0 from a PNG: one NCHW image for the whole batch, in the model's channels
/// (gray replicated to RGB; RGB to gray as PIL's convert("L")), x_0 = 2 * (p / 255) - 1 as diffusers.
func initSample(_ path: String, channels: Int, height: Int, width: Int) throws -> [Float] {
    guard channels == 1 || channels == 3 else {
        throw DiffusionError(.unsupported, "--init/--mask: the model has \(channels) channels; an image can start only 1- or 3-channel models")
    }
    let image = try PNGDecoder.read(path) { w, h in
        guard w == width && h == height else {
            throw DiffusionError(.invalidArgument, "\(path): the image is \(w)x\(h) but the model makes \(width)x\(height) images (width x height; no resizing)")
        }
    }
    let hw = height * width, p = image.pixels
    var x = [Float](repeating: 0, count: channels * hw)
    for i in 0..<hw {
        for ch in 0..<channels {
            let value: UInt8
            if image.channels == channels {
                value = p[i * channels + ch]
            } else if channels == 3 {
                value = p[i]  // gray -> RGB
            } else {
                // PIL's rgb2l: ITU-R 601-2 weights in 16-bit fixed point, rounded (L24(rgb) >> 16)
                let r = Int(p[i * 3]), g = Int(p[i * 3 + 1]), b = Int(p[i * 3 + 2])
                value = UInt8((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)
            }
            x[ch * hw + i] = 2 * (Float(value) / 255) - 1
        }
    }
    return x
}

/// An inpainting mask from a PNG of the image's size: grey levels / 255 (RGB as PIL's convert("L")).
func maskValues(_ path: String, height: Int, width: Int) throws -> [Float] {
    try initSample(path, channels: 1, height: height, width: width).map { ($0 + 1) / 2 }
}

/// Images laid out row by row with a 2-pixel gap, each scaled up by nearest neighbour.
struct Grid {
    let rows: Int, columns: Int, height: Int, width: Int, channels: Int, scale: Int
    let gap = 2
    var pixelWidth: Int { columns * width * scale + (columns + 1) * gap }
    var pixelHeight: Int { rows * height * scale + (rows + 1) * gap }

    func compose(_ nhwc: [UInt8], batch: Int, sourceChannels: Int) -> [UInt8] {
        var out = [UInt8](repeating: 255, count: pixelWidth * pixelHeight * channels)
        for i in 0..<min(batch, rows * columns) {
            let r = i / columns, c = i % columns
            let x0 = gap + c * (width * scale + gap), y0 = gap + r * (height * scale + gap)
            for y in 0..<(height * scale) {
                for x in 0..<(width * scale) {
                    let src = ((i * height + y / scale) * width + x / scale) * sourceChannels
                    let dst = ((y0 + y) * pixelWidth + x0 + x) * channels
                    for ch in 0..<channels { out[dst + ch] = nhwc[src + ch] }
                }
            }
        }
        return out
    }
}

func write(_ bytes: [UInt8], to path: String) throws {
    guard let f = fopen(path, "wb") else {
        throw DiffusionError(.io, "cannot write \(path): \(String(cString: strerror(errno)))")
    }
    defer { fclose(f) }
    guard bytes.withUnsafeBytes({ fwrite($0.baseAddress, 1, $0.count, f) }) == bytes.count else {
        throw DiffusionError(.io, "cannot write \(path): \(String(cString: strerror(errno)))")
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func format2(_ x: Double) -> String {
    let hundredths = Int((x * 100).rounded())
    let frac = hundredths % 100
    return "\(hundredths / 100).\(frac < 10 ? "0" : "")\(frac)"
}
