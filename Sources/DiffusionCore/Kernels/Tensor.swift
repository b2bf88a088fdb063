#if canImport(Glibc)
import Glibc
#endif

/// Owned, 64-byte aligned float storage.
public final class FloatBuffer {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    public init(count: Int) {
        self.count = count
        var raw: UnsafeMutableRawPointer?
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        if posix_memalign(&raw, 64, (bytes + 63) & ~63) != 0 || raw == nil {
            fatalError("libdiffusion: out of memory allocating \(bytes) bytes")
        }
        pointer = raw!.bindMemory(to: Float.self, capacity: max(count, 1))
    }

    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        values.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { pointer.update(from: base, count: values.count) }
        }
    }

    deinit { free(pointer) }
}

/// A float32 NCHW tensor. Value semantics are not provided: kernels write into fresh tensors.
public struct Tensor {
    public let buffer: FloatBuffer
    public let n: Int, c: Int, h: Int, w: Int

    public init(n: Int, c: Int, h: Int, w: Int) {
        self.n = n; self.c = c; self.h = h; self.w = w
        buffer = FloatBuffer(count: n * c * h * w)
    }

    public init(n: Int, c: Int, h: Int, w: Int, zeroed: Bool) {
        self.init(n: n, c: c, h: h, w: w)
        if zeroed { buffer.pointer.update(repeating: 0, count: count) }
    }

    public var count: Int { n * c * h * w }
    public var hw: Int { h * w }
    public var data: UnsafeMutablePointer<Float> { buffer.pointer }

    public func copyToArray() -> [Float] {
        Array(UnsafeBufferPointer(start: data, count: count))
    }
}
