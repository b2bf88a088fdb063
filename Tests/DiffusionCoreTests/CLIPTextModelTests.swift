import Foundation
import Testing
import DiffusionCore

/// transformers' CLIPTextModel against the tiny pipelines' text encoders and diffusers'
/// encode_prompt references (Tests/Fixtures/sd/README.md).
@Suite struct CLIPTextModelTests {
    static func folder(_ pipeline: String) throws -> PipelineFolder {
        try PipelineFolder(path: Fixtures.path("sd/\(pipeline)"))
    }

    static func config(_ pipeline: String) throws -> CLIPTextConfig {
        try CLIPTextConfig(json: try folder(pipeline).config("text_encoder").0)
    }

    static func load(_ pipeline: String, config: CLIPTextConfig? = nil) throws -> CLIPTextModel {
        let f = try folder(pipeline)
        return try CLIPTextModel(config: try config ?? Self.config(pipeline), weights: try f.weights("text_encoder", stem: "model"))
    }

    static func parse(_ text: String) throws -> CLIPTextConfig {
        try CLIPTextConfig(json: try JSONValue.parse(text))
    }

    @Test(arguments: ["sd1", "sd2", "sd1_legacy"])
    func encodeMatchesTransformers(_ pipeline: String) throws {
        let refs = try Fixtures.tensors("sd/refs/\(pipeline)/text.safetensors")
        let ids = try #require(refs["ids"])
        let prompts = ids.shape[0]
        let tokens = ids.values.map { Int($0) }
        let model = try Self.load(pipeline)
        #expect(model.maxLength == 77)
        #expect(model.hiddenSize == (pipeline == "sd2" ? 48 : 32))
        for (key, skip) in [("embeds", nil), ("embeds_clip_skip_1", 1), ("embeds_clip_skip_2", 2)] as [(String, Int?)] {
            let expected = try #require(refs[key])
            var bytes: [[Float]] = []
            for threads in [1, 2] {
                let out = try model.encode(ids: tokens, count: prompts, clipSkip: skip, threads: threads)
                #expect([out.n, out.length, out.width] == expected.shape)
                let values = out.copyToArray()
                let scale = expected.values.reduce(0) { max($0, abs($1)) }
                let err = Fixtures.maxAbsDiff(values, expected.values)
                // DESIGN.md §3: a forward pass within 1e-4 of the output's scale.
                #expect(err <= 1e-4 * max(1, scale), "\(pipeline) \(key) threads \(threads): max abs error \(err) (scale \(scale))")
                print("CLIPText \(pipeline) \(key) threads \(threads): max abs error \(err), scale \(scale)")
                bytes.append(values)
            }
            #expect(bytes[0] == bytes[1], "\(pipeline) \(key): 1 and 2 threads differ")
            // clip_skip 0 is no skip.
            if skip == nil {
                let zero = try model.encode(ids: tokens, count: prompts, clipSkip: 0, threads: 2)
                #expect(zero.copyToArray() == bytes[0])
            }
        }
    }

    /// One prompt at a time gives the same text states as the batch (each sequence is independent).
    @Test func batchMatchesSinglePrompts() throws {
        let refs = try Fixtures.tensors("sd/refs/sd1/text.safetensors")
        let tokens = try #require(refs["ids"]).values.map { Int($0) }
        let model = try Self.load("sd1")
        let batch = try model.encode(ids: tokens, count: 5, clipSkip: nil, threads: 2).copyToArray()
        var single: [Float] = []
        for p in 0..<5 {
            single += try model.encode(ids: Array(tokens[(p * 77)..<((p + 1) * 77)]), count: 1, clipSkip: nil, threads: 2).copyToArray()
        }
        let err = Fixtures.maxAbsDiff(batch, single.map { Double($0) })
        #expect(err <= 1e-5, "batch vs single: \(err)")
    }

    /// sd1_legacy holds sd1's weights (F16, `text_model.` names, an I64 position_ids buffer).
    @Test func legacyFileLoadsAndMatchesSD1() throws {
        let file = try Self.folder("sd1_legacy").weights("text_encoder", stem: "model")
        #expect(file.path.hasSuffix("model.fp16.safetensors"))
        #expect(file.dtypeName("text_model.embeddings.position_ids") == "I64")
        #expect(file.info("text_model.embeddings.position_ids") == nil)
        expectError(.unsupported, ["text_model.embeddings.position_ids", "I64"]) {
            _ = try file.stored("text_model.embeddings.position_ids", shape: [1, 77])
        }
        let refs = try Fixtures.tensors("sd/refs/sd1/text.safetensors")
        let tokens = try #require(refs["ids"]).values.map { Int($0) }
        let legacy = try Self.load("sd1_legacy").encode(ids: tokens, count: 5, clipSkip: 1, threads: 2)
        let sd1 = try Self.load("sd1").encode(ids: tokens, count: 5, clipSkip: 1, threads: 2)
        #expect(legacy.copyToArray() == sd1.copyToArray())
    }

    @Test func configDefaultsAndIgnoredKeys() throws {
        let c = try Self.parse("{}")
        #expect(c.vocabSize == 49408 && c.hiddenSize == 512 && c.intermediateSize == 2048)
        #expect(c.numHiddenLayers == 12 && c.numAttentionHeads == 8 && c.maxPositionEmbeddings == 77)
        #expect(c.hiddenAct == .quickGelu && c.layerNormEps == 1e-5)
        // Token ids, projection, dropout, dtype ... are ignored whatever they hold.
        let ignored = try Self.parse("""
            {"architectures": ["CLIPTextModelWithProjection"], "bos_token_id": 0, "eos_token_id": "junk", "pad_token_id": null,
             "projection_dim": 768, "dropout": 0.1, "attention_dropout": 0.0, "initializer_range": 0.02,
             "initializer_factor": 1.0, "model_type": "clip_text_model", "torch_dtype": "float16",
             "transformers_version": "4.22.0.dev0", "_name_or_path": "x", "hidden_act": "gelu"}
            """)
        #expect(ignored.hiddenAct == .gelu)
        let sd2 = try Self.config("sd2")
        #expect(sd2.hiddenSize == 48 && sd2.intermediateSize == 64 && sd2.numHiddenLayers == 3 && sd2.hiddenAct == .gelu)
    }

    @Test func hostileConfigs() throws {
        expectError(.invalidFile, ["not a JSON object"]) { _ = try Self.parse("[]") }
        expectError(.invalidFile, ["not a JSON object"]) { _ = try Self.parse("\"CLIPTextModel\"") }
        expectError(.unsupported, ["hidden_act", "gelu_new"]) { _ = try Self.parse(#"{"hidden_act": "gelu_new"}"#) }
        expectError(.unsupported, ["hidden_act", "silu"]) { _ = try Self.parse(#"{"hidden_act": "silu"}"#) }
        expectError(.invalidFile, ["hidden_act"]) { _ = try Self.parse(#"{"hidden_act": 3}"#) }
        expectError(.unsupported, ["num_attention_heads 5", "hidden_size 32"]) {
            _ = try Self.parse(#"{"hidden_size": 32, "num_attention_heads": 5}"#)
        }
        expectError(.unsupported, ["num_attention_heads 64", "hidden_size 32"]) {
            _ = try Self.parse(#"{"hidden_size": 32, "num_attention_heads": 64}"#)
        }
        expectError(.unsupported, ["architectures", "CLIPVisionModel"]) {
            _ = try Self.parse(#"{"architectures": ["CLIPVisionModel"]}"#)
        }
        expectError(.unsupported, ["architectures", "CLIPModel"]) {
            _ = try Self.parse(#"{"architectures": ["CLIPTextModel", "CLIPModel"]}"#)
        }
        expectError(.invalidFile, ["architectures"]) { _ = try Self.parse(#"{"architectures": "CLIPTextModel"}"#) }
        expectError(.unsupported, ["vocab_size", "1000000000000"]) { _ = try Self.parse(#"{"vocab_size": 1e12}"#) }
        expectError(.invalidFile, ["hidden_size"]) { _ = try Self.parse(#"{"hidden_size": 9223372036854775807}"#) }
        expectError(.unsupported, ["hidden_size 1000000000000000"]) { _ = try Self.parse(#"{"hidden_size": 1e15}"#) }
        expectError(.unsupported, ["intermediate_size"]) { _ = try Self.parse(#"{"intermediate_size": 100000000}"#) }
        expectError(.unsupported, ["num_hidden_layers"]) { _ = try Self.parse(#"{"num_hidden_layers": 100000}"#) }
        expectError(.unsupported, ["max_position_embeddings"]) { _ = try Self.parse(#"{"max_position_embeddings": 1000000}"#) }
        expectError(.invalidFile, ["num_hidden_layers", "at least 1"]) { _ = try Self.parse(#"{"num_hidden_layers": 0}"#) }
        expectError(.invalidFile, ["num_attention_heads", "at least 1"]) { _ = try Self.parse(#"{"num_attention_heads": 0}"#) }
        expectError(.invalidFile, ["hidden_size", "integer"]) { _ = try Self.parse(#"{"hidden_size": 32.5}"#) }
        expectError(.invalidFile, ["vocab_size", "integer"]) { _ = try Self.parse(#"{"vocab_size": "49408"}"#) }
        expectError(.unsupported, ["layer_norm_eps"]) { _ = try Self.parse(#"{"layer_norm_eps": 0}"#) }
        expectError(.unsupported, ["layer_norm_eps"]) { _ = try Self.parse(#"{"layer_norm_eps": -1e-5}"#) }
        // A config built in code is checked too.
        var c = CLIPTextConfig()
        c.numAttentionHeads = 0
        let weights = try Self.folder("sd1").weights("text_encoder", stem: "model")
        expectError(.unsupported, ["num_attention_heads 0"]) { _ = try CLIPTextModel(config: c, weights: weights) }
    }

    @Test func weightsThatDoNotFitTheConfig() throws {
        var four = try Self.config("sd1")
        four.numHiddenLayers = 4
        expectError(.modelMismatch, ["missing tensor 'encoder.layers.3.layer_norm1.weight'"]) { _ = try Self.load("sd1", config: four) }
        expectError(.modelMismatch, ["missing tensor 'text_model.encoder.layers.3.layer_norm1.weight'", "model.fp16.safetensors"]) {
            _ = try Self.load("sd1_legacy", config: four)
        }
        var wide = try Self.config("sd1")
        wide.hiddenSize = 48
        expectError(.modelMismatch, ["embeddings.token_embedding.weight", "[49408, 32]", "expected [49408, 48]"]) {
            _ = try Self.load("sd1", config: wide)
        }
        var inter = try Self.config("sd1")
        inter.intermediateSize = 38
        expectError(.modelMismatch, ["encoder.layers.0.mlp.fc1.weight"]) { _ = try Self.load("sd1", config: inter) }
        var vocab = try Self.config("sd1")
        vocab.vocabSize = 49409
        expectError(.modelMismatch, ["embeddings.token_embedding.weight"]) { _ = try Self.load("sd1", config: vocab) }
        // A UNet's weights are not a text encoder.
        let unet = try Self.folder("sd1").weights("unet", stem: "diffusion_pytorch_model")
        expectError(.modelMismatch, ["missing tensor 'embeddings.token_embedding.weight'"]) {
            _ = try CLIPTextModel(config: try Self.config("sd1"), weights: unet)
        }
    }

    @Test func hostileArguments() throws {
        let model = try Self.load("sd1")
        let ok = [49406, 320, 49407] + [Int](repeating: 49407, count: 74)
        _ = try model.encode(ids: ok, count: 1, clipSkip: 2, threads: 1)
        _ = try model.encode(ids: Array(ok.prefix(5)), count: 1, clipSkip: nil, threads: 1)  // shorter sequences are fine
        expectError(.invalidArgument, ["token id -1", "vocabulary"]) {
            _ = try model.encode(ids: [-1] + ok.dropFirst(), count: 1, clipSkip: nil, threads: 1)
        }
        expectError(.invalidArgument, ["token id 49408", "position 5", "[0, 49408)"]) {
            var ids = ok; ids[5] = 49408
            _ = try model.encode(ids: ids, count: 1, clipSkip: nil, threads: 1)
        }
        expectError(.invalidArgument, ["token id \(Int.max)"]) {
            var ids = ok; ids[76] = .max
            _ = try model.encode(ids: ids, count: 1, clipSkip: nil, threads: 1)
        }
        _ = try model.encode(ids: ok, count: 1, clipSkip: 3, threads: 1)  // all layers skipped: diffusers allows it
        expectError(.invalidArgument, ["clip_skip 4", "3 layers"]) { _ = try model.encode(ids: ok, count: 1, clipSkip: 4, threads: 1) }
        expectError(.invalidArgument, ["clip_skip 100"]) { _ = try model.encode(ids: ok, count: 1, clipSkip: 100, threads: 1) }
        expectError(.invalidArgument, ["clip_skip -1"]) { _ = try model.encode(ids: ok, count: 1, clipSkip: -1, threads: 1) }
        expectError(.invalidArgument, ["length 78", "77 positions"]) { _ = try model.encode(ids: ok + [49407], count: 1, clipSkip: nil, threads: 1) }
        expectError(.invalidArgument, ["length 154"]) { _ = try model.encode(ids: ok + ok, count: 1, clipSkip: nil, threads: 1) }
        expectError(.invalidArgument, ["77 token ids", "2 sequences"]) { _ = try model.encode(ids: ok, count: 2, clipSkip: nil, threads: 1) }
        expectError(.invalidArgument, ["0 sequences"]) { _ = try model.encode(ids: ok, count: 0, clipSkip: nil, threads: 1) }
        expectError(.invalidArgument, ["-1 sequences"]) { _ = try model.encode(ids: ok, count: -1, clipSkip: nil, threads: 1) }
        expectError(.invalidArgument, ["0 token ids"]) { _ = try model.encode(ids: [], count: 1, clipSkip: nil, threads: 1) }
        // Odd thread counts still work (and give the same bytes).
        let a = try model.encode(ids: ok, count: 1, clipSkip: nil, threads: 0).copyToArray()
        let b = try model.encode(ids: ok, count: 1, clipSkip: nil, threads: 7).copyToArray()
        #expect(a == b)
    }
}
