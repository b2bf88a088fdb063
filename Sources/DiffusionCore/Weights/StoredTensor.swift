/// A weight tensor as its file stores it (F32, F16 or BF16), backed by the file's mapping: never
/// copied whole. Kernels see float32 through `withFloats`, which lends the mapping itself for
/// aligned F32 data and otherwise widens into pooled scratch for the duration of one call.
public struct StoredTensor {
    public let file: SafeTensorsFile
    public let info: TensorInfo

    public var count: Int { info.count }
    public var shape: [Int] { info.shape }
    public var dtype: DType { info.dtype }

    /// The mapping's F32 data, if it can be used in place (F32, 4-byte aligned).
    private var inPlace: UnsafePointer<Float>? {
        let bytes = file.rawBytes(info)
        guard info.dtype == .f32, let base = bytes.baseAddress, Int(bitPattern: base) & 3 == 0 else { return nil }
        return base.assumingMemoryBound(to: Float.self)
    }

    /// Calls `body` with the tensor as `count` float32 values (exact widening of F16 / BF16).
    /// - warning: Do not escape the pointer.
    @inline(__always)
    public func withFloats<R>(threads: Int = 1, _ body: (UnsafePointer<Float>) throws -> R) rethrows -> R {
        if let p = inPlace { return try body(p) }
        let scratch = FloatBuffer(count: count)
        widen(into: scratch.pointer, threads: threads)
        return try withExtendedLifetime(scratch) { try body(UnsafePointer(scratch.pointer)) }
    }

    /// Writes the tensor as float32 into `dst` (`count` values), in blocks over `threads`.
    public func widen(into dst: UnsafeMutablePointer<Float>, threads: Int = 1) {
        guard count > 0, let base = file.rawBytes(info).baseAddress else { return }
        let block = 1 << 16, size = info.dtype.byteSize, dtype = info.dtype, n = count
        parallelFor((n + block - 1) / block, threads: threads) { b in
            let start = b * block
            dtype.convert(base + start * size, count: min(block, n - start), to: dst + start)
        }
    }

    /// Rows `first..<first+rows` of a tensor seen as [shape[0], rest] (an embedding lookup).
    public func widenRows(_ first: Int, _ rows: Int, into dst: UnsafeMutablePointer<Float>) {
        let rowCount = shape.dropFirst().reduce(1, *)
        guard let base = file.rawBytes(info).baseAddress else { return }
        info.dtype.convert(base + first * rowCount * info.dtype.byteSize, count: rows * rowCount, to: dst)
    }

    /// The whole tensor widened into an array (for small vectors: biases, norm parameters).
    public func floats() -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { buf, n in
            if let p = buf.baseAddress { widen(into: p) }
            n = count
        }
    }
}
