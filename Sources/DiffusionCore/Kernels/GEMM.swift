import CDiffusion

/// Row-major C = alpha * op(A) * op(B) + beta * C through single-threaded OpenBLAS.
@inline(__always)
func sgemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
           alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
           b: UnsafePointer<Float>, ldb: Int,
           beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
    cblas_sgemm(Int32(CDIFFUSION_ROW_MAJOR),
                Int32(transA ? CDIFFUSION_TRANS : CDIFFUSION_NO_TRANS),
                Int32(transB ? CDIFFUSION_TRANS : CDIFFUSION_NO_TRANS),
                Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// OpenBLAS runs on the calling thread: parallelism comes from `parallelFor` over fixed tiles, so
/// OpenBLAS's own threads would only spin beside ours.
let blasSingleThreaded: Void = openblas_set_num_threads(1)
