/// torch.nn.Linear: y[m, out] = x[m, in] · W[out, in]^T + b.
public struct Linear {
    public let weight: FloatBuffer
    public let bias: FloatBuffer?
    public let inFeatures: Int, outFeatures: Int

    public init(weight: FloatBuffer, bias: FloatBuffer?, inFeatures: Int, outFeatures: Int) {
        self.weight = weight; self.bias = bias; self.inFeatures = inFeatures; self.outFeatures = outFeatures
    }

    /// x: rows × inFeatures, row-major. Returns rows × outFeatures.
    public func callAsFunction(_ x: UnsafePointer<Float>, rows: Int) -> [Float] {
        var y = [Float](repeating: 0, count: rows * outFeatures)
        y.withUnsafeMutableBufferPointer { yp in
            let c = yp.baseAddress!
            if let bias {
                for r in 0..<rows { (c + r * outFeatures).update(from: bias.pointer, count: outFeatures) }
            }
            sgemm(transB: true, m: rows, n: outFeatures, k: inFeatures, a: x, lda: inFeatures,
                  b: weight.pointer, ldb: inFeatures, beta: bias == nil ? 0 : 1, c: c, ldc: outFeatures)
        }
        return y
    }
}
