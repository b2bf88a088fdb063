import Foundation
import Testing
@testable import DiffusionCore

/// The variance-preserving schedulers beyond DDPM/DDIM (PNDM, LCM) and DDPM's learned variances:
/// what the sampler fixtures do not reach (add_noise, classifier-guidance mean shift, settings).
@Suite struct VPSchedulerTests {
    static func config(_ name: String, _ overrides: [(String, JSONValue)] = []) throws -> SchedulerConfig {
        var config = SchedulerConfig(for: name)
        try config.apply(.object(overrides))
        return config
    }

    static func values(_ count: Int, seed: UInt64) -> [Float] {
        var generator = TorchGenerator(seed: seed)
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { generator.fillNormal($0) }
        return out
    }

    /// add_noise of PNDM and LCM is diffusers' DDPM form at the iteration's timestep, in float32:
    /// alphas_cumprod[t] ** 0.5 * x_0 + (1 - alphas_cumprod[t]) ** 0.5 * noise.
    @Test(arguments: ["pndm_sd", "pndm_prk", "lcm_4"])
    func addNoiseIsDiffusersForm(_ fixture: String) throws {
        let meta = try Fixtures.json("samplers/\(fixture).json")
        let trace = try Fixtures.tensors("samplers/\(fixture).safetensors")
        let scheduler = try SamplerFixtureTests.scheduler(meta)
        let acp = try #require(trace["alphas_cumprod"]).values.map { Float($0) }
        let n = 32
        let x0 = Self.values(n, seed: 1), noise = Self.values(n, seed: 2)
        var out = [Float](repeating: 0, count: n)
        for index in scheduler.timesteps.indices {
            let a = acp[Int(scheduler.timesteps[index])]
            #expect(scheduler.alphaProd(at: index) == a, "\(fixture) iteration \(index): alphaProd")
            out.withUnsafeMutableBufferPointer { o in
                scheduler.addNoise(original: x0, noise: noise, count: n, index: index, into: o.baseAddress!)
            }
            let sa = a.squareRoot(), sb = (1 - a).squareRoot()
            for i in 0..<n { #expect(out[i] == sa * x0[i] + sb * noise[i], "\(fixture) iteration \(index) element \(i)") }
        }
    }

    /// Classifier guidance moves DDPM's mean by exactly Σ · shift, Σ the step's variance: with a
    /// learned variance, per element (learned: v; learned_range: exp(f log β_t + (1 − f) log β̃_t)).
    @Test(arguments: ["learned", "learned_range"])
    func meanShiftUsesLearnedVariance(_ varianceType: String) throws {
        let config = try Self.config("ddpm", [("variance_type", .string(varianceType))])
        let scheduler = try DDPMScheduler(config: config, steps: 10)
        #expect(scheduler.modelOutputChannelFactor == 2)
        let shape = SampleShape(batch: 2, channels: 2, height: 2, width: 2)
        let per = shape.perSample, count = shape.count
        let sample = Self.values(count, seed: 3), shift = Self.values(count, seed: 4)
        var output = Self.values(2 * count, seed: 5)
        // v: in [-1, 1] for learned_range, a positive variance for learned; different per sample
        for b in 0..<shape.batch {
            for k in 0..<per {
                let i = b * 2 * per + per + k
                output[i] = varianceType == "learned" ? 0.01 * (1 + tanh(output[i])) : tanh(output[i])
            }
        }
        let acp = config.alphasCumprod().map(Double.init)
        for index in [0, 4, 9] {
            var plain = [Float](repeating: 0, count: count), shifted = plain
            plain.withUnsafeMutableBufferPointer { p in
                scheduler.step(index: index, modelOutput: output, sample: sample, noise: nil, meanShift: nil,
                               shape: shape, prev: p.baseAddress!)
            }
            shifted.withUnsafeMutableBufferPointer { p in
                scheduler.step(index: index, modelOutput: output, sample: sample, noise: nil, meanShift: shift,
                               shape: shape, prev: p.baseAddress!)
            }
            let t = Int(scheduler.timesteps[index])
            let prevT = index + 1 < scheduler.timesteps.count ? Int(scheduler.timesteps[index + 1]) : -1
            let aT = acp[t], aPrev = prevT >= 0 ? acp[prevT] : 1
            let beta = 1 - aT / aPrev
            let posterior = max((1 - aPrev) / (1 - aT) * beta, 1e-20)
            for b in 0..<shape.batch {
                for k in 0..<per {
                    let i = b * per + k
                    let v = Double(output[b * 2 * per + per + k])
                    let frac = (v + 1) / 2
                    let variance = varianceType == "learned" ? v : exp(frac * log(beta) + (1 - frac) * log(posterior))
                    let moved = Double(shifted[i]) - Double(plain[i])
                    let want = variance * Double(shift[i])
                    #expect(abs(moved - want) <= 1e-5 * abs(want) + 1e-6 * max(1, abs(Double(plain[i]))),
                            "\(varianceType) iteration \(index) element \(i): moved \(moved), Σ·shift \(want)")
                }
            }
        }
    }

    /// Learned variances double the model's output channels; every other setting keeps C.
    @Test func modelOutputChannelFactor() throws {
        for (type, factor) in [("learned", 2), ("learned_range", 2), ("fixed_small", 1), ("fixed_large", 1)] {
            let s = try DDPMScheduler(config: try Self.config("ddpm", [("variance_type", .string(type))]), steps: 10)
            #expect(s.modelOutputChannelFactor == factor, "ddpm \(type)")
        }
        #expect(try PNDMScheduler(config: try Self.config("pndm"), steps: 10).modelOutputChannelFactor == 1)
        #expect(try LCMScheduler(config: try Self.config("lcm"), steps: 4).modelOutputChannelFactor == 1)
    }

    /// An unsupported setting fails with .unsupported and names its key; bad step counts are invalid arguments.
    @Test func unsupportedSettingsNameTheKey() throws {
        func error(_ body: () throws -> Scheduler) -> DiffusionError? {
            do { _ = try body(); return nil } catch let e as DiffusionError { return e } catch { return nil }
        }
        let cases: [(String, () throws -> Scheduler)] = [
            ("variance_type", { try DDPMScheduler(config: try Self.config("ddpm", [("variance_type", .string("fixed_large_log"))]), steps: 10) }),
            ("prediction_type", { try PNDMScheduler(config: try Self.config("pndm", [("prediction_type", .string("sample"))]), steps: 10) }),
        ]
        for (key, make) in cases {
            let e = try #require(error(make), "\(key): no error")
            #expect(e.code == .unsupported && e.message.contains(key), "\(key): \(e.message)")
        }
        let invalid: [(String, () throws -> Scheduler)] = [
            ("pndm steps 3 with PRK", { try PNDMScheduler(config: try Self.config("pndm"), steps: 3) }),
            ("lcm steps above original_inference_steps", { try LCMScheduler(config: try Self.config("lcm"), steps: 51) }),
            ("lcm original_inference_steps above num_train_timesteps",
             { try LCMScheduler(config: try Self.config("lcm", [("original_inference_steps", .number(2000))]), steps: 4) }),
            ("lcm steps 0", { try LCMScheduler(config: try Self.config("lcm"), steps: 0) }),
        ]
        for (what, make) in invalid {
            let e = try #require(error(make), "\(what): no error")
            #expect(e.code == .invalidArgument, "\(what): \(e.message)")
        }
    }

    /// PNDM's step kind follows its own counter, as diffusers' `counter`: started at a later
    /// iteration (img2img), the first call is a first-order PLMS step (and the second averages).
    @Test func pndmCountsItsOwnSteps() throws {
        let config = try Self.config("pndm", [("skip_prk_steps", .bool(true))])
        let late = try PNDMScheduler(config: config, steps: 10)
        let shape = SampleShape(batch: 1, channels: 2, height: 2, width: 2)
        var x = Self.values(shape.count, seed: 6)
        #expect(Array(late.timesteps.prefix(4)) == [900, 800, 800, 700])
        for index in 3..<late.timesteps.count {
            let output = x.map { 0.7 * $0 + 0.05 * cos(late.timesteps[index] / 100) }
            var prev = [Float](repeating: 0, count: shape.count)
            prev.withUnsafeMutableBufferPointer { p in
                late.step(index: index, modelOutput: output, sample: x, noise: nil, meanShift: nil, shape: shape,
                          prev: p.baseAddress!)
            }
            // step 3 (700 → 600) is first order: x_600 from eps alone
            if index == 3 {
                let a = late.alphasCumprod[700], ap = late.alphasCumprod[600]
                let want = zip(x, output).map { xi, e -> Float in
                    (ap / a).squareRoot() * xi - (ap - a) * e / (a * (1 - ap).squareRoot() + (a * (1 - a) * ap).squareRoot())
                }
                #expect(Fixtures.maxAbsDiff(prev, want.map(Double.init)) <= 1e-6)
            }
            x = prev
        }
        #expect(late.counter == late.timesteps.count - 3)
        #expect(x.allSatisfy { $0.isFinite })
    }
}
