import Dispatch
import Synchronization
import Testing
@testable import DiffusionCore
#if canImport(Glibc)
import Glibc
#endif

// parallelFor on the library's worker pool: every index runs exactly once, whether the pool
// runs the region, a region nests inside another (Dispatch then runs the inner one), or several
// threads start regions at once (one gets the pool, the others Dispatch).

private final class Counter: Sendable {
    let value = Atomic<Int>(0)
    func add(_ n: Int) { value.wrappingAdd(n, ordering: .relaxed) }
    var count: Int { value.load(ordering: .relaxed) }
}

/// Runs parallelFor(count) and returns how many times each index ran.
private func counts(_ count: Int, threads: Int, nested: Int = 0) -> [Int] {
    let hits = (0..<count).map { _ in Counter() }
    parallelFor(count, threads: threads) { i in
        hits[i].add(1)
        if nested > 0 {
            let inner = (0..<nested).map { _ in Counter() }
            parallelFor(nested, threads: threads) { j in inner[j].add(1) }
            if inner.contains(where: { $0.count != 1 }) { hits[i].add(1000) }
        }
    }
    return hits.map(\.count)
}

@Test func workerPoolRunsEveryIndexOnce() {
    for threads in [2, 3, 5] {
        for count in [1, 2, 7, 100, 10_000] {
            #expect(counts(count, threads: threads) == Array(repeating: 1, count: count), "threads \(threads), count \(count)")
        }
    }
    // Many regions back to back (workers spin, then sleep, then wake).
    for round in 0..<2000 {
        let c = counts(1 + round % 37, threads: 2)
        if c != Array(repeating: 1, count: c.count) { Issue.record("region \(round): \(c)"); break }
    }
    // Gaps longer than the spin: the workers sleep and must be woken.
    for gap in 0..<20 {
        usleep(2000)
        #expect(counts(50, threads: 3) == Array(repeating: 1, count: 50), "after gap \(gap)")
    }
}

@Test func workerPoolNestedAndConcurrentRegions() {
    #expect(counts(16, threads: 2, nested: 9) == Array(repeating: 1, count: 16))
    let failures = Counter()
    DispatchQueue.concurrentPerform(iterations: 4) { _ in
        for _ in 0..<200 where counts(64, threads: 2) != Array(repeating: 1, count: 64) { failures.add(1) }
    }
    #expect(failures.count == 0)
}
