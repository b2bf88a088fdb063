import Testing
@testable import DiffusionCore

/// The sampler's arena: the plan never overlaps blocks alive at the same time, replays serve
/// every block the recording gave back, a differing evaluation is safe, and a real sampler's
/// steady-state steps take tensors only from it.
@Suite struct ArenaTests {
    /// Checks a plan by brute force: any two arena blocks alive at overlapping times have disjoint
    /// byte ranges, and every block given back in the recording has an offset.
    static func checkDisjoint(_ plan: Arena.Plan) {
        var start: [Int: Int] = [:], end: [Int: Int] = [:]
        for (t, e) in plan.events.enumerated() { if e >= 0 { start[e] = t } else { end[-1 - e] = t } }
        let placed = plan.offsets.indices.filter { plan.offsets[$0] >= 0 }
        #expect(Set(placed) == Set(end.keys), "exactly the blocks given back are placed")
        for a in placed { for b in placed where a < b {
            let together = start[a]! <= end[b]! && start[b]! <= end[a]!
            let apart = plan.offsets[a] + plan.sizes[a] <= plan.offsets[b] || plan.offsets[b] + plan.sizes[b] <= plan.offsets[a]
            #expect(!together || apart, "blocks \(a) and \(b) overlap")
        } }
        #expect(placed.allSatisfy { plan.offsets[$0] + plan.sizes[$0] <= plan.bytes })
    }

    @Test func planOfAChainReusesMemory() {
        // x0 → x1 → x2 → x3, each freed once the next exists; x3 outlives the evaluation.
        let events = [0, 1, -1, 2, -2, 3, -3]
        let plan = Arena.plan(events: events, sizes: [64, 128, 64, 128])
        Self.checkDisjoint(plan)
        #expect(plan.offsets[3] == -1)
        #expect(plan.bytes == 192, "peak: 128 + 64 alive at once")
    }

    @Test func randomPlansAreDisjoint() {
        var rng = SplitMix64(state: 7)
        for _ in 0..<50 {
            var events: [Int] = [], sizes: [Int] = [], live: [Int] = []
            for _ in 0..<200 {
                if live.isEmpty || rng.next() % 3 != 0 {
                    live.append(sizes.count)
                    events.append(sizes.count)
                    sizes.append(64 * Int(1 + rng.next() % 64))
                } else {
                    let k = Int(rng.next() % UInt64(live.count))
                    events.append(-1 - live.remove(at: k))
                }
            }
            let plan = Arena.plan(events: events, sizes: sizes)
            Self.checkDisjoint(plan)
            // Never more than all placed blocks laid end to end, never less than the peak alive.
            var alive = 0, peak = 0
            for e in events where e >= 0 || plan.offsets[-1 - e] >= 0 {
                if e >= 0 { if plan.offsets[e] >= 0 { alive += sizes[e] } } else { alive -= sizes[-1 - e] }
                peak = max(peak, alive)
            }
            #expect(plan.bytes >= peak)
            #expect(plan.bytes <= plan.offsets.indices.filter { plan.offsets[$0] >= 0 }.reduce(0) { $0 + sizes[$1] })
        }
    }

    /// A fake evaluation: temporaries of several sizes, each filled with a tag and checked before
    /// it is dropped (an overlap would overwrite a live block's tag); returns one escaping buffer.
    static func evaluation(_ sizes: [Int], tag: Float) throws -> FloatBuffer {
        var live: [FloatBuffer] = []
        for (i, n) in sizes.enumerated() {
            let b = try FloatBuffer(count: n)
            b.pointer.update(repeating: tag + Float(i), count: n)
            live.append(b)
            if live.count > 2 {
                let old = live.removeFirst()
                let expected = tag + Float(i - 2)
                #expect((0..<old.count).allSatisfy { old.pointer[$0] == expected }, "block \(i - 2) was overwritten")
            }
        }
        let out = try FloatBuffer(count: 100)
        out.pointer.update(repeating: tag, count: 100)
        return out
    }

    @Test func replaysServeEveryTemporaryFromTheArena() throws {
        let arena = Arena()
        let sizes = [1000, 5000, 3000, 5000, 1000, 20000, 7]
        var outputs: [FloatBuffer] = []
        for k in 0..<4 { outputs.append(try arena.evaluate { try Self.evaluation(sizes, tag: Float(100 * k)) }) }
        let s = arena.statistics
        #expect(s.evaluations == 4 && s.replayed == 3 && s.plans == 1 && !s.disabled)
        // Each replay: all 7 temporaries from the arena, the escaping output from the pool.
        #expect(s.arenaTakes == 3 * 7)
        #expect(s.poolTakes == 8 + 3)
        for (k, o) in outputs.enumerated() { #expect((0..<100).allSatisfy { o.pointer[$0] == Float(100 * k) }) }
    }

    @Test func aDifferingEvaluationIsSafeAndReplanned() throws {
        let arena = Arena()
        let a = [1000, 5000, 3000, 5000, 1000], b = [1000, 5000, 4000, 2000, 9000, 1000]
        _ = try arena.evaluate { try Self.evaluation(a, tag: 1) }
        _ = try arena.evaluate { try Self.evaluation(b, tag: 2) }   // differs at its third block
        _ = try arena.evaluate { try Self.evaluation(b, tag: 3) }   // replays the new plan
        var s = arena.statistics
        #expect(s.plans == 2 && s.replayed == 1 && !s.disabled)
        // Evaluations that keep differing disable the arena; everything still works.
        for k in 0..<6 { _ = try arena.evaluate { try Self.evaluation(k % 2 == 0 ? a : b, tag: Float(10 + k)) } }
        s = arena.statistics
        #expect(s.disabled && s.plannedBytes == 0)
    }

    @Test func aThrowingEvaluationKeepsThePlan() throws {
        struct Stop: Error {}
        let arena = Arena()
        let sizes = [1000, 2000, 3000]
        _ = try arena.evaluate { try Self.evaluation(sizes, tag: 1) }
        #expect(throws: Stop.self) { try arena.evaluate { () throws -> Int in _ = try FloatBuffer(count: 1000); throw Stop() } }
        _ = try arena.evaluate { try Self.evaluation(sizes, tag: 2) }
        let s = arena.statistics
        #expect(s.plans == 1 && s.replayed == 1)
    }

    @Test func parallelRegionsStayOutOfTheArena() throws {
        let arena = Arena()
        for _ in 0..<3 {
            _ = try arena.evaluate { () -> Int in
                parallelFor(8, threads: 2) { _ in _ = try! FloatBuffer(count: 4096) }
                return 0
            }
        }
        let s = arena.statistics
        #expect(s.arenaTakes == 0 && s.poolTakes == 0 && s.replayed == 2)
    }

    /// A guided text-to-image sampler on the tiny SD pipeline: from the third step on, every
    /// temporary of the UNet comes from the arena; only its output (which outlives the
    /// evaluation) comes from the pool, and the arena's block is freed after the last step.
    @Test func samplerStepsReplayThePlan() throws {
        let model = try DiffusionModel(path: Fixtures.path("sd/sd1"), threads: 2)
        var p = SamplerParams()
        p.steps = 5
        p.seed = 3
        p.prompt = "a tiny test"
        let sampler = try Sampler(model: model, params: p)
        try sampler.setGuidanceScale(7.5)
        let arena = try #require(sampler.arena)
        try sampler.step()
        try sampler.step()
        let warm = arena.statistics
        for _ in 0..<3 { try sampler.step() }
        let s = arena.statistics
        #expect(s.evaluations == 5 && s.replayed == s.evaluations - s.plans && !s.disabled)
        #expect(s.replayed >= 3)
        #expect(s.poolTakes - warm.poolTakes == 3, "only the UNet output, once per step: \(s)")
        #expect(s.arenaTakes - warm.arenaTakes > 3 * 20, "\(s)")
        #expect(s.plannedBytes > 0)
    }
}
