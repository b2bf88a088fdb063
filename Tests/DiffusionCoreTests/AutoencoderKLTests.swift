import Foundation
import Testing
import DiffusionCore

/// diffusers' AutoencoderKL on the tiny random VAEs of Tests/Fixtures/sd (tools/make_sd_fixtures.py)
/// and its tiled decode / encode (tools/make_vae_tiling_fixtures.py).
@Suite struct AutoencoderKLTests {
    static let pipelines = ["sd1", "sd2", "sd1_legacy"]

    static func load(_ pipeline: String) throws -> AutoencoderKL {
        try AutoencoderKL(folder: PipelineFolder(path: Fixtures.path("sd/\(pipeline)")))
    }

    static func tensor(_ t: (shape: [Int], values: [Double])?) throws -> Tensor {
        let t = try #require(t)
        try #require(t.shape.count == 4)
        let x = try Tensor(n: t.shape[0], c: t.shape[1], h: t.shape[2], w: t.shape[3])
        for i in 0..<x.count { x.data[i] = Float(t.values[i]) }
        return x
    }

    /// Max-abs error of `out` against the reference, relative to max(1, max |ref|) (DESIGN.md §3).
    static func check(_ out: Tensor, _ ref: (shape: [Int], values: [Double])?, _ what: String) throws {
        let ref = try #require(ref)
        #expect([out.n, out.c, out.h, out.w] == ref.shape, "\(what) shape")
        guard [out.n, out.c, out.h, out.w] == ref.shape else { return }
        let scale = max(1, ref.values.map(abs).max() ?? 0)
        let err = Fixtures.maxAbsDiff(out.copyToArray(), ref.values)
        print("AutoencoderKL \(what): max abs error \(err) (scale \(scale))")
        #expect(err <= 1e-4 * scale, "\(what): max abs error \(err), scale \(scale)")
    }

    @Test(arguments: pipelines)
    func matchesDiffusers(_ pipeline: String) throws {
        let vae = try Self.load(pipeline)
        let refs = try Fixtures.tensors("sd/refs/\(pipeline)/vae.safetensors")
        let (mean, logvar) = try vae.encode(Self.tensor(refs["image"]), threads: 2)
        try Self.check(mean, refs["mean"], "\(pipeline) encode mean")
        try Self.check(logvar, refs["logvar"], "\(pipeline) encode logvar")
        try Self.check(vae.decode(Self.tensor(refs["z"]), threads: 2), refs["decoded"], "\(pipeline) decode")
        // The posterior draw from the reference's own mean / logvar, so only the draw is tested.
        let seed = try #require(refs["sample_seed"]?.values.first)
        var g = TorchGenerator(seed: UInt64(seed))
        let sampled = try vae.sample(mean: Self.tensor(refs["mean"]), logvar: Self.tensor(refs["logvar"]), generator: &g)
        try Self.check(sampled, refs["sampled"], "\(pipeline) sample")
        // ... and end to end from our encode.
        var g2 = TorchGenerator(seed: UInt64(seed))
        try Self.check(vae.sample(mean: mean, logvar: logvar, generator: &g2), refs["sampled"], "\(pipeline) encode + sample")
    }

    @Test func legacyConfigTakesClassDefaults() throws {
        let vae = try Self.load("sd1_legacy")
        #expect(vae.config.scalingFactor == 0.18215)
        #expect(vae.config.shiftFactor == nil)
        #expect(vae.config.useQuantConv && vae.config.usePostQuantConv && vae.config.midBlockAddAttention)
        #expect(vae.downsampleFactor == 8)
        #expect(vae.config.tileLatentSize == 8)
    }

    @Test func tiledMatchesDiffusers() throws {
        let vae = try Self.load("sd1")
        let refs = try Fixtures.tensors("sd/refs/sd1/vae_tiled.safetensors")
        let sampleTile = try Int(#require(refs["tile_sample_min_size"]?.values.first))
        let latentTile = try Int(#require(refs["tile_latent_min_size"]?.values.first))
        let decoded = try vae.decodeTiled(Self.tensor(refs["z"]), tileSampleSize: sampleTile, tileLatentSize: latentTile,
                                          threads: 2)
        try Self.check(decoded, refs["decoded"], "sd1 tiled decode")
        let (mean, logvar) = try vae.encodeTiled(Self.tensor(refs["image"]), tileSampleSize: sampleTile,
                                                 tileLatentSize: latentTile, threads: 2)
        try Self.check(mean, refs["mean"], "sd1 tiled encode mean")
        try Self.check(logvar, refs["logvar"], "sd1 tiled encode logvar")
        // One size given: the other follows through the downsample factor (32 / 8 = 4).
        let again = try vae.decodeTiled(Self.tensor(refs["z"]), tileSampleSize: sampleTile, threads: 2)
        #expect(again.copyToArray() == decoded.copyToArray())
        // Latents or images within one tile are done whole, as diffusers' decode / encode do.
        let z = try Self.tensor(refs["z"])
        let whole = try vae.decodeTiled(z, tileLatentSize: 16, threads: 1)
        #expect(whole.copyToArray() == (try vae.decode(z, threads: 1)).copyToArray())
        let image = try Self.tensor(refs["image"])
        let wholeEncode = try vae.encodeTiled(image, tileSampleSize: 104, threads: 1)
        #expect(wholeEncode.mean.copyToArray() == (try vae.encode(image, threads: 1)).mean.copyToArray())
    }

    @Test func threadCountDoesNotChangeBytes() throws {
        let vae = try Self.load("sd1")
        let refs = try Fixtures.tensors("sd/refs/sd1/vae.safetensors")
        let tiledRefs = try Fixtures.tensors("sd/refs/sd1/vae_tiled.safetensors")
        var results: [[[Float]]] = []
        for threads in [1, 2] {
            let (mean, logvar) = try vae.encode(Self.tensor(refs["image"]), threads: threads)
            let decoded = try vae.decode(Self.tensor(refs["z"]), threads: threads)
            let tiled = try vae.decodeTiled(Self.tensor(tiledRefs["z"]), tileSampleSize: 32, tileLatentSize: 4, threads: threads)
            let tiledEnc = try vae.encodeTiled(Self.tensor(tiledRefs["image"]), tileSampleSize: 32, tileLatentSize: 4,
                                               threads: threads)
            results.append([mean, logvar, decoded, tiled, tiledEnc.mean, tiledEnc.logvar].map { $0.copyToArray() })
        }
        #expect(results[0] == results[1])
    }

    @Test func tilingRule() throws {
        let vae = try Self.load("sd1")   // sample_size 64: 8x8-latent tiles
        // Never for latents that fit one tile, whatever the budget.
        #expect(!vae.decodeNeedsTiling(height: 8, width: 8, batch: 1, budget: 0))
        #expect(vae.decodeNeedsTiling(height: 9, width: 8, batch: 1, budget: 0))
        // Small images stay whole; a working set over the budget tiles.
        #expect(!vae.decodeNeedsTiling(height: 64, width: 64, batch: 1))
        let bytes = vae.decodeWorkingSetBytes(height: 64, width: 64, batch: 1, threads: 2)
        #expect(bytes > 0)
        #expect(vae.decodeNeedsTiling(height: 64, width: 64, batch: 1, budget: bytes / 2, threads: 2))
        #expect(!vae.decodeNeedsTiling(height: 64, width: 64, batch: 1, budget: bytes * 2, threads: 2))
        #expect(vae.decodeWorkingSetBytes(height: 64, width: 64, batch: 2, threads: 2) > bytes)
        // 16384 x 16384 pixels: far over 1.5 GB even for this tiny VAE.
        #expect(vae.decodeNeedsTiling(height: 2048, width: 2048, batch: 1))
        #expect(!vae.encodeNeedsTiling(height: 64, width: 64, batch: 1, budget: 0))
        #expect(vae.encodeNeedsTiling(height: 16384, width: 16384, batch: 1))
    }

    /// Stable Diffusion's real VAE (128, 256, 512, 512; layers 2; 32 groups) at 512x512 stays whole,
    /// at 2048x2048 tiles; the estimate is in the range of what it really needs.
    @Test func tilingRuleForStableDiffusionShapes() throws {
        var config = AutoencoderKLConfig()
        config.blockOutChannels = [128, 256, 512, 512]
        config.downBlockTypes = Array(repeating: "DownEncoderBlock2D", count: 4)
        config.upBlockTypes = Array(repeating: "UpDecoderBlock2D", count: 4)
        config.layersPerBlock = 2
        config.sampleSize = 512
        let gb = 1e9
        func decode(_ side: Int) -> Double {
            AutoencoderKL.decodeWorkingSetBytes(config: config, height: side, width: side, batch: 1, threads: 2)
        }
        #expect(decode(64) > 0.4 * gb && decode(64) < 1.5 * gb, "512x512 decode estimate \(decode(64) / gb) GB")
        #expect(decode(256) > 1.5 * gb)
    }

    @Test func refusesBadArguments() throws {
        let vae = try Self.load("sd1")
        expectError(.invalidArgument, ["latents", "4"]) { _ = try vae.decode(Tensor(n: 1, c: 3, h: 8, w: 8), threads: 1) }
        expectError(.invalidArgument, ["latents"]) { _ = try vae.decode(Tensor(n: 0, c: 4, h: 8, w: 8), threads: 1) }
        expectError(.invalidArgument, ["latents", "1 to 8192"]) { _ = try vae.decode(Tensor(n: 1, c: 4, h: 1, w: 9000), threads: 1) }
        expectError(.invalidArgument, ["image", "3"]) { _ = try vae.encode(Tensor(n: 1, c: 4, h: 64, w: 64), threads: 1) }
        expectError(.invalidArgument, ["image", "7x64"]) { _ = try vae.encode(Tensor(n: 1, c: 3, h: 7, w: 64), threads: 1) }
        expectError(.invalidArgument, ["differ in shape"]) {
            var g = TorchGenerator(seed: 1)
            _ = try vae.sample(mean: Tensor(n: 1, c: 4, h: 8, w: 8), logvar: Tensor(n: 1, c: 4, h: 8, w: 9), generator: &g)
        }
        // 4096² latents decode to 32768² pixels: hundreds of GB, refused before any work.
        let huge = try Tensor(n: 1, c: 4, h: 4096, w: 4096)
        expectError(.outOfMemory, ["decoding", "GB"]) { _ = try vae.decode(huge, threads: 1) }
        let z = try Tensor(n: 1, c: 4, h: 8, w: 8)
        z.data.update(repeating: 0, count: z.count)
        expectError(.invalidArgument, ["tile latent size 0"]) { _ = try vae.decodeTiled(z, tileLatentSize: 0, threads: 1) }
        expectError(.invalidArgument, ["overlap"]) { _ = try vae.decodeTiled(z, overlapFactor: 1, threads: 1) }
        expectError(.invalidArgument, ["overlap"]) { _ = try vae.decodeTiled(z, overlapFactor: .nan, threads: 1) }
        expectError(.invalidArgument, ["do not advance"]) { _ = try vae.decodeTiled(z, tileLatentSize: 1, threads: 1) }
        // 97 pixels with tiles of 32 every 24 end in a 1-pixel tile (torch fails on it too).
        let image = try Tensor(n: 1, c: 3, h: 97, w: 64)
        image.data.update(repeating: 0, count: image.count)
        expectError(.invalidArgument, ["tiled encode", "height 97", "1 pixels"]) {
            _ = try vae.encodeTiled(image, tileSampleSize: 32, threads: 1)
        }
    }

    static func config(_ edit: (inout [String: Any]) -> Void) throws -> JSONValue {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("sd/sd1/vae/config.json")))
        var dict = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        edit(&dict)
        return try JSONValue.parse(String(decoding: JSONSerialization.data(withJSONObject: dict), as: UTF8.self))
    }

    @Test func refusesConfigsItCannotRun() throws {
        let four = { (s: String) in Array(repeating: s, count: 4) }
        let cases: [(String, Any, DiffusionError.Code, [String])] = [
            ("down_block_types", ["DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
             .unsupported, ["down_block_types", "AttnDownEncoderBlock2D"]),
            ("up_block_types", four("UpBlock2D"), .unsupported, ["up_block_types", "UpBlock2D"]),
            ("up_block_types", ["UpDecoderBlock2D"], .invalidFile, ["up_block_types", "block_out_channels"]),
            ("latents_mean", [0.1, 0.2, 0.3, 0.4], .unsupported, ["latents_mean"]),
            ("latents_std", [1, 1, 1, 1], .unsupported, ["latents_std"]),
            ("norm_num_groups", 3, .unsupported, ["norm_num_groups 3", "16"]),
            ("norm_num_groups", 0, .invalidFile, ["norm_num_groups"]),
            ("norm_num_groups", NSNull(), .unsupported, ["norm_num_groups"]),
            ("act_fn", "gelu", .unsupported, ["act_fn", "gelu"]),
            ("_class_name", "AutoencoderTiny", .unsupported, ["_class_name", "AutoencoderTiny"]),
            ("block_out_channels", [16, 1_000_000_000, 32, 32], .unsupported, ["block_out_channels"]),
            ("block_out_channels", [Int](), .unsupported, ["block_out_channels"]),
            ("block_out_channels", [-16, 16, 32, 32], .unsupported, ["block_out_channels"]),
            ("block_out_channels", [1e300, 16, 32, 32], .invalidFile, ["block_out_channels"]),
            ("layers_per_block", 1_000_000, .unsupported, ["layers_per_block"]),
            ("layers_per_block", 0, .invalidFile, ["layers_per_block"]),
            ("latent_channels", 100_000_000, .unsupported, ["latent_channels"]),
            ("in_channels", 1e12, .unsupported, ["in_channels"]),
            ("sample_size", 1e15, .invalidFile, ["sample_size", "1...16384"]),
            ("sample_size", -64, .invalidFile, ["sample_size", "1...16384"]),
            ("sample_size", "big", .invalidFile, ["sample_size"]),
            ("scaling_factor", 0, .unsupported, ["scaling_factor"]),
            ("scaling_factor", "x", .invalidFile, ["scaling_factor"]),
            ("shift_factor", "x", .invalidFile, ["shift_factor"]),
            ("use_quant_conv", 1, .invalidFile, ["use_quant_conv"]),
        ]
        for (key, value, code, phrases) in cases {
            let json = try Self.config { $0[key] = value }
            expectError(code, phrases) { _ = try AutoencoderKLConfig(json: json) }
        }
        expectError(.invalidFile, ["not a JSON object"]) { _ = try AutoencoderKLConfig(json: .array([])) }
        // Accepted: shift_factor, force_upcast, unknown keys, sample_size as [h, w].
        let ok = try AutoencoderKLConfig(json: Self.config {
            $0["shift_factor"] = 0.0609; $0["force_upcast"] = false; $0["sample_size"] = [32, 48]; $0["some_future_key"] = 1
        })
        #expect(ok.shiftFactor == 0.0609 && ok.sampleSize == 32)
    }

    @Test func refusesWeightsThatDoNotFitTheConfig() throws {
        let folder = try PipelineFolder(path: Fixtures.path("sd/sd1"))
        let weights = try folder.weights("vae", stem: "diffusion_pytorch_model")
        // More layers than the file has: a resnet is missing.
        let deeper = try AutoencoderKLConfig(json: Self.config { $0["layers_per_block"] = 2 })
        expectError(.modelMismatch, ["encoder.down_blocks.0.resnets.1"]) { _ = try AutoencoderKL(config: deeper, weights: weights) }
        // Other channel counts: shapes differ.
        let wider = try AutoencoderKLConfig(json: Self.config { $0["block_out_channels"] = [32, 32, 32, 32] })
        expectError(.modelMismatch, ["encoder.conv_in.weight"]) { _ = try AutoencoderKL(config: wider, weights: weights) }
        // No quant_conv in the config: loads (the file's extra tensors are unused) but differs.
        let noQuant = try AutoencoderKLConfig(json: Self.config { $0["use_quant_conv"] = false; $0["use_post_quant_conv"] = false })
        _ = try AutoencoderKL(config: noQuant, weights: weights)
        // Without mid-block attention: loads too.
        let noAttention = try AutoencoderKLConfig(json: Self.config { $0["mid_block_add_attention"] = false })
        _ = try AutoencoderKL(config: noAttention, weights: weights)
        // A config built in code is validated too: no traps from an empty channel list.
        var empty = AutoencoderKLConfig()
        empty.blockOutChannels = []
        expectError(.unsupported, ["block_out_channels"]) { _ = try AutoencoderKL(config: empty, weights: weights) }
        #expect(AutoencoderKL.decodeWorkingSetBytes(config: empty, height: 8, width: 8, batch: 1) == .infinity)
        var noLayers = try AutoencoderKLConfig(json: Self.config { _ in })
        noLayers.layersPerBlock = -1
        expectError(.unsupported, ["layers_per_block"]) { _ = try AutoencoderKL(config: noLayers, weights: weights) }
        // sd1_legacy's fp16 file under the plain stem is found as the fp16 variant.
        let legacy = try PipelineFolder(path: Fixtures.path("sd/sd1_legacy")).weights("vae", stem: "diffusion_pytorch_model")
        #expect(legacy.path.hasSuffix("diffusion_pytorch_model.fp16.safetensors"))
    }

    /// Every config key with hostile values: an error or a working model, never a trap.
    @Test func hostileConfigValuesNeverTrap() throws {
        let weights = try PipelineFolder(path: Fixtures.path("sd/sd1")).weights("vae", stem: "diffusion_pytorch_model")
        let keys = ["in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
                    "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor",
                    "shift_factor", "latents_mean", "latents_std", "force_upcast", "use_quant_conv", "use_post_quant_conv",
                    "mid_block_add_attention", "_class_name"]
        let values: [Any] = [NSNull(), -1, 0, 1, 3, 7, 1e9, 1e300, -1e300, 0.5, "x", [1], [Int](), [16, 16, 32],
                             ["DownEncoderBlock2D"], true, false, ["a": 1]]
        let z = try Tensor(n: 1, c: 4, h: 9, w: 9)
        z.data.update(repeating: 0.5, count: z.count)
        var loaded = 0
        for key in keys {
            for value in values {
                let json = try Self.config { $0[key] = value }
                guard let config = try? AutoencoderKLConfig(json: json),
                      let vae = try? AutoencoderKL(config: config, weights: weights) else { continue }
                loaded += 1
                _ = vae.decodeNeedsTiling(height: 9, width: 9, batch: 1)
                _ = try? vae.decodeTiled(z, threads: 1)
            }
        }
        #expect(loaded > 20)
    }
}
