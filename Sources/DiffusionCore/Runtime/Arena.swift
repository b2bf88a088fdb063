import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A sampler's memory plan for its network evaluations: every evaluation allocates the same
/// tensors in the same order, so the first one is recorded (each block's size, when it was taken
/// and when it was given back) and the blocks that do not outlive the evaluation get fixed offsets
/// in one allocation, packed so that blocks alive at the same time never overlap (greedy by size,
/// lowest fitting offset). Later evaluations take those offsets instead of asking the allocator,
/// so steady-state sampling allocates no tensor memory, whatever the sizes (the process-wide
/// `BufferPool` keeps at most 32 MB blocks and 256 MB in all).
///
/// Safety does not rest on the recording being right: a replaying evaluation checks every take
/// and give against the recorded order, sizes included. At the first difference it stops placing
/// blocks in the arena (the rest come from the pool), so blocks placed before it are exactly the
/// planned live set, which is disjoint. An evaluation that differed is recorded anew and planned
/// again; after `maxReplans` differing evaluations in a row the arena gives up (everything from
/// the pool). Allocations inside parallel regions never use the arena (their order depends on
/// which thread runs what).
public final class Arena: @unchecked Sendable {
    /// The planned block: owned by the arena and by every buffer placed in it, so it outlives
    /// them whatever order things are freed in.
    final class Storage {
        let base: UnsafeMutableRawPointer
        let bytes: Int
        init?(bytes: Int) {
            var raw: UnsafeMutableRawPointer?
            guard posix_memalign(&raw, 4096, max(bytes, 64)) == 0, let raw else { return nil }
            base = raw
            self.bytes = bytes
        }
        deinit { free(base) }
    }

    /// What a buffer taken inside an evaluation carries: where it came from and its place in the
    /// evaluation's order.
    struct Ticket {
        let arena: Arena
        let storage: Storage?
        let generation: Int
        let id: Int
    }

    struct Plan {
        /// Takes (the id, ≥ 0) and gives (−1 − id) in order.
        var events: [Int]
        var sizes: [Int]
        /// Per id: offset in the storage, or −1 for a block that outlives the evaluation.
        var offsets: [Int]
        var bytes: Int
    }

    /// Counters, for tests and reports.
    public struct Statistics: Equatable, Sendable {
        /// Evaluations run in the arena's scope, and those that followed the plan to the end.
        public var evaluations = 0, replayed = 0
        /// Blocks placed in the arena, and blocks taken from the pool inside a scope (those that
        /// outlive the evaluation, and all of them while recording or after a difference).
        public var arenaTakes = 0, poolTakes = 0
        /// Plans made, and the bytes of the current one.
        public var plans = 0, plannedBytes = 0
        public var disabled = false
    }

    struct State {
        var plan: Plan?
        var storage: Storage?
        var events: [Int] = []
        var sizes: [Int] = []
        var generation = 0
        var active = false
        var following = false
        var differing = 0
        var stats = Statistics()
    }

    static let maxReplans = 3
    private let state = Locked<State>(State())

    public init() {}

    public var statistics: Statistics { state.withLock { $0.stats } }

    /// Frees the planned block (when no buffer still uses it) but keeps the plan: the next
    /// evaluation allocates it again. For the time between runs, such as decoding.
    public func releaseStorage() {
        state.withLock { $0.storage = nil }
    }

    /// Runs one network evaluation with its tensor allocations served by the arena.
    public func evaluate<T>(_ body: () throws -> T) rethrows -> T {
        let nested = state.withLock { s -> Bool in
            if s.active || s.stats.disabled { return true }
            s.active = true
            s.generation += 1
            s.events.removeAll(keepingCapacity: true)
            s.sizes.removeAll(keepingCapacity: true)
            s.stats.evaluations += 1
            s.following = false
            if let plan = s.plan {
                if s.storage == nil { s.storage = Storage(bytes: plan.bytes) }
                s.following = s.storage != nil
            }
            return false
        }
        if nested { return try body() }
        let outer = Arena.current
        Arena.setCurrent(self)
        var completed = false
        defer {
            Arena.setCurrent(outer)
            finish(completed: completed)
        }
        let result = try body()
        completed = true
        return result
    }

    /// An evaluation that threw (cancelled, bad output) keeps the plan as it was.
    private func finish(completed: Bool) {
        state.withLock { s in
            s.active = false
            guard completed else { return }
            if s.following, let plan = s.plan, s.events.count == plan.events.count {
                s.stats.replayed += 1
                s.differing = 0
                return
            }
            if s.plan != nil {
                s.differing += 1
                if s.differing > Arena.maxReplans {
                    s.stats.disabled = true
                    s.plan = nil
                    s.storage = nil
                    s.stats.plannedBytes = 0
                    return
                }
            }
            let plan = Arena.plan(events: s.events, sizes: s.sizes)
            s.plan = plan
            // Buffers still in the old block keep it alive; the new plan gets its own, now, so
            // the next evaluation allocates nothing.
            s.storage = nil
            s.storage = Storage(bytes: plan.bytes)
            s.stats.plans += 1
            s.stats.plannedBytes = plan.bytes
        }
    }

    func take(bytes: Int) throws -> (UnsafeMutableRawPointer, Ticket) {
        let placed = state.withLock { s -> (UnsafeMutableRawPointer?, Ticket) in
            let id = s.sizes.count
            let t = s.events.count
            s.events.append(id)
            s.sizes.append(bytes)
            if s.following, let plan = s.plan, let storage = s.storage, t < plan.events.count,
               plan.events[t] == id, plan.sizes[id] == bytes {
                if plan.offsets[id] >= 0 {
                    s.stats.arenaTakes += 1
                    return (storage.base + plan.offsets[id], Ticket(arena: self, storage: storage, generation: s.generation, id: id))
                }
            } else {
                s.following = false
            }
            s.stats.poolTakes += 1
            return (nil, Ticket(arena: self, storage: nil, generation: s.generation, id: id))
        }
        if let p = placed.0 { return (p, placed.1) }
        return (try BufferPool.shared.take(bytes: bytes, reuse: true), placed.1)
    }

    func give(_ ticket: Ticket, _ pointer: UnsafeMutableRawPointer, bytes: Int) {
        state.withLock { s in
            guard s.active, s.generation == ticket.generation else { return }
            let t = s.events.count
            s.events.append(-1 - ticket.id)
            if s.following, let plan = s.plan, t < plan.events.count, plan.events[t] == -1 - ticket.id { return }
            s.following = false
        }
        if ticket.storage == nil { BufferPool.shared.give(pointer, bytes: bytes) }
    }

    /// Offsets for the blocks given back within the recording: largest first, each at the lowest
    /// offset where it overlaps no placed block alive at the same time.
    static func plan(events: [Int], sizes: [Int]) -> Plan {
        let n = sizes.count
        var start = [Int](repeating: 0, count: n), end = [Int](repeating: -1, count: n)
        for (t, e) in events.enumerated() {
            if e >= 0 { start[e] = t } else { end[-1 - e] = t }
        }
        var offsets = [Int](repeating: -1, count: n)
        let order = (0..<n).filter { end[$0] >= 0 }.sorted { sizes[$0] != sizes[$1] ? sizes[$0] > sizes[$1] : start[$0] < start[$1] }
        var placed: [Int] = []
        var total = 0
        var busy: [(Int, Int)] = []
        for id in order {
            busy.removeAll(keepingCapacity: true)
            for other in placed where start[other] <= end[id] && start[id] <= end[other] {
                busy.append((offsets[other], offsets[other] + sizes[other]))
            }
            busy.sort { $0.0 < $1.0 }
            var offset = 0
            for (lo, hi) in busy {
                if offset + sizes[id] <= lo { break }
                offset = max(offset, hi)
            }
            offsets[id] = offset
            total = max(total, offset + sizes[id])
            placed.append(id)
        }
        return Plan(events: events, sizes: sizes, offsets: offsets, bytes: total)
    }

    // MARK: The evaluation running on this thread

    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    /// The arena of the evaluation running on this thread (not retained: `evaluate` holds it).
    static var current: Arena? {
        guard let p = pthread_getspecific(key) else { return nil }
        return Unmanaged<Arena>.fromOpaque(p).takeUnretainedValue()
    }

    static func setCurrent(_ arena: Arena?) {
        pthread_setspecific(key, arena.map { Unmanaged.passUnretained($0).toOpaque() })
    }

    /// Runs `body` with no arena on this thread (a parallel region, whose allocation order
    /// depends on scheduling).
    @inline(__always)
    static func suspended<T>(_ body: () throws -> T) rethrows -> T {
        guard let p = pthread_getspecific(key) else { return try body() }
        pthread_setspecific(key, nil)
        defer { pthread_setspecific(key, p) }
        return try body()
    }
}
