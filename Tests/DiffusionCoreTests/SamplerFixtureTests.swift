import Foundation
import Testing
@testable import DiffusionCore

/// Every scheduler of issue 4 against diffusers (Tests/Fixtures/samplers, tools/make_sampler_fixtures.py):
/// timesteps, init_noise_sigma, scale_model_input, noise draws, each step fed diffusers' own inputs,
/// and a whole loop on the toy denoiser with our own outputs.
@Suite struct SamplerFixtureTests {
    static let cases = Fixtures.cases("samplers").filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }

    /// The scheduler as the fixture's loop built it: our name, class defaults + the fixture's overrides.
    static func scheduler(_ meta: [String: Any]) throws -> Scheduler {
        let name = meta["scheduler"] as! String
        var config = SchedulerConfig(for: name)
        let overrides = try JSONSerialization.data(withJSONObject: meta["overrides"] as! [String: Any])
        try config.apply(try JSONValue.parse(String(decoding: overrides, as: UTF8.self)))
        return try SchedulerRegistry.make(name, config: config, steps: meta["steps"] as! Int, eta: 0)
    }

    /// The fixture's toy network: 0.7 x + 0.3 sin x + 0.05 cos(t / 100) in double, rounded to float32;
    /// learned variances append v = tanh(x) (learned_range) or 0.01 (1 + tanh x) (learned).
    static func toy(_ x: [Float], timestep t: Float, shape: SampleShape, variance: String?) -> [Float] {
        let c = cos(Double(t) / 100)
        let eps = x.map { v -> Float in let d = Double(v); return Float(0.7 * d + 0.3 * sin(d) + 0.05 * c) }
        guard let variance else { return eps }
        var out: [Float] = []
        let per = shape.perSample
        for b in 0..<shape.batch {
            let xs = x[(b * per)..<((b + 1) * per)]
            out += eps[(b * per)..<((b + 1) * per)]
            out += xs.map { v in Float(variance == "learned" ? 0.01 * (1 + tanh(Double(v))) : tanh(Double(v))) }
        }
        return out
    }

    static func relErr(_ a: [Float], _ b: [Double]) -> Double {
        Fixtures.maxAbsDiff(a, b) / max(1, b.map(abs).max() ?? 1)
    }

    @Test(arguments: cases)
    func stepsMatchDiffusers(_ name: String) throws {
        let meta = try Fixtures.json("samplers/\(name).json")
        let trace = try Fixtures.tensors("samplers/\(name).safetensors")
        let scheduler = try Self.scheduler(meta)
        let dims = meta["shape"] as! [Int]
        let shape = SampleShape(batch: dims[0], channels: dims[1], height: dims[2], width: dims[3])
        let iterations = meta["iterations"] as! Int

        let ts = try #require(trace["timesteps"]).values
        #expect(scheduler.timesteps.count == iterations, "\(name): iterations")
        try #require(scheduler.timesteps.count == ts.count)
        #expect(Fixtures.maxAbsDiff(scheduler.timesteps, ts) <= 1e-4, "\(name): timesteps \(scheduler.timesteps) vs \(ts)")
        let sigma0 = meta["init_noise_sigma"] as! Double
        #expect(abs(Double(scheduler.initNoiseSigma) - sigma0) <= 1e-6 * max(1, sigma0), "\(name): init_noise_sigma")
        let inputScale = meta["input_scale"] as! [Double]
        let noiseUsed = meta["noise_used"] as! [Bool]
        for i in 0..<iterations {
            #expect(abs(1 / Double(scheduler.inputDivisor(at: i)) - inputScale[i]) <= 1e-6 * inputScale[i],
                    "\(name) iteration \(i): input scale")
            #expect(scheduler.needsNoise(at: i) == noiseUsed[i], "\(name) iteration \(i): noise drawn")
        }

        // Each step fed diffusers' sample, model output and noise (the multistep history is diffusers' too).
        for i in 0..<iterations {
            let sample = try #require(trace["sample_\(i)"]).values.map { Float($0) }
            let output = try #require(trace["model_output_\(i)"]).values.map { Float($0) }
            let noise = try #require(trace["noise_\(i)"]).values.map { Float($0) }
            var prev = [Float](repeating: 0, count: sample.count)
            prev.withUnsafeMutableBufferPointer { p in
                scheduler.step(index: i, modelOutput: output, sample: sample, noise: noise, meanShift: nil,
                               shape: shape, prev: p.baseAddress!)
            }
            let err = Self.relErr(prev, try #require(trace["prev_sample_\(i)"]).values)
            #expect(err <= 1e-5, "\(name) iteration \(i): prev_sample relative error \(err)")
        }

        // The whole loop on our own outputs: start = randn * init_noise_sigma, toy model, fixture noise.
        let fresh = try Self.scheduler(meta)
        let variance = (meta["overrides"] as! [String: Any])["variance_type"] as? String
        let start = try #require(trace["start_rng"]).values.map { Float($0) }
        var x = start.map { $0 * fresh.initNoiseSigma }
        #expect(Self.relErr(x, try #require(trace["start"]).values) <= 1e-7, "\(name): start")
        for i in 0..<iterations {
            let d = fresh.inputDivisor(at: i)
            let input = x.map { $0 / d }
            let output = Self.toy(input, timestep: fresh.timesteps[i], shape: shape,
                                  variance: variance?.hasPrefix("learned") == true ? variance : nil)
            let noise = try #require(trace["noise_\(i)"]).values.map { Float($0) }
            var prev = [Float](repeating: 0, count: x.count)
            prev.withUnsafeMutableBufferPointer { p in
                fresh.step(index: i, modelOutput: output, sample: x, noise: noise, meanShift: nil,
                           shape: shape, prev: p.baseAddress!)
            }
            x = prev
        }
        let err = Self.relErr(x, try #require(trace["final"]).values)
        #expect(err <= 1e-4, "\(name): final relative error \(err)")
    }
}
