import Foundation
import Testing
@testable import DiffusionCore

/// UNet2DConditionModel forward passes against diffusers on the tiny SD pipelines' random weights
/// (tools/make_sd_fixtures.py): SD1-style (int head count, 1x1 projections), SD2-style (head list,
/// linear projections, upcast attention), a 9-channel inpainting UNet, the fp16-variant legacy folder.
@Suite struct UNet2DConditionTests {
    static let pipelines = ["sd1", "sd2", "sd1_inpaint", "sd1_legacy"]

    static func load(_ pipeline: String) throws -> UNet2DConditionModel {
        let folder = try PipelineFolder(path: Fixtures.path("sd/\(pipeline)"))
        let (json, _) = try folder.config("unet")
        return try UNet2DConditionModel(config: try UNet2DConditionConfig(json: json),
                                        weights: try folder.weights("unet", stem: "diffusion_pytorch_model"))
    }

    static func tensor(_ t: (shape: [Int], values: [Double])) throws -> Tensor {
        let x = try Tensor(n: t.shape[0], c: t.shape[1], h: t.shape[2], w: t.shape[3])
        for i in 0..<x.count { x.data[i] = Float(t.values[i]) }
        return x
    }

    static func tokens(_ t: (shape: [Int], values: [Double])) throws -> Tokens {
        let x = try Tokens(n: t.shape[0], length: t.shape[1], width: t.shape[2])
        for i in 0..<x.count { x.data[i] = Float(t.values[i]) }
        return x
    }

    @Test(arguments: pipelines)
    func forwardMatchesDiffusers(_ pipeline: String) throws {
        let unet = try Self.load(pipeline)
        let io = try Fixtures.tensors("sd/refs/\(pipeline)/unet.safetensors")
        let context = try Self.tokens(try #require(io["context"]))
        var outputs: [[Float]] = []
        for threads in [1, 2] {
            for suffix in ["", "_frac"] {
                let x = try Self.tensor(try #require(io["x\(suffix)"]))
                let t = try #require(io["t\(suffix)"]).values.map { Float($0) }
                let expected = try #require(io["out\(suffix)"])
                // x holds in_channels (x_t then the inpainting channels), as diffusers' UNet takes it.
                let latent = unet.config.outChannels
                var cond = Conditioning(context: context)
                var xt = x
                if x.c > latent {
                    xt = try Tensor(n: x.n, c: latent, h: x.h, w: x.w)
                    let extra = try Tensor(n: x.n, c: x.c - latent, h: x.h, w: x.w)
                    for n in 0..<x.n {
                        (xt.data + n * xt.c * x.hw).update(from: x.data + n * x.c * x.hw, count: xt.c * x.hw)
                        (extra.data + n * extra.c * x.hw).update(from: x.data + (n * x.c + latent) * x.hw, count: extra.c * x.hw)
                    }
                    cond.extraChannels = extra
                }
                let out = try unet.predict(xt, timesteps: t, conditioning: cond, threads: threads)
                #expect([out.n, out.c, out.h, out.w] == expected.shape)
                let scale = expected.values.map(abs).max() ?? 0
                let err = Fixtures.maxAbsDiff(out.copyToArray(), expected.values)
                // DESIGN.md §3: a forward pass within 1e-4 of the output's scale.
                #expect(err <= 1e-4 * max(1, scale), "\(pipeline)\(suffix) threads \(threads): max abs error \(err) (scale \(scale))")
                outputs.append(out.copyToArray())
            }
        }
        #expect(outputs[0] == outputs[2] && outputs[1] == outputs[3], "thread count changed the bytes")
    }

    @Test func refusesWhatItCannotRun() throws {
        let base: [(String, JSONValue)] = [("_class_name", .string("UNet2DConditionModel")),
                                           ("block_out_channels", .array([.number(32), .number(64)])),
                                           ("down_block_types", .array([.string("CrossAttnDownBlock2D"), .string("DownBlock2D")])),
                                           ("up_block_types", .array([.string("UpBlock2D"), .string("CrossAttnUpBlock2D")])),
                                           ("norm_num_groups", .number(8))]
        func config(_ extra: (String, JSONValue)) throws -> UNet2DConditionConfig {
            try UNet2DConditionConfig(json: .object(base + [extra]))
        }
        _ = try UNet2DConditionConfig(json: .object(base))
        let cases: [((String, JSONValue), DiffusionError.Code, [String])] = [
            (("addition_embed_type", .string("text_time")), .unsupported, ["addition_embed_type", "text_time"]),
            (("time_cond_proj_dim", .number(256)), .unsupported, ["time_cond_proj_dim"]),
            (("num_attention_heads", .number(8)), .unsupported, ["num_attention_heads"]),
            (("attention_head_dim", .number(7)), .unsupported, ["7", "does not divide"]),
            (("attention_head_dim", .array([.number(2)])), .invalidFile, ["attention_head_dim", "entries"]),
            (("mid_block_type", .string("UNetMidBlock2DSimpleCrossAttn")), .unsupported, ["UNetMidBlock2DSimpleCrossAttn"]),
            (("only_cross_attention", .bool(true)), .unsupported, ["only_cross_attention"]),
            (("cross_attention_dim", .array([.number(32), .number(64)])), .unsupported, ["cross_attention_dim"]),
            (("class_embed_type", .string("timestep")), .unsupported, ["class_embed_type"]),
            (("sample_size", .number(1e12)), .invalidFile, ["sample_size"]),
            (("in_channels", .number(3)), .unsupported, ["out_channels"]),
        ]
        for (extra, code, phrases) in cases {
            expectError(code, phrases) { _ = try config(extra) }
        }
    }

    @Test func refusesWrongConditioning() throws {
        let unet = try Self.load("sd1")
        let x = try Tensor(n: 1, c: 4, h: 8, w: 8)
        expectError(.invalidArgument, ["text states"]) { _ = try unet.predict(x, timesteps: [1], conditioning: .none, threads: 1) }
        let wrong = try Tokens(n: 1, length: 77, width: 31)
        expectError(.invalidArgument, ["31"]) {
            _ = try unet.predict(x, timesteps: [1], conditioning: Conditioning(context: wrong), threads: 1)
        }
        let inpaint = try Self.load("sd1_inpaint")
        let context = try Tokens(n: 1, length: 77, width: 32)
        expectError(.invalidArgument, ["9 input channels"]) {
            _ = try inpaint.predict(x, timesteps: [1], conditioning: Conditioning(context: context), threads: 1)
        }
    }
}
