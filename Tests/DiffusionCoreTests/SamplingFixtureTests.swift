import Foundation
import Testing
import DiffusionCore

/// Whole seeded DDPM/DDIM runs against diffusers' pipelines (same seed, same noise order).
@Suite struct SamplingFixtureTests {
    static let cases = Fixtures.cases("sampling")

    @Test(arguments: cases)
    func runMatchesDiffusers(_ name: String) throws {
        let run = try Fixtures.json("sampling/\(name)/run.json")
        let expected = try Fixtures.tensors("sampling/\(name)/expected.safetensors")
        let model = try DiffusionModel(path: Fixtures.path("sampling/\(name)/\(run["model"] as! String)"), threads: 2)
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
        if let labels = run["class_labels"] as? [Int] { try sampler.setClassLabels(labels) }
        if let scale = run["guidance_scale"] as? Double { try sampler.setGuidanceScale(Float(scale)) }

        var latents = [Float](repeating: 0, count: sampler.count)
        latents.withUnsafeMutableBufferPointer { sampler.copyLatents(to: $0.baseAddress!) }
        #expect(Fixtures.maxAbsDiff(latents, try #require(expected["start"]).values) <= 1e-6, "start noise")
        #expect(sampler.scheduler.timesteps.map(Double.init) == (try #require(expected["timesteps"]).values))

        try sampler.run(progress: nil)
        latents.withUnsafeMutableBufferPointer { sampler.copyLatents(to: $0.baseAddress!) }
        // DESIGN.md §6: tolerance = max(1e-3, 10 × measured sensitivity of this run), from the fixture.
        let tolerance = run["tolerance"] as! Double
        let err = Fixtures.maxAbsDiff(latents, try #require(expected["final"]).values)
        #expect(err <= tolerance, "\(name): final max abs error \(err), tolerance \(tolerance)")
    }
}
