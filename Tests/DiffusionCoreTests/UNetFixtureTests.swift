import Foundation
import Testing
import DiffusionCore

/// Forward passes against diffusers' UNet2DModel on the same random weights and inputs.
@Suite struct UNetFixtureTests {
    static let cases = Fixtures.cases("unet").filter { !$0.hasSuffix(".json") }

    @Test(arguments: cases)
    func forwardMatchesDiffusers(_ name: String) throws {
        let io = try Fixtures.tensors("unet/\(name)/io.safetensors")
        let scale = try #require(Fixtures.json("unet/\(name)/case.json")["output_scale"] as? Double)
        let x = try #require(io["x"]), t = try #require(io["t"]), expected = try #require(io["out"])
        for threads in [1, 2] {
            let model = try DiffusionModel(path: Fixtures.path("unet/\(name)"), threads: threads)
            let input = try Tensor(n: x.shape[0], c: x.shape[1], h: x.shape[2], w: x.shape[3])
            for i in 0..<input.count { input.data[i] = Float(x.values[i]) }
            let labels = io["class_labels"].map { $0.values.map { Int($0) } }
            let out = try model.predict(input, timesteps: t.values.map { Float($0) }, classLabels: labels)
            #expect([out.n, out.c, out.h, out.w] == expected.shape)
            let err = Fixtures.maxAbsDiff(out.copyToArray(), expected.values)
            // DESIGN.md §3: a forward pass within 1e-4 of the output's scale.
            #expect(err <= 1e-4 * max(1, scale), "\(name) threads \(threads): max abs error \(err)")
        }
    }

    @Test func threadCountDoesNotChangeBytes() throws {
        let path = Fixtures.path("unet/cifar_small")
        let io = try Fixtures.tensors("unet/cifar_small/io.safetensors")
        let x = try #require(io["x"])
        var results: [[Float]] = []
        for threads in [1, 2, 3] {
            let model = try DiffusionModel(path: path, threads: threads)
            let input = try Tensor(n: x.shape[0], c: x.shape[1], h: x.shape[2], w: x.shape[3])
            for i in 0..<input.count { input.data[i] = Float(x.values[i]) }
            results.append(try model.predict(input, timesteps: [10, 500], classLabels: nil).copyToArray())
        }
        #expect(results[0] == results[1])
        #expect(results[0] == results[2])
    }
}
