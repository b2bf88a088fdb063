import Foundation
import Testing
import DiffusionCore

/// Seeded runs of every scheduler on the random UNet fixture, plain and img2img, against diffusers
/// (Tests/Fixtures/samplers/runs, tools/make_sampler_fixtures.py): start, timesteps and the final sample.
@Suite struct SamplerRunTests {
    static let cases = Fixtures.cases("samplers/runs")

    @Test(arguments: cases)
    func runMatchesDiffusers(_ name: String) throws {
        let run = try Fixtures.json("samplers/runs/\(name)/run.json")
        let expected = try Fixtures.tensors("samplers/runs/\(name)/expected.safetensors")
        let model = try DiffusionModel(path: Fixtures.path("samplers/runs/\(name)/\(run["model"] as! String)"), threads: 2)
        var p = SamplerParams()
        p.scheduler = run["scheduler"] as? String
        p.steps = run["steps"] as! Int
        p.seed = UInt64(run["seed"] as! Int)
        p.batch = run["batch"] as! Int
        p.height = run["height"] as! Int
        p.width = run["width"] as! Int
        let overrides = try JSONSerialization.data(withJSONObject: run["scheduler_config"] as? [String: Any] ?? [:])
        p.schedulerOverrides = try JSONValue.parse(String(decoding: overrides, as: UTF8.self))
        let sampler = try Sampler(model: model, params: p)
        if let strength = run["strength"] as? Double {
            let image = try #require(expected["init_image"]).values.map { Float($0) }
            try sampler.setInitImage(image, count: image.count, strength: strength)
        }

        var latents = [Float](repeating: 0, count: sampler.count)
        latents.withUnsafeMutableBufferPointer { sampler.copyLatents(to: $0.baseAddress!) }
        let start = try #require(expected["start"]).values
        #expect(Fixtures.maxAbsDiff(latents, start) <= 1e-6 * max(1, start.map(abs).max()!), "\(name): start")
        let ts = try #require(expected["timesteps"]).values
        #expect(Fixtures.maxAbsDiff(Array(sampler.timesteps), ts) <= 1e-4, "\(name): timesteps")
        #expect(sampler.totalSteps == run["iterations"] as! Int, "\(name): iterations")

        try sampler.run(progress: nil)
        latents.withUnsafeMutableBufferPointer { sampler.copyLatents(to: $0.baseAddress!) }
        // DESIGN.md §6: tolerance = max(1e-3, 10 × measured sensitivity of this run), from the fixture.
        let tolerance = run["tolerance"] as! Double
        let err = Fixtures.maxAbsDiff(latents, try #require(expected["final"]).values)
        #expect(err <= tolerance, "\(name): final max abs error \(err), tolerance \(tolerance)")
    }
}
