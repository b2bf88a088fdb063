/// torch.nn.Linear: y[m, out] = x[m, in] · W[out, in]^T + b, the weight in its stored dtype.
public struct Linear {
    public let weight: StoredTensor
    public let bias: [Float]?
    public let inFeatures: Int, outFeatures: Int

    public init(weight: StoredTensor, bias: [Float]?, inFeatures: Int, outFeatures: Int) {
        self.weight = weight; self.bias = bias; self.inFeatures = inFeatures; self.outFeatures = outFeatures
    }

    /// x: rows × inFeatures, row-major. Returns rows × outFeatures (single-threaded; for small inputs).
    public func callAsFunction(_ x: UnsafePointer<Float>, rows: Int) -> [Float] {
        var y = [Float](repeating: 0, count: rows * outFeatures)
        y.withUnsafeMutableBufferPointer { apply(x, rows: rows, into: $0.baseAddress!, threads: 1) }
        return y
    }

    /// y (rows × outFeatures, row stride ldy) = x (rows × inFeatures, row stride ldx) W^T + b.
    /// Fixed tiles of rows (or of output columns when there are few rows), so any thread count
    /// gives the same bytes.
    public func apply(_ x: UnsafePointer<Float>, rows: Int, ldx: Int? = nil, into y: UnsafeMutablePointer<Float>,
                      ldy: Int? = nil, threads: Int) {
        let ldx = ldx ?? inFeatures, ldy = ldy ?? outFeatures
        // Large row tiles: OpenBLAS packs the weight panel once per call, so small tiles repack it
        // over and over; few rows split the output columns instead.
        let rowTile = 1024
        let rowTiles = (rows + rowTile - 1) / rowTile
        let colSplit = rowTiles >= 4 ? 1 : max(1, min(8, outFeatures / 128))
        let colTile = (outFeatures + colSplit - 1) / colSplit
        weight.withFloats(threads: threads) { w in
            parallelFor(rowTiles * colSplit, threads: threads) { job in
                let r0 = (job / colSplit) * rowTile, m = min(rowTile, rows - r0)
                let c0 = (job % colSplit) * colTile, n = min(colTile, outFeatures - c0)
                guard m > 0, n > 0 else { return }
                let c = y + r0 * ldy + c0
                if let bias {
                    bias.withUnsafeBufferPointer { b in
                        for r in 0..<m { (c + r * ldy).update(from: b.baseAddress! + c0, count: n) }
                    }
                }
                sgemm(transB: true, m: m, n: n, k: inFeatures, a: x + r0 * ldx, lda: ldx,
                      b: w + c0 * inFeatures, ldb: inFeatures, beta: bias == nil ? 0 : 1, c: c, ldc: ldy)
            }
        }
    }
}
