import CDiffusion

/// torch.nn.Linear: y[m, out] = x[m, in] · W[out, in]^T + b, the weight as gemm's B panels in its
/// stored dtype (`PackedPanels`).
public struct Linear {
    public let weight: StoredTensor
    let packed: PackedPanels
    public let bias: [Float]?
    public let inFeatures: Int, outFeatures: Int

    public init(weight: StoredTensor, bias: [Float]?, inFeatures: Int, outFeatures: Int) {
        self.weight = weight; self.bias = bias; self.inFeatures = inFeatures; self.outFeatures = outFeatures
        precondition(weight.count == inFeatures * outFeatures, "linear weight shape")
        packed = weight.packed(k: inFeatures, width: outFeatures, strideK: 1, strideL: inFeatures, panel: MicroKernel.cols)
    }

    /// x: rows × inFeatures, row-major. Returns rows × outFeatures (single-threaded; for small inputs).
    public func callAsFunction(_ x: UnsafePointer<Float>, rows: Int) throws -> [Float] {
        var y = [Float](repeating: 0, count: rows * outFeatures)
        try y.withUnsafeMutableBufferPointer { try apply(x, rows: rows, into: $0.baseAddress!, threads: 1) }
        return y
    }

    /// y (rows × outFeatures, row stride ldy) = x (rows × inFeatures, row stride ldx) W^T + b,
    /// one gemm with the weight read in its stored dtype (fixed tiles: any thread count gives the
    /// same bytes).
    public func apply(_ x: UnsafePointer<Float>, rows: Int, ldx: Int? = nil, into y: UnsafeMutablePointer<Float>,
                      ldy: Int? = nil, threads: Int) throws {
        let ldx = ldx ?? inFeatures, ldy = ldy ?? outFeatures
        let out = GEMMOutput(c: y, ldc: ldy, n: outFeatures)
        if packed.pairs {
            // bf16: the input rounded once into rows of pairs, which the micro-kernel reads in place.
            let ldw = (inFeatures + 1) / 2
            let words = try FloatBuffer(count: max(1, rows * ldw))
            let w = UnsafeMutableRawPointer(words.pointer).assumingMemoryBound(to: UInt32.self)
            let chunk = max(1, 4096 / max(1, inFeatures))
            parallelFor((rows + chunk - 1) / chunk, threads: threads) { c in
                for r in (c * chunk)..<min(rows, (c + 1) * chunk) { cdiffusion_bf16_rows(x + r * ldx, inFeatures, w + r * ldw) }
            }
            let a = PairRowsSource(base: UnsafePointer(w), ld: ldw)
            try packed.withPanels(threads: threads) { b in
                try bias.withPointer { bp in
                    try gemm(m: rows, n: outFeatures, k: inFeatures, a: a, b: b, out: out, bias: bp.map { .columns($0) } ?? .none,
                         wideColumns: true, threads: threads)
                }
            }
            withExtendedLifetime(words) {}
            return
        }
        let a = RowsSource(base: x, ld: ldx)
        try packed.withPanels(threads: threads) { b in
            try bias.withPointer { bp in
                try gemm(m: rows, n: outFeatures, k: inFeatures, a: a, b: b, out: out, bias: bp.map { .columns($0) } ?? .none,
                     wideColumns: true, threads: threads)
            }
        }
    }
}
