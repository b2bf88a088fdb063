import Foundation
import Testing
@testable import DiffusionCore

/// Euler, Euler ancestral, Heun and LMS beyond the diffusers traces: add_noise, Heun's interleaved
/// iterations, the LMS coefficients, numpy's trailing spacing and the settings refused.
@Suite struct SigmaSchedulerTests {
    static func make(_ name: String, _ overrides: [(String, JSONValue)] = [], steps: Int = 10) throws -> Scheduler {
        var config = SchedulerConfig(for: name)
        try config.apply(.object(overrides))
        return try SchedulerRegistry.make(name, config: config, steps: steps, eta: 0)
    }

    static func sigmas(_ s: Scheduler) -> [Float] {
        switch s {
        case let e as EulerDiscreteScheduler: return e.sigmas
        case let e as EulerAncestralDiscreteScheduler: return e.sigmas
        case let h as HeunDiscreteScheduler: return h.sigmas
        case let l as LMSDiscreteScheduler: return l.sigmas
        default: fatalError("not a σ scheduler")
        }
    }

    @Test(arguments: ["euler", "euler_a", "heun", "lms"])
    func addNoiseIsOriginalPlusSigmaNoise(_ name: String) throws {
        let s = try Self.make(name)
        let begin = 2 * s.order   // img2img's t_start × order
        let original: [Float] = (0..<12).map { Float($0) * 0.25 - 1.5 }
        let noise: [Float] = (0..<12).map { sin(Float($0) * 1.7) }
        var out = [Float](repeating: 0, count: 12)
        s.addNoise(original: original, noise: noise, count: 12, index: begin, into: &out)
        let sigma = Self.sigmas(s)[begin]
        for i in 0..<12 { #expect(out[i] == original[i] + noise[i] * sigma, "\(name) element \(i)") }
        // σ is the level of the iteration's model input: ᾱ = 1 / (1 + σ²), divisor sqrt(σ² + 1)
        let a = Double(s.alphaProd(at: begin))
        #expect(abs((1 / a - 1).squareRoot() - Double(sigma)) <= 1e-5 * Double(sigma))
        #expect(abs(Double(s.inputDivisor(at: begin)) - (Double(sigma * sigma) + 1).squareRoot()) <= 1e-6 * Double(sigma))
    }

    @Test(arguments: [1, 2, 10, 25])
    func heunInterleavesTwoIterationsPerStep(_ steps: Int) throws {
        let s = try #require(try Self.make("heun", steps: steps) as? HeunDiscreteScheduler)
        #expect(s.order == 2)
        #expect(s.timesteps.count == 2 * steps - 1)
        #expect(s.sigmas.count == 2 * steps)
        #expect(s.sigmas.last == 0)
        for k in stride(from: 1, to: s.timesteps.count, by: 2) {
            #expect(s.timesteps[k] == s.timesteps[k + 1])
            #expect(s.sigmas[k] == s.sigmas[k + 1])
        }
        let karras = try #require(try Self.make("heun", [("use_karras_sigmas", .bool(true))], steps: steps) as? HeunDiscreteScheduler)
        #expect(karras.timesteps.count == 2 * steps - 1)
    }

    @Test func lmsCoefficientsIntegrateTheLagrangeBasis() throws {
        let s = try #require(try Self.make("lms", steps: 12) as? LMSDiscreteScheduler)
        for t in 0..<12 {
            let order = min(t + 1, 4)
            let coeffs = (0..<order).map { s.coefficient(order: order, t: t, j: $0) }
            // the basis sums to 1, so the coefficients sum to σ_{t+1} − σ_t
            let width = Double(s.sigmas[t + 1]) - Double(s.sigmas[t])
            #expect(abs(coeffs.reduce(0, +) - width) <= 1e-12 * abs(width) + 1e-15, "t \(t)")
        }
        // order 2 by hand: ∫ (τ − σ_{t−1}) / (σ_t − σ_{t−1}) over [σ_t, σ_{t+1}]
        let a = Double(s.sigmas[1]), b = Double(s.sigmas[2]), p = Double(s.sigmas[0])
        let exact = ((b - p) * (b - p) - (a - p) * (a - p)) / 2 / (a - p)
        #expect(abs(s.coefficient(order: 2, t: 1, j: 0) - exact) <= 1e-12 * abs(exact))
    }

    /// np.arange(T, 0, −T/n) fills T + i·((T − T/n) − T): with n = 48 four values land on .5 from
    /// below (936, not 937), and with n = 61 numpy makes 62 values, the last −1.
    @Test func trailingSpacingFollowsNumpy() throws {
        var config = SchedulerConfig(for: "euler")
        try config.apply(.object([("timestep_spacing", .string("trailing"))]))
        let t48 = SigmaSchedule.spacedTimesteps(config, steps: 48)
        #expect(t48.count == 48)
        #expect(Array(t48[2...3]) == [957, 936])
        #expect(t48[15] == 686 && t48[27] == 436 && t48[39] == 186)
        let t61 = SigmaSchedule.spacedTimesteps(config, steps: 61)
        #expect(t61.count == 62)
        #expect(Array(t61.suffix(4)) == [48, 32, 15, -1])
    }

    @Test func unsupportedSettingsNameTheirKey() throws {
        let cases: [(String, [(String, JSONValue)], String)] = [
            ("euler", [("use_exponential_sigmas", .bool(true))], "use_exponential_sigmas"),
            ("euler", [("use_beta_sigmas", .bool(true))], "use_beta_sigmas"),
            ("euler", [("interpolation_type", .string("cubic"))], "interpolation_type"),
            ("euler", [("final_sigmas_type", .string("sigma_max"))], "final_sigmas_type"),
            ("euler", [("timestep_type", .string("sometimes"))], "timestep_type"),
            ("euler_a", [("prediction_type", .string("sample"))], "prediction_type"),
            ("heun", [("use_beta_sigmas", .bool(true))], "use_beta_sigmas"),
            ("lms", [("use_exponential_sigmas", .bool(true))], "use_exponential_sigmas"),
        ]
        for (name, overrides, key) in cases {
            do {
                _ = try Self.make(name, overrides)
                Issue.record("\(name) \(key): no error")
            } catch let e as DiffusionError {
                #expect(e.code == .unsupported, "\(name) \(key): \(e.code)")
                #expect(e.message.contains(key), "\(name): \(e.message)")
            }
        }
        // a wrong type is a bad file, a step count out of range a bad argument
        #expect(throws: DiffusionError.self) { try Self.make("euler", [("sigma_min", .string("small"))]) }
        for name in ["euler", "euler_a", "heun", "lms"] {
            for steps in [1001, 5000] {
                do {
                    var config = SchedulerConfig(for: name)
                    try config.apply(.object([]))
                    _ = try SchedulerRegistry.make(name, config: config, steps: steps, eta: 0)
                    Issue.record("\(name) steps \(steps): no error")
                } catch let e as DiffusionError {
                    #expect(e.code == .invalidArgument, "\(name) steps \(steps): \(e.code)")
                }
            }
        }
    }

    /// Euler's Karras σ honour sigma_min / sigma_max, and final_sigmas_type sigma_min ends at σ_train[0].
    @Test func eulerKarrasBoundsAndFinalSigma() throws {
        let s = try #require(try Self.make("euler", [("use_karras_sigmas", .bool(true)), ("sigma_min", .number(0.1)),
                                                      ("sigma_max", .number(20)), ("final_sigmas_type", .string("sigma_min"))])
                             as? EulerDiscreteScheduler)
        #expect(s.sigmas.count == 11)
        #expect(abs(s.sigmas[0] - 20) <= 1e-5 && abs(s.sigmas[9] - 0.1) <= 1e-7)
        let training = SigmaSchedule.trainingSigmas(s.config.alphasCumprod())
        #expect(s.sigmas[10] == training[0])
        #expect(s.initNoiseSigma == s.sigmas[0])
        // the timesteps are the training steps of those σ: decreasing, within [0, 999]
        #expect(zip(s.timesteps, s.timesteps.dropFirst()).allSatisfy { $0 > $1 })
        #expect(s.timesteps.allSatisfy { $0 >= 0 && $0 <= 999 })
    }
}
