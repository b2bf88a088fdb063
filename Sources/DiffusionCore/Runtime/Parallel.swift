import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Runs `body(i)` for every i in 0..<count on up to `threads` threads.
///
/// Work is split by index, never by thread: each index is computed by exactly one call, so the
/// result does not depend on the thread count (DESIGN.md §3, determinism).
@inline(__always)
func parallelFor(_ count: Int, threads: Int, _ body: (Int) -> Void) {
    let workers = min(max(threads, 1), count)
    if workers <= 1 {
        for i in 0..<count { body(i) }
        return
    }
    DispatchQueue.concurrentPerform(iterations: workers) { w in
        var i = w
        while i < count {
            body(i)
            i += workers
        }
    }
}

/// The number of online CPUs.
public func cpuCount() -> Int {
    max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
}
