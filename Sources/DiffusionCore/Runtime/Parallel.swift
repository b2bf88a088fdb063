import CDiffusion
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Runs `body(i)` for every i in 0..<count on up to `threads` threads.
///
/// Work is split by index, never by thread: each index is computed by exactly one call, so the
/// result does not depend on the thread count (DESIGN.md §3, determinism). Workers take the next
/// index from a shared counter, so uneven indices do not leave a thread idle at the end. The
/// library's own `WorkerPool` runs it, or Dispatch when the pool is taken.
@inline(__always)
func parallelFor(_ count: Int, threads: Int, _ body: (Int) -> Void) {
    parallelFor(count, threads: threads) { i, _ in body(i) }
}

/// The threads `parallelFor(count, threads:)` runs on at most: its bodies see slots 0..<this.
@inline(__always)
func parallelSlots(_ count: Int, threads: Int) -> Int { max(1, min(max(threads, 1), count)) }

/// `parallelFor` whose body also gets the slot of the thread running it, in
/// 0..<parallelSlots(count, threads:): no two calls at once share a slot, so per-slot scratch
/// allocated by the caller (in its arena, the same every call) replaces allocations in the body.
@inline(__always)
func parallelFor(_ count: Int, threads: Int, _ body: (Int, Int) -> Void) {
    let workers = parallelSlots(count, threads: threads)
    if workers <= 1 {
        for i in 0..<count { body(i, 0) }
        return
    }
    // Indices go out in chunks (about 16 per worker) so tiny bodies do not fight over the counter.
    let chunk = max(1, count / (workers * 16))
    // Which thread runs which index varies, so allocations in the body stay out of the arena.
    Arena.suspended {
        withoutActuallyEscaping(body) { body in
            let region = WorkerPool.Region(body: body, count: count, chunk: chunk)
            if WorkerPool.shared.run(region, helpers: workers - 1) { return }
            DispatchQueue.concurrentPerform(iterations: workers) { slot in region.run(slot: slot) }
            region.joined()
        }
    }
}

/// The CPUs this process may run on: its affinity mask (taskset, cgroup cpusets), else the
/// online CPUs.
public func cpuCount() -> Int {
    let affinity = Int(cdiffusion_affinity_cpus())
    if affinity > 0 { return affinity }
    return max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
}
