import Foundation
import Testing
@testable import DiffusionCore

/// DPMSolverMultistepScheduler and UniPCMultistepScheduler beyond the sampler fixtures: add_noise,
/// settings the fixtures do not cover (checked against diffusers), and the settings refused
/// because diffusers cannot run them.
@Suite struct MultistepSchedulerTests {
    static func make(_ name: String, _ settings: String, steps: Int = 10) throws -> Scheduler {
        var config = SchedulerConfig(for: name)
        try config.apply(try JSONValue.parse(settings))
        return try SchedulerRegistry.make(name, config: config, steps: steps, eta: 0)
    }

    @Test(arguments: ["dpmpp_2m", "unipc"])
    func addNoiseIsAlphaXPlusSigmaNoise(_ name: String) throws {
        let s = try Self.make(name, "{}")
        let sigmas = (s as? DPMSolverMultistepScheduler)?.sigmas ?? (s as! UniPCMultistepScheduler).sigmas
        let x: [Float] = (0..<8).map { Float(sin(Double($0))) }
        let n: [Float] = (0..<8).map { Float(cos(0.5 * Double($0))) }
        let begin = 3
        var out = [Float](repeating: 0, count: 8)
        out.withUnsafeMutableBufferPointer { s.addNoise(original: x, noise: n, count: 8, index: begin, into: $0.baseAddress!) }
        let sigma = Double(sigmas[begin])
        let alphaT = 1 / (sigma * sigma + 1).squareRoot(), sigmaT = sigma * alphaT
        for k in 0..<8 {
            #expect(abs(Double(out[k]) - (alphaT * Double(x[k]) + sigmaT * Double(n[k]))) <= 1e-6)
        }
        #expect(abs(Double(s.alphaProd(at: begin)) - alphaT * alphaT) <= 1e-6)
    }

    /// Whole loops on a [2,1,2,2] sample with the toy model 0.7 x + 0.3 sin x + 0.05 cos(t / 100),
    /// start cos(0.9 k + 0.3) · 1.2 and (SDE) noise sin(1.3 k + 0.7 i) · 1.5 passed as variance_noise,
    /// from iteration `begin` (set_begin_index); expected finals from diffusers 0.42.1 (torch 2.15).
    static let loops: [(String, String, String, Int, Int, Int, Int, [Float])] = [
        // (case, scheduler, settings, steps, begin, iterations, sum of timesteps, final)
        ("dpm_noise_order2", "dpmpp_2m", #"{"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}"#, 10, 0, 10, 5495, [1.0280550718307495, 0.23719477653503418, -0.29805323481559753, -0.9238697290420532, -0.4950835108757019, 0.06547699123620987, 0.7419834733009338, 1.0126287937164307]),
        ("dpm_noise_order3_threshold_v", "dpmpp_2m", #"{"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3, "lower_order_final": false, "thresholding": true, "sample_max_value": 1.5, "prediction_type": "v_prediction"}"#, 10, 0, 10, 5495, [0.2524127960205078, 0.08546003699302673, -0.14824996888637543, -0.2866966128349304, -0.20936642587184906, 0.011525118723511696, 0.21665963530540466, 0.2502731680870056]),
        ("dpm_sde_noise_heun", "dpmpp_2m", #"{"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun"}"#, 10, 0, 10, 5495, [-0.22675678133964539, 0.43420249223709106, 0.37721171975135803, -0.16744756698608398, -0.6201736927032471, -0.23387449979782104, 0.5256835222244263, 0.482491672039032]),
        ("dpmpp_heun_threshold", "dpmpp_2m", #"{"solver_type": "heun", "thresholding": true, "sample_max_value": 1.5}"#, 10, 0, 10, 5495, [0.6814042925834656, 0.2092474102973938, -0.31368353962898254, -0.7617677450180054, -0.49841517210006714, 0.04043510556221008, 0.5701954960823059, 0.6870218515396118]),
        ("dpmpp_3m_euler_at_final_trailing", "dpmpp_2m", #"{"solver_order": 3, "euler_at_final": true, "lower_order_final": false, "final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"}"#, 7, 0, 7, 3993, [1.2339218854904175, 0.29078760743141174, -0.24709659814834595, -0.9260826110839844, -0.45587584376335144, 0.11656681448221207, 0.8720900416374207, 1.2140430212020874]),
        ("dpmpp_cosine_lambda_clip", "dpmpp_2m", #"{"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}"#, 10, 0, 10, 5473, [4.672402858734131, 1.0047376155853271, 0.0674804076552391, -1.5913060903549194, -0.3031788468360901, 0.6255651116371155, 3.939526319503784, 4.646596908569336]),
        ("dpmpp_sde_heun_sample", "dpmpp_2m", #"{"algorithm_type": "sde-dpmsolver++", "solver_type": "heun", "prediction_type": "sample"}"#, 10, 0, 10, 5495, [-1.5502598285675049, -1.4242267608642578, 0.5376077890396118, 1.7303249835968018, 0.4889596998691559, -1.7173264026641846, -1.2374380826950073, 1.0162923336029053]),
        ("dpmpp_3m_trailing_61", "dpmpp_2m", #"{"solver_order": 3, "timestep_spacing": "trailing"}"#, 61, 0, 62, 30938, [0.9931383728981018, 0.24183440208435059, -0.31313130259513855, -0.9313874244689941, -0.5149499773979187, 0.0645948201417923, 0.737744927406311, 0.9798406362533569]),
        ("dpmpp_3m_begin3", "dpmpp_2m", #"{"solver_order": 3}"#, 10, 3, 10, 5495, [0.648809015750885, 0.19432100653648376, -0.329036682844162, -0.743097186088562, -0.4931962490081787, 0.03074994683265686, 0.5355448126792908, 0.6436770558357239]),
        ("unipc_order3_threshold", "unipc", #"{"solver_order": 3, "thresholding": true, "sample_max_value": 1.5}"#, 10, 0, 10, 5495, [0.6802337765693665, 0.20337632298469543, -0.32214871048927307, -0.7881634831428528, -0.5092758536338806, 0.03373701497912407, 0.567754328250885, 0.6856108903884888]),
        ("unipc_disable_corrector", "unipc", #"{"disable_corrector": [0, 3]}"#, 10, 0, 10, 5495, [0.995110034942627, 0.23379004001617432, -0.307190477848053, -0.9348732233047485, -0.5077942609786987, 0.06149999424815178, 0.7276265621185303, 0.9808880090713501]),
        ("unipc_karras_range_sigma_min", "unipc", #"{"use_karras_sigmas": true, "sigma_min": 0.05, "sigma_max": 40.0, "final_sigmas_type": "sigma_min"}"#, 10, 0, 10, 4394, [0.796341598033905, 0.2305746078491211, -0.37042030692100525, -0.8953133225440979, -0.5674721002578735, 0.04263286292552948, 0.6450625061988831, 0.7892698645591736]),
        ("unipc_eps_bh1_v", "unipc", #"{"predict_x0": false, "solver_type": "bh1", "final_sigmas_type": "sigma_min", "prediction_type": "v_prediction"}"#, 10, 0, 10, 5495, [0.22630612552165985, 0.08116141706705093, -0.12248248606920242, -0.2424774169921875, -0.17608970403671265, 0.016674404963850975, 0.19574952125549316, 0.22499951720237732]),
        ("unipc_order3_trailing_no_lof", "unipc", #"{"solver_order": 3, "lower_order_final": false, "final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"}"#, 10, 0, 10, 5490, [1.3045271635055542, 0.2111503928899765, -0.10375633835792542, -1.0442514419555664, -0.3380608558654785, 0.11449161171913147, 0.8301164507865906, 1.2789928913116455]),
        ("unipc_leading_sd", "unipc", #"{"timestep_spacing": "leading", "steps_offset": 1, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}"#, 10, 0, 10, 4960, [0.642676830291748, 0.20493581891059875, -0.31227606534957886, -0.691490888595581, -0.46714842319488525, 0.04190798103809357, 0.5366461873054504, 0.6379247307777405]),
        ("unipc_order3_begin3", "unipc", #"{"solver_order": 3}"#, 10, 3, 10, 5495, [0.6408697366714478, 0.19257938861846924, -0.33096668124198914, -0.742712140083313, -0.4946170151233673, 0.02928771823644638, 0.529732882976532, 0.6358393430709839]),
    ]

    @Test(arguments: loops.indices)
    func loopMatchesDiffusers(_ c: Int) throws {
        let (name, scheduler, settings, steps, begin, iterations, timestepSum, expected) = Self.loops[c]
        let s = try Self.make(scheduler, settings, steps: steps)
        #expect(s.timesteps.count == iterations, "\(name): iterations")
        #expect(Int(s.timesteps.reduce(0, +)) == timestepSum, "\(name): timesteps \(s.timesteps)")
        let shape = SampleShape(batch: 2, channels: 1, height: 2, width: 2)
        var x: [Float] = (0..<8).map { Float(cos(0.9 * Double($0) + 0.3) * 1.2) }
        for i in begin..<s.timesteps.count {
            let t = Double(s.timesteps[i])
            let out = x.map { v in Float(0.7 * Double(v) + 0.3 * sin(Double(v)) + 0.05 * cos(t / 100)) }
            let noise: [Float] = (0..<8).map { Float(sin(1.3 * Double($0) + 0.7 * Double(i)) * 1.5) }
            var prev = [Float](repeating: 0, count: 8)
            prev.withUnsafeMutableBufferPointer { p in
                s.step(index: i, modelOutput: out, sample: x, noise: s.needsNoise(at: i) ? noise : nil, meanShift: nil,
                       shape: shape, prev: p.baseAddress!)
            }
            x = prev
        }
        let err = zip(x, expected).map { abs(Double($0) - Double($1)) }.max()! / max(1, Double(expected.map(abs).max()!))
        #expect(err <= 1e-4, "\(name): final \(x) vs \(expected), relative error \(err)")
    }

    @Test func refusesWhatDiffusersCannotRun() {
        let cases: [(String, String, Int, DiffusionError.Code, [String])] = [
            // UniPC to σ = 0: NaN (predict_x0 false, bh1) or a singular / infinite last step
            ("unipc", #"{"predict_x0": false}"#, 10, .unsupported, ["final_sigmas_type", "predict_x0 false", "sigma_min"]),
            ("unipc", #"{"solver_type": "bh1"}"#, 10, .unsupported, ["final_sigmas_type", "bh1"]),
            ("unipc", #"{"lower_order_final": false, "solver_order": 3}"#, 10, .unsupported, ["lower_order_final false"]),
            ("unipc", #"{"lower_order_final": false, "solver_order": 3, "use_karras_sigmas": true, "final_sigmas_type": "sigma_min"}"#,
             10, .unsupported, ["sigma_min", "use_karras_sigmas", "solver_order 3"]),
            // DPM-Solver: repeated Karras timesteps of the cosine schedule; 0/0 over a zero-length last step
            ("dpmpp_2m", #"{"use_karras_sigmas": true, "beta_schedule": "squaredcos_cap_v2"}"#, 10, .unsupported,
             ["use_karras_sigmas", "squaredcos_cap_v2"]),
            ("dpmpp_2m", #"{"use_karras_sigmas": true, "final_sigmas_type": "sigma_min", "solver_order": 3, "lower_order_final": false}"#,
             10, .unsupported, ["sigma_min", "order 3"]),
            ("dpmpp_2m", #"{"use_karras_sigmas": true, "final_sigmas_type": "sigma_min", "lower_order_final": false, "solver_type": "heun"}"#,
             10, .unsupported, ["sigma_min", "heun"]),
            ("dpmpp_2m", #"{"algorithm_type": "dpmsolver"}"#, 10, .unsupported, ["final_sigmas_type", "dpmsolver"]),
            ("dpmpp_2m", #"{"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3}"#, 10,
             .unsupported, ["solver_order 3", "sde-dpmsolver"]),
            // 1000 linspace steps repeat timestep 500: the multistep update would divide by zero
            ("dpmpp_2m", "{}", 1000, .invalidArgument, ["1000 steps", "repeat"]),
            ("unipc", "{}", 1000, .invalidArgument, ["1000 steps", "repeat"]),
            ("dpmpp_2m", "{}", 1001, .invalidArgument, ["steps 1001"]),
            ("unipc", "{}", 0, .invalidArgument, ["steps 0"]),
            ("dpmpp_2m", #"{"lambda_min_clipped": "inf"}"#, 10, .invalidArgument, ["lambda_min_clipped"]),
        ]
        for (name, settings, steps, code, phrases) in cases {
            expectError(code, phrases) {
                var config = SchedulerConfig(for: name)
                try config.apply(try JSONValue.parse(settings))
                _ = name == "unipc" ? try UniPCMultistepScheduler(config: config, steps: steps) as Scheduler
                                    : try DPMSolverMultistepScheduler(config: config, steps: steps)
            }
        }
    }

    @Test func refusesUnsupportedSettingsByName() {
        let cases: [(String, String, [String])] = [
            ("dpmpp_2m", #"{"use_lu_lambdas": true}"#, ["use_lu_lambdas", "DPMSolverMultistepScheduler"]),
            ("dpmpp_2m", #"{"use_exponential_sigmas": true}"#, ["use_exponential_sigmas"]),
            ("dpmpp_2m", #"{"use_flow_sigmas": true}"#, ["use_flow_sigmas"]),
            ("dpmpp_2m", #"{"algorithm_type": "unipc"}"#, ["algorithm_type", "\"unipc\"", "dpmsolver++"]),
            ("dpmpp_2m", #"{"solver_type": "rk4"}"#, ["solver_type", "rk4", "midpoint"]),
            ("dpmpp_2m", #"{"variance_type": "learned_range"}"#, ["variance_type", "learned_range"]),
            ("dpmpp_2m", #"{"solver_order": 4}"#, ["solver_order", "4"]),
            ("dpmpp_2m", #"{"final_sigmas_type": "denoise_to_zero"}"#, ["final_sigmas_type", "denoise_to_zero"]),
            ("unipc", #"{"use_beta_sigmas": true}"#, ["use_beta_sigmas", "UniPCMultistepScheduler"]),
            ("unipc", #"{"use_dynamic_shifting": true}"#, ["use_dynamic_shifting"]),
            ("unipc", #"{"solver_type": "bh3"}"#, ["solver_type", "bh3", "bh1, bh2"]),
            ("unipc", #"{"solver_order": 5}"#, ["solver_order", "5"]),
        ]
        for (name, settings, phrases) in cases {
            expectError(.unsupported, phrases) { _ = try Self.make(name, settings) }
        }
    }

    @Test func acceptsDiffusersAliasesAndInfinities() throws {
        // diffusers registers deis as dpmsolver++, UniPC's solver types as midpoint (and back)
        let deis = try Self.make("dpmpp_2m", #"{"algorithm_type": "deis", "solver_type": "bh2", "lambda_min_clipped": "-inf"}"#)
        #expect((deis as! DPMSolverMultistepScheduler).algorithm == .dpmSolverPP)
        #expect((deis as! DPMSolverMultistepScheduler).solverType == .midpoint)
        let unipc = try Self.make("unipc", #"{"solver_type": "midpoint"}"#)
        #expect((unipc as! UniPCMultistepScheduler).solverType == .bh2)
    }
}
