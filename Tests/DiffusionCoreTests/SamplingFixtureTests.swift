import Foundation
import Testing
import DiffusionCore

/// Whole seeded runs against diffusers (same seed, same noise order): DDPM/DDIM pipelines with guidance
/// and class labels (Tests/Fixtures/sampling, tools/make_fixtures.py), and every scheduler on the
/// random UNet, plain, img2img and with learned variances (Tests/Fixtures/samplers/runs,
/// tools/make_sampler_fixtures.py). Start, timesteps and the final sample are compared.
@Suite struct SamplingFixtureTests {
    static let cases = Fixtures.cases("sampling").map { "sampling/\($0)" }
        + Fixtures.cases("samplers/runs").map { "samplers/runs/\($0)" }

    @Test(arguments: cases)
    func runMatchesDiffusers(_ folder: String) throws {
        let run = try Fixtures.json("\(folder)/run.json")
        let expected = try Fixtures.tensors("\(folder)/expected.safetensors")
        let model = try DiffusionModel(path: Fixtures.path("\(folder)/\(run["model"] as! String)"), threads: 2)
        var p = SamplerParams()
        p.scheduler = run["scheduler"] as? String
        p.steps = run["steps"] as! Int
        p.seed = UInt64(run["seed"] as! Int)
        p.batch = run["batch"] as! Int
        p.height = run["height"] as! Int
        p.width = run["width"] as! Int
        p.eta = Float(run["eta"] as? Double ?? 0)
        let overrides = try JSONSerialization.data(withJSONObject: run["scheduler_config"] as? [String: Any] ?? [:])
        p.schedulerOverrides = try JSONValue.parse(String(decoding: overrides, as: UTF8.self))
        let sampler = try Sampler(model: model, params: p)
        if let labels = run["class_labels"] as? [Int] {
            let (c, u) = try model.classConditioning(labels, batch: sampler.batch)
            sampler.setConditioning(c, unconditional: u)
        }
        if let scale = run["guidance_scale"] as? Double { try sampler.setGuidanceScale(Float(scale)) }
        if let strength = run["strength"] as? Double {
            let image = try #require(expected["init_image"]).values.map { Float($0) }
            try sampler.setInitImage(image, count: image.count, strength: strength)
        }

        var latents = [Float](repeating: 0, count: sampler.count)
        latents.withUnsafeMutableBufferPointer { sampler.copyLatents(to: $0.baseAddress!) }
        let start = try #require(expected["start"]).values
        #expect(Fixtures.maxAbsDiff(latents, start) <= 1e-6 * max(1, start.map(abs).max()!), "\(folder): start")
        #expect(Fixtures.maxAbsDiff(Array(sampler.timesteps), try #require(expected["timesteps"]).values) <= 1e-4,
                "\(folder): timesteps")
        if let iterations = run["iterations"] as? Int { #expect(sampler.totalSteps == iterations) }

        try sampler.run(progress: nil)
        latents.withUnsafeMutableBufferPointer { sampler.copyLatents(to: $0.baseAddress!) }
        // DESIGN.md §6: tolerance = max(1e-3, 10 × measured sensitivity of this run), from the fixture.
        let tolerance = run["tolerance"] as! Double
        let err = Fixtures.maxAbsDiff(latents, try #require(expected["final"]).values)
        #expect(err <= tolerance, "\(folder): final max abs error \(err), tolerance \(tolerance)")
    }
}
