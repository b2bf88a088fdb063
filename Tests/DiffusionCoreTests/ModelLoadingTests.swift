import Foundation
import Testing
import DiffusionCore

/// Model folders, pipeline folders, and configs the library must refuse with a named reason.
@Suite final class ModelLoadingTests {
    /// Every folder a test makes, removed when the test ends.
    var made: [String] = []
    deinit { for path in made { try? FileManager.default.removeItem(atPath: path) } }

    func temporaryFolder(_ prefix: String) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)").path
        made.append(path)
        return path
    }

    /// A temp copy of a fixture model folder whose config.json is edited by `edit`.
    func folder(from fixture: String = "plain", edit: (inout [String: Any]) -> Void = { _ in },
                configText: String? = nil) throws -> String {
        let dir = URL(fileURLWithPath: temporaryFolder("dm"))
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let src = Fixtures.root.appendingPathComponent("unet/\(fixture)")
        try FileManager.default.copyItem(at: src.appendingPathComponent("diffusion_pytorch_model.safetensors"),
                                         to: dir.appendingPathComponent("diffusion_pytorch_model.safetensors"))
        var config = try Fixtures.json("unet/\(fixture)/config.json")
        edit(&config)
        let text = try configText ?? String(decoding: JSONSerialization.data(withJSONObject: config), as: UTF8.self)
        try text.write(to: dir.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
        return dir.path
    }

    @Test func refusesConfigsItCannotRun() throws {
        let cases: [(String, Any, DiffusionError.Code, [String])] = [
            ("down_block_types", ["DownBlock2D", "SkipDownBlock2D"], .unsupported, ["SkipDownBlock2D", "down_block_types"]),
            ("up_block_types", ["AttnSkipUpBlock2D", "UpBlock2D"], .unsupported, ["AttnSkipUpBlock2D"]),
            ("mid_block_type", "UNetMidBlock2DCrossAttn", .unsupported, ["mid_block_type", "UNetMidBlock2DCrossAttn"]),
            ("act_fn", "gelu", .unsupported, ["act_fn", "gelu"]),
            ("time_embedding_type", "fourier", .unsupported, ["time_embedding_type", "fourier"]),
            ("resnet_time_scale_shift", "spatial", .unsupported, ["resnet_time_scale_shift", "spatial"]),
            ("downsample_type", "resnet", .unsupported, ["downsample_type", "resnet"]),
            ("class_embed_type", "identity", .unsupported, ["class_embed_type", "identity"]),
            ("layers_per_block", "two", .invalidFile, ["layers_per_block", "\"two\""]),
            ("in_channels", -3, .invalidFile, ["in_channels"]),
            ("down_block_types", ["DownBlock2D"], .invalidFile, ["down_block_types", "block_out_channels"]),
            ("norm_num_groups", 3, .unsupported, ["norm_num_groups"]),
            ("_class_name", "UNet3DConditionModel", .unsupported, ["UNet3DConditionModel"]),
        ]
        for (key, value, code, phrases) in cases {
            let path = try folder { $0[key] = value }
            expectError(code, phrases + ["config.json"]) { _ = try DiffusionModel(path: path, threads: 1) }
        }
    }

    /// Values the fuzzer of issue 10 found passing validation and trapping later (a division by
    /// zero in a head split, an Int32 conversion, skip connections of the wrong shape).
    @Test func refusesConfigsThatTrappedLater() throws {
        let cases: [([String: Any], DiffusionError.Code, [String])] = [
            (["attention_head_dim": 32], .unsupported, ["attention_head_dim 32", "mid_block"]),
            (["attention_head_dim": 12], .unsupported, ["attention_head_dim 12", "mid_block"]),
            (["attention_head_dim": 32, "add_attention": false, "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]],
             .unsupported, ["attention_head_dim 32", "up_blocks.0", "16 channels"]),
            (["sample_size": 1 << 31], .invalidFile, ["sample_size", "1...16384"]),
            (["sample_size": [16, 1 << 40]], .invalidFile, ["sample_size"]),
            (["sample_size": 0], .invalidFile, ["sample_size"]),
            (["downsample_padding": 2], .unsupported, ["downsample_padding 2"]),
            (["downsample_padding": 1 << 40], .unsupported, ["downsample_padding"]),
        ]
        for (edits, code, phrases) in cases {
            let path = try folder { for (k, v) in edits { $0[k] = v } }
            expectError(code, phrases + ["config.json"]) { _ = try DiffusionModel(path: path, threads: 1) }
        }
        // The limits themselves load, and padding 0 is diffusers' pad-one-side variant.
        for edits in [["downsample_padding": 0], ["sample_size": 16384], ["attention_head_dim": 16]] as [[String: Any]] {
            let path = try folder { for (k, v) in edits { $0[k] = v } }
            #expect(throws: Never.self) { _ = try DiffusionModel(path: path, threads: 1) }
        }
    }

    @Test func refusesBrokenFolders() throws {
        expectError(.io, ["does not exist"]) { _ = try DiffusionModel(path: "/nonexistent/model", threads: 1) }
        let bad = try folder(configText: "{\"in_channels\": 3,")
        expectError(.invalidFile, ["invalid JSON", "config.json"]) { _ = try DiffusionModel(path: bad, threads: 1) }
        let notObject = try folder(configText: "[1, 2]")
        expectError(.invalidFile, ["not a JSON object"]) { _ = try DiffusionModel(path: notObject, threads: 1) }
        // The weights of a 2-layer model under a 3-layer config: a tensor is missing.
        let mismatch = try folder { $0["layers_per_block"] = 3 }
        expectError(.modelMismatch, ["missing tensor", "down_blocks.0.resnets.2"]) { _ = try DiffusionModel(path: mismatch, threads: 1) }
        // Wider channels than the weights: a tensor has the wrong shape.
        let wrongShape = try folder { $0["block_out_channels"] = [16, 16] }
        expectError(.modelMismatch, ["conv_in.weight", "shape"]) { _ = try DiffusionModel(path: wrongShape, threads: 1) }
        let binOnly = try folder()
        try FileManager.default.moveItem(atPath: binOnly + "/diffusion_pytorch_model.safetensors",
                                         toPath: binOnly + "/diffusion_pytorch_model.bin")
        expectError(.unsupported, ["diffusion_pytorch_model.bin", "safetensors"]) { _ = try DiffusionModel(path: binOnly, threads: 1) }
        let badScheduler = try folder()
        try #"{"_class_name": "KDPM2DiscreteScheduler"}"#.write(toFile: badScheduler + "/scheduler_config.json", atomically: true, encoding: .utf8)
        expectError(.unsupported, ["KDPM2DiscreteScheduler", "scheduler_config.json"]) { _ = try DiffusionModel(path: badScheduler, threads: 1) }
        let badBetas = try folder()
        try #"{"beta_schedule": "sigmoid"}"#.write(toFile: badBetas + "/scheduler_config.json", atomically: true, encoding: .utf8)
        expectError(.unsupported, ["beta_schedule", "sigmoid"]) { _ = try DiffusionModel(path: badBetas, threads: 1) }
    }

    @Test func loadsPipelineFolderAndReportsConfig() throws {
        let model = try folder(from: "cifar_small_legacy")
        let pipeline = temporaryFolder("dp")
        try FileManager.default.createDirectory(atPath: pipeline + "/scheduler", withIntermediateDirectories: true)
        try FileManager.default.moveItem(atPath: model, toPath: pipeline + "/unet")
        try #"{"_class_name": "DDIMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}"#
            .write(toFile: pipeline + "/model_index.json", atomically: true, encoding: .utf8)
        try #"{"_class_name": "DDIMScheduler", "num_train_timesteps": 500, "clip_sample": false}"#
            .write(toFile: pipeline + "/scheduler/scheduler_config.json", atomically: true, encoding: .utf8)
        let m = try DiffusionModel(path: pipeline, threads: 1)
        #expect(m.defaultScheduler == "ddim")
        let config = try JSONValue.parse(m.configJSON)
        #expect(config["scheduler"]?["num_train_timesteps"]?.intValue == 500)
        #expect(config["scheduler"]?["clip_sample"]?.boolValue == false)
        #expect(config["scheduler"]?["beta_schedule"]?.stringValue == "linear")   // a default, filled in
        #expect(config["unet"]?["block_out_channels"] == .array([8, 16, 16, 16].map { .number($0) }))
        #expect(config["unet"]?["norm_eps"]?.doubleValue == 1e-6)
        // Keys an old config.json lacks take UNet2DModel's defaults.
        #expect(config["unet"]?["mid_block_type"]?.stringValue == "UNetMidBlock2D")
        #expect(config["unet"]?["resnet_time_scale_shift"]?.stringValue == "default")
        #expect(config["unet"]?["add_attention"]?.boolValue == true)
        // Without a count of steps, DDIM takes 50 from the 500 training steps (leading spacing).
        let s = try Sampler(model: m, params: SamplerParams())
        #expect(s.scheduler.timesteps.count == 50)
        #expect(s.scheduler.timesteps.first == 490)

        let empty = temporaryFolder("de")
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        try "{}".write(toFile: empty + "/model_index.json", atomically: true, encoding: .utf8)
        expectError(.io, ["no unet/ folder"]) { _ = try DiffusionModel(path: empty, threads: 1) }
    }

    /// A DPM-Solver++ scheduler_config.json as diffusers writes it: lambda_min_clipped is the bare
    /// word -Infinity (Python's json.dumps); it loads, and the model's default scheduler is dpmpp_2m.
    @Test func loadsPythonWrittenSchedulerConfig() throws {
        let path = try folder()
        try #"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "solver_order": 2, "variance_type": null}"#
            .write(toFile: path + "/scheduler_config.json", atomically: true, encoding: .utf8)
        let m = try DiffusionModel(path: path, threads: 1)
        #expect(m.defaultScheduler == "dpmpp_2m")
        var p = SamplerParams()
        p.steps = 10
        let s = try Sampler(model: m, params: p)
        #expect(s.scheduler is DPMSolverMultistepScheduler && s.totalSteps == 10)
        // Only config files get Python's constants; NaN stays refused where a number is needed.
        #expect(throws: DiffusionError.self) { _ = try JSONValue.parse("[-Infinity]") }
        try #"{"_class_name": "DDIMScheduler", "beta_start": NaN}"#
            .write(toFile: path + "/scheduler_config.json", atomically: true, encoding: .utf8)
        expectError(.invalidFile, ["beta_start"]) { _ = try DiffusionModel(path: path, threads: 1) }
    }

    @Test func samplerRefusesBadSettings() throws {
        let m = try DiffusionModel(path: Fixtures.path("unet/plain"), threads: 1)
        func make(_ edit: (inout SamplerParams) -> Void) throws {
            var p = SamplerParams()
            edit(&p)
            _ = try Sampler(model: m, params: p)
        }
        expectError(.invalidArgument, ["unknown scheduler", "k_dpm_2", "euler_a"]) { try make { $0.scheduler = "k_dpm_2" } }
        expectError(.invalidArgument, ["steps 2000", "1000"]) { try make { $0.steps = 2000 } }
        expectError(.invalidArgument, ["batch"]) { try make { $0.batch = 0 } }
        expectError(.invalidArgument, ["multiples of 2"]) { try make { $0.height = 15 } }
        expectError(.invalidArgument, ["eta"]) { try make { $0.scheduler = "ddim"; $0.eta = -1 } }
        expectError(.unsupported, ["timestep_spacing", "karras"]) {
            try make { $0.schedulerOverrides = .object([("timestep_spacing", .string("karras"))]) }
        }
        // betas outside (0, 1) (alphas_cumprod <= 0 or >= 1) trapped in the sigma schedules before
        expectError(.invalidArgument, ["scheduler_config", "alphas_cumprod", "(0, 1)"]) {
            try make { $0.scheduler = "unipc"; $0.schedulerOverrides = .object([("beta_start", .number(2)), ("beta_schedule", .string("scaled_linear"))]) }
        }
        expectError(.invalidArgument, ["alphas_cumprod"]) {
            try make { $0.scheduler = "euler"; $0.schedulerOverrides = .object([("beta_end", .number(1))]) }
        }
        expectError(.invalidArgument, ["lms", "strictly decreasing"]) {
            try make {
                $0.scheduler = "lms"; $0.steps = 2
                $0.schedulerOverrides = .object([("num_train_timesteps", .number(2)), ("beta_end", .number(0))])
            }
        }
        expectError(.invalidArgument, ["scheduler_config", "clip_sample"]) {
            try make { $0.schedulerOverrides = .object([("clip_sample", .string("yes"))]) }
        }
        let s = try Sampler(model: m, params: SamplerParams())
        expectError(.noUnconditional, ["unconditional"]) { try s.setGuidanceScale(3) }
        expectError(.invalidArgument, ["not class-conditional"]) { _ = try m.classConditioning([1], batch: 1) }
    }
}
