import CDiffusion
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The library's own threads for `parallelFor`: persistent workers that spin briefly between
/// parallel regions (a network evaluation runs hundreds of them back to back) and sleep on a
/// condition variable after that, so an idle library takes no CPU.
///
/// One region at a time uses the pool; a region started while it is in use (another model
/// computing on another thread, or a parallelFor inside a parallelFor) runs on Dispatch's
/// threads instead, as every region did before. A child process forked after the pool started
/// has no workers: a `pthread_atfork` handler marks the pool taken there, so it uses Dispatch.
final class WorkerPool: @unchecked Sendable {
    static let shared = WorkerPool()

    /// A region: `body(index, slot)` for every index, handed out in chunks from a shared counter;
    /// `slot` numbers the threads running the region (0 the caller), so a body can use scratch
    /// its caller set aside per slot.
    final class Region: @unchecked Sendable {
        let body: (Int, Int) -> Void
        let count: Int, chunk: Int
        let next = Atomic<Int>(0)
        /// Released by the creator and by each runner when done, acquired by each runner and by
        /// the creator after the join: the happens-before edges Dispatch provides too, made
        /// visible to ThreadSanitizer (the statically linked libdispatch is not instrumented).
        let handoff = Atomic<Int>(0)
        init(body: @escaping (Int, Int) -> Void, count: Int, chunk: Int) {
            self.body = body; self.count = count; self.chunk = chunk
            handoff.store(0, ordering: .releasing)
        }

        func run(slot: Int) {
            _ = handoff.load(ordering: .acquiring)
            defer { handoff.add(1, ordering: .releasing) }
            while true {
                let start = next.wrappingAdd(chunk, ordering: .relaxed).oldValue
                if start >= count { return }
                for i in start..<min(count, start + chunk) { body(i, slot) }
            }
        }

        /// After all runners returned (the join), on the creator.
        func joined() { _ = handoff.load(ordering: .acquiring) }
    }

    /// One worker thread: `posted` counts the regions handed to it, `finished` those it is done with.
    final class Worker: @unchecked Sendable {
        let posted = Atomic<Int>(0), finished = Atomic<Int>(0)
        let sleeping = Atomic<Bool>(false)
        var region: Region?
        var slot = 0
        // Allocated, so their addresses never move (workers live as long as the process).
        let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

        init() {
            pthread_mutex_init(mutex, nil)
            pthread_cond_init(condition, nil)
        }

        func loop() {
            var seen = 0
            while true {
                var spins = 0
                while posted.load(ordering: .acquiring) == seen {
                    if spins < WorkerPool.spins {
                        spins += 1
                        spinPause()
                        continue
                    }
                    pthread_mutex_lock(mutex)
                    sleeping.store(true, ordering: .sequentiallyConsistent)
                    while posted.load(ordering: .sequentiallyConsistent) == seen { pthread_cond_wait(condition, mutex) }
                    sleeping.store(false, ordering: .relaxed)
                    pthread_mutex_unlock(mutex)
                }
                seen = posted.load(ordering: .acquiring)
                region?.run(slot: slot)
                region = nil
                finished.store(seen, ordering: .releasing)
            }
        }

        func post(_ r: Region, slot: Int) {
            region = r
            self.slot = slot
            posted.wrappingAdd(1, ordering: .sequentiallyConsistent)
            if sleeping.load(ordering: .sequentiallyConsistent) {
                pthread_mutex_lock(mutex)
                pthread_cond_signal(condition)
                pthread_mutex_unlock(mutex)
            }
        }

        func wait() {
            let target = posted.load(ordering: .relaxed)
            var spins = 0
            while finished.load(ordering: .acquiring) != target {
                spins += 1
                if spins < WorkerPool.spins { spinPause() } else { sched_yield() }
            }
        }
    }

    /// Pause iterations (~40 ns each) a waiting thread spins before it sleeps or yields: about
    /// 0.1 ms, longer than the serial gaps between a network's regions.
    static let spins = 2500

    static let maxHelpers = cpuCount() - 1

    private let inUse = Atomic<Bool>(false)
    private let workers = Locked<[Worker]>([])

    private init() {
        // A forked child has none of the workers: it keeps the pool marked in use forever.
        pthread_atfork(nil, nil) { WorkerPool.shared.inUse.store(true, ordering: .relaxed) }
    }

    /// Runs `region` on the caller and `helpers` workers; false (nothing run) when the pool is in
    /// use or this is a forked child.
    func run(_ region: Region, helpers: Int) -> Bool {
        guard inUse.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return false }
        defer { inUse.store(false, ordering: .releasing) }
        // No more threads than CPUs, the caller included: spinning workers beyond that take the
        // CPU from the ones working (cifar b1 with 8 threads on 2 CPUs: 257 ms against 124 ms on
        // Dispatch, which caps itself the same way). The indices, and so the results, are the same.
        guard let team = team(min(helpers, WorkerPool.maxHelpers)) else { return false }
        for (i, w) in team.enumerated() { w.post(region, slot: i + 1) }
        region.run(slot: 0)
        for w in team { w.wait() }
        return true
    }

    /// The first `helpers` workers, started on first need (nil if a thread cannot be started).
    private func team(_ helpers: Int) -> ArraySlice<Worker>? {
        workers.withLock { list -> ArraySlice<Worker>? in
            while list.count < helpers {
                let w = Worker()
                var thread = pthread_t()
                let context = Unmanaged.passRetained(w).toOpaque()
                let started = pthread_create(&thread, nil, { arg in
                    let worker = Unmanaged<Worker>.fromOpaque(arg!).takeRetainedValue()
                    worker.loop()
                    return nil
                }, context)
                if started != 0 {
                    Unmanaged<Worker>.fromOpaque(context).release()
                    return nil
                }
                pthread_detach(thread)
                list.append(w)
            }
            return list[0..<helpers]
        }
    }
}

@inline(__always)
private func spinPause() { cdiffusion_pause() }
