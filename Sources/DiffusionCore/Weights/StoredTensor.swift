/// A weight tensor as its file stores it (F32, F16 or BF16), backed by the file's mapping. Layers
/// see their matrices as gemm panels (`packed`), in the stored dtype; small vectors are widened
/// (`floats`).
public struct StoredTensor {
    public let file: SafeTensorsFile
    public let info: TensorInfo

    public var count: Int { info.count }
    public var shape: [Int] { info.shape }
    public var dtype: DType { info.dtype }

    /// Writes the tensor as float32 into `dst` (`count` values), in blocks over `threads`.
    public func widen(into dst: UnsafeMutablePointer<Float>, threads: Int = 1) {
        guard count > 0, let base = file.rawBytes(info).baseAddress else { return }
        let block = 1 << 16, size = info.dtype.byteSize, dtype = info.dtype, n = count
        parallelFor((n + block - 1) / block, threads: threads) { b in
            let start = b * block
            dtype.convert(base + start * size, count: min(block, n - start), to: dst + start)
        }
    }

    /// The tensor as gemm panels (see `PackedPanels`: packed on first use).
    func packed(k: Int, width: Int, strideK: Int, strideL: Int, panel: Int) -> PackedPanels {
        PackedPanels(self, k: k, width: width, strideK: strideK, strideL: strideL, panel: panel)
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
