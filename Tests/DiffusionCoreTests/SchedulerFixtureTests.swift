import Foundation
import Testing
import DiffusionCore

/// DDPM/DDIM step by step against diffusers' schedulers, fed the same model outputs and noise.
@Suite struct SchedulerFixtureTests {
    static let cases = Fixtures.cases("schedulers").filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }

    @Test(arguments: cases)
    func stepsMatchDiffusers(_ name: String) throws {
        let meta = try Fixtures.json("schedulers/\(name).json")
        let trace = try Fixtures.tensors("schedulers/\(name).safetensors")
        var config = SchedulerConfig(for: meta["scheduler"] as! String)
        let overrides = try JSONSerialization.data(withJSONObject: meta["overrides"] as! [String: Any])
        try config.apply(try JSONValue.parse(String(decoding: overrides, as: UTF8.self)))
        let steps = meta["steps"] as! Int
        let ddim = meta["scheduler"] as! String == "ddim"
        let eta = Float(meta["eta"] as? Double ?? 0)
        let scheduler: Scheduler = ddim ? try DDIMScheduler(config: config, steps: steps, eta: eta)
                                        : try DDPMScheduler(config: config, steps: steps)
        #expect(scheduler.timesteps == (meta["timesteps"] as! [Int]).map(Float.init))
        let acp = try #require(trace["alphas_cumprod"]).values
        #expect(Fixtures.maxAbsDiff(config.alphasCumprod(), acp) <= 1e-6, "\(name): alphas_cumprod")
        let noiseUsed = meta["noise_used"] as! [Bool]
        for i in 0..<steps {
            let sample = try #require(trace["sample_\(i)"]).values.map { Float($0) }
            let output = try #require(trace["model_output_\(i)"]).values.map { Float($0) }
            let noise = try #require(trace["noise_\(i)"]).values.map { Float($0) }
            #expect(scheduler.needsNoise(at: i) == noiseUsed[i], "\(name) step \(i): noise drawn")
            var prev = [Float](repeating: 0, count: sample.count)
            var x0 = prev
            prev.withUnsafeMutableBufferPointer { p in
                x0.withUnsafeMutableBufferPointer { x in
                    if let s = scheduler as? DDIMScheduler {
                        s.step(index: i, modelOutput: output, sample: sample, noise: noise,
                               count: sample.count, batch: 1, prev: p.baseAddress!, predOriginal: x.baseAddress!)
                    } else if let s = scheduler as? DDPMScheduler {
                        s.step(index: i, modelOutput: output, sample: sample, noise: noise,
                               count: sample.count, batch: 1, prev: p.baseAddress!, predOriginal: x.baseAddress!)
                    }
                }
            }
            let expected = try #require(trace["prev_sample_\(i)"]).values
            let scale = max(1, expected.map(abs).max()!)
            #expect(Fixtures.maxAbsDiff(prev, expected) <= 1e-5 * scale, "\(name) step \(i): prev_sample")
            let expectedX0 = try #require(trace["pred_original_sample_\(i)"]).values
            #expect(Fixtures.maxAbsDiff(x0, expectedX0) <= 1e-5 * max(1, expectedX0.map(abs).max()!),
                    "\(name) step \(i): pred_original_sample")
        }
    }
}

/// DDPM/DDIM timesteps where numpy's arithmetic decides (values from numpy 2.4).
@Suite struct IntegerTimestepTests {
    @Test func trailingFollowsNumpyArange() throws {
        var config = SchedulerConfig(for: "ddim")
        try config.apply(.object([("timestep_spacing", .string("trailing"))]))
        // np.round(np.arange(1000, 0, -1000/48)) - 1 starts 999, 978, 957, 936 (not 937)
        #expect(Array(try config.timesteps(steps: 48).prefix(6)) == [999, 978, 957, 936, 916, 895])
        #expect(try config.timesteps(steps: 7) == [999, 856, 713, 570, 428, 285, 142])
    }

    @Test func outOfRangeTimestepsAreRefused() throws {
        var trailing = SchedulerConfig(for: "ddim")
        try trailing.apply(.object([("timestep_spacing", .string("trailing"))]))
        // numpy's arange gives 62 values for 61 steps, the last -1 (diffusers would wrap to ᾱ_999)
        #expect(throws: DiffusionError.self) { try DDIMScheduler(config: trailing, steps: 61, eta: 0) }
        var leading = SchedulerConfig(for: "ddim")
        try leading.apply(.object([("steps_offset", .number(1))]))
        #expect(throws: DiffusionError.self) { try DDPMScheduler(config: leading, steps: 1000) }
        #expect(try leading.timesteps(steps: 999).first == 999)
    }
}
