/// The register-blocked inner kernel of `gemm`: a 6 × 16 tile of C accumulates the product of
/// one packed A panel (kc × 6: for each k, the 6 rows' values) and one packed B panel (kc × 16:
/// for each k, the 16 columns' values). Twelve 8-lane accumulators, two B vectors and one
/// broadcast fit the 16 ymm registers of AVX2; Swift emits vbroadcastss + vfmadd231ps with no
/// spills. On this Zen 3 (AVX2, no AVX-512) it is at the FMA peak: the same kernel in C
/// intrinsics, and 4 × 24 and 3 × 32 variants, all run 93-94 GFLOP/s per core from L1. The k loop
/// runs in order, so every element of C sums its products in the same order whatever the tiling
/// or thread count. Not inlined, so profiles show it apart (one call per kc ≥ 40 iterations).
enum MicroKernel {
    static let rows = 6, cols = 16

    typealias V = SIMD8<Float>

    /// C[0..<6, 0..<16] (row stride ldc) += A panel · B panel (= with `overwrite`: C need not be set).
    @inline(never)
    static func full(kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                     c: UnsafeMutablePointer<Float>, ldc: Int, overwrite: Bool = false) {
        product(kc: kc, a: a, rowStride: 1, kStride: rows, b: b, c: c, ldc: ldc, overwrite: overwrite)
    }

    /// `full` with A read in place from 6 row-major float32 rows (row r, element kk at
    /// a[r · lda + kk]): a linear layer's input needs no packing. The same operations in the same
    /// order as `full`, so the same bits.
    @inline(never)
    static func fullRows(kc: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>,
                         c: UnsafeMutablePointer<Float>, ldc: Int, overwrite: Bool = false) {
        product(kc: kc, a: a, rowStride: lda, kStride: 1, b: b, c: c, ldc: ldc, overwrite: overwrite)
    }

    /// The kernel body, A's element (row, kk) at a[row · rowStride + kk · kStride] (inlined into
    /// each entry point with its strides).
    @inline(__always)
    private static func product(kc: Int, a: UnsafePointer<Float>, rowStride: Int, kStride: Int, b: UnsafePointer<Float>,
                                c: UnsafeMutablePointer<Float>, ldc: Int, overwrite: Bool) {
        var c00 = V(), c01 = V(), c10 = V(), c11 = V(), c20 = V(), c21 = V()
        var c30 = V(), c31 = V(), c40 = V(), c41 = V(), c50 = V(), c51 = V()
        var ap = a
        var bp = UnsafeRawPointer(b)
        for _ in 0..<kc {
            let b0 = bp.load(as: V.self), b1 = bp.load(fromByteOffset: 32, as: V.self)
            var x = V(repeating: ap[0]); c00.addProduct(x, b0); c01.addProduct(x, b1)
            x = V(repeating: ap[rowStride]); c10.addProduct(x, b0); c11.addProduct(x, b1)
            x = V(repeating: ap[2 * rowStride]); c20.addProduct(x, b0); c21.addProduct(x, b1)
            x = V(repeating: ap[3 * rowStride]); c30.addProduct(x, b0); c31.addProduct(x, b1)
            x = V(repeating: ap[4 * rowStride]); c40.addProduct(x, b0); c41.addProduct(x, b1)
            x = V(repeating: ap[5 * rowStride]); c50.addProduct(x, b0); c51.addProduct(x, b1)
            ap += kStride
            bp += 64
        }
        let cr = UnsafeMutableRawPointer(c)
        @inline(__always) func add(_ row: Int, _ v0: V, _ v1: V) {
            let p = cr + row * ldc * 4
            if overwrite {
                p.storeBytes(of: v0, as: V.self); p.storeBytes(of: v1, toByteOffset: 32, as: V.self)
                return
            }
            p.storeBytes(of: p.loadUnaligned(as: V.self) + v0, as: V.self)
            p.storeBytes(of: p.loadUnaligned(fromByteOffset: 32, as: V.self) + v1, toByteOffset: 32, as: V.self)
        }
        add(0, c00, c01); add(1, c10, c11); add(2, c20, c21)
        add(3, c30, c31); add(4, c40, c41); add(5, c50, c51)
    }

    /// The same for a tile at the edge of C: only rows × cols of it exist.
    @inline(never)
    static func edge(kc: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                     c: UnsafeMutablePointer<Float>, ldc: Int, rows: Int, cols: Int, overwrite: Bool = false) {
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 6 * 16) { buffer in
            let t = buffer.baseAddress!
            t.initialize(repeating: 0, count: 6 * 16)
            full(kc: kc, a: a, b: b, c: t, ldc: 16)
            for r in 0..<rows {
                for j in 0..<cols { c[r * ldc + j] = overwrite ? t[r * 16 + j] : c[r * ldc + j] + t[r * 16 + j] }
            }
        }
    }
}
