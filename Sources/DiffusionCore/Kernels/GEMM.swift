import CDiffusion
import Synchronization

/// Row-major C = alpha * op(A) * op(B) + beta * C through OpenBLAS. Call it from the thread that
/// owns the work, never from inside `parallelFor` unless `blasThreads(1)` is in force.
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

/// OpenBLAS's thread count (process-wide). GEMMs are the only work running while OpenBLAS
/// threads: `parallelFor` regions never call a threaded GEMM. OpenBLAS splits a GEMM over rows
/// and columns of C, never over K, so every element is summed in the same order whatever the
/// thread count.
@inline(__always)
func blasThreads(_ n: Int) {
    if lastBlasThreads.exchange(n, ordering: .relaxed) != n { openblas_set_num_threads(Int32(n)) }
}
private let lastBlasThreads = Atomic<Int>(0)
