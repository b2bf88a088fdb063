import Foundation
import Testing
import DiffusionCore

/// The CLIP tokenizer against transformers 5.25's ids (Tests/Fixtures/tokenizer, written by
/// tools/make_tokenizer_fixtures.py), and against hostile tokenizer folders and prompts.
@Suite final class CLIPTokenizerTests {
    /// Every folder a test makes, removed when the test ends.
    var made: [String] = []
    deinit { for path in made { try? FileManager.default.removeItem(atPath: path) } }

    struct Prompt {
        var text: String
        var ids: [String: [Int]]
    }

    /// corpus.json or variants.json, parsed with the library's own JSON parser (prompts hold NUL and lone controls).
    static func fixtureJSON(_ name: String) throws -> JSONValue {
        let data = try Data(contentsOf: Fixtures.root.appendingPathComponent("tokenizer/\(name)"))
        return try [UInt8](data).withUnsafeBytes { try JSONValue.parse($0) }
    }

    static func ints(_ value: JSONValue?) throws -> [Int] {
        let items = try #require(value?.arrayValue)
        return try items.map { try #require($0.intValue) }
    }

    static func corpus() throws -> [Prompt] {
        let prompts = try #require(try fixtureJSON("corpus.json")["prompts"]?.arrayValue)
        return try prompts.map { entry in
            var ids: [String: [Int]] = [:]
            for key in ["sd1", "sd2", "tokens_sd1", "tokens_sd2"] { ids[key] = try ints(entry[key]) }
            return Prompt(text: try #require(entry["text"]?.stringValue), ids: ids)
        }
    }

    /// Compares every prompt and reports the first few mismatches with both id lists.
    func expectSame(_ label: String, _ cases: [(text: String, got: [Int], want: [Int])],
                    sourceLocation: SourceLocation = #_sourceLocation) {
        let bad = cases.filter { $0.got != $0.want }
        for c in bad.prefix(5) {
            Issue.record("\(label): \(c.text.unicodeScalars.map { $0.escaped(asASCII: true) }.joined().prefix(120))\n  got  \(c.got)\n  want \(c.want)",
                         sourceLocation: sourceLocation)
        }
        #expect(bad.isEmpty, "\(label): \(bad.count) of \(cases.count) prompts differ", sourceLocation: sourceLocation)
    }

    @Test func corpusMatchesTransformers() throws {
        let prompts = try Self.corpus()
        #expect(prompts.count >= 250)
        for (folder, special) in [("sd1", (49406, 49407, 49407)), ("sd2", (49406, 49407, 0))] {
            let tokenizer = try CLIPTokenizer(folder: Fixtures.path("tokenizer/\(folder)"))
            #expect(tokenizer.modelMaxLength == 77)
            #expect((tokenizer.bosID, tokenizer.eosID, tokenizer.padID) == special, "\(folder)")
            expectSame("\(folder) encode", prompts.map { ($0.text, tokenizer.encode($0.text), $0.ids[folder] ?? []) })
            expectSame("\(folder) tokenize", prompts.map { ($0.text, tokenizer.tokenize($0.text), $0.ids["tokens_" + folder] ?? []) })
            expectSame("\(folder) encode(utf8:)", try prompts.map { ($0.text, try tokenizer.encode(utf8: Array($0.text.utf8)), $0.ids[folder] ?? []) })
        }
    }

    /// Other config layouts: added_tokens_decoder, no config files, objects without "normalized", max length 64.
    @Test func configVariantsMatchTransformers() throws {
        let variants = try #require(try Self.fixtureJSON("variants.json")["variants"]?.arrayValue)
        #expect(variants.count >= 6)
        for variant in variants {
            let name = try #require(variant["name"]?.stringValue)
            let tokenizer = try CLIPTokenizer(folder: Fixtures.path("tokenizer/variants/\(name)"))
            #expect(tokenizer.modelMaxLength == variant["max_length"]?.intValue, "\(name)")
            #expect([tokenizer.bosID, tokenizer.eosID, tokenizer.padID] == [variant["bos"], variant["eos"], variant["pad"]].map { $0?.intValue }, "\(name)")
            let probes = try #require(variant["probes"]?.arrayValue)
            #expect(!probes.isEmpty)
            let cases = try probes.map { probe in
                (text: try #require(probe["text"]?.stringValue), ids: try Self.ints(probe["ids"]), tokens: try Self.ints(probe["tokens"]))
            }
            expectSame("\(name) encode", cases.map { ($0.text, tokenizer.encode($0.text), $0.ids) })
            expectSame("\(name) tokenize", cases.map { ($0.text, tokenizer.tokenize($0.text), $0.tokens) })
        }
    }

    @Test func invalidUTF8PromptIsRefused() throws {
        let tokenizer = try CLIPTokenizer(folder: Fixtures.path("tokenizer/sd1"))
        for bytes: [UInt8] in [[0xFF], [0x61, 0xC3], [0x61, 0xED, 0xA0, 0x80], [0xC0, 0xAF], [0xF4, 0x90, 0x80, 0x80], [0x80, 0x61]] {
            expectError(.invalidArgument, ["prompt is not valid UTF-8"]) { _ = try tokenizer.encode(utf8: bytes) }
        }
        #expect(try tokenizer.encode(utf8: []) == tokenizer.encode(""))
        #expect(try tokenizer.encode(utf8: Array("café\u{0}x".utf8)) == tokenizer.encode("café\u{0}x"))
    }

    /// Prompts far beyond what is kept: the work is bounded (no timing asserted, it just has to finish).
    @Test func hugePromptsFinish() throws {
        let sd1 = try CLIPTokenizer(folder: Fixtures.path("tokenizer/sd1"))
        let sd2 = try CLIPTokenizer(folder: Fixtures.path("tokenizer/sd2"))
        let megabyte = 1 << 20
        let prompts = [
            String(repeating: "a", count: megabyte),                       // one word of a million letters
            String(repeating: "a photo of a cat, ", count: megabyte / 18),
            String(repeating: "!", count: megabyte),                       // sd2: every "!" is a special token
            String(repeating: "中", count: megabyte / 3),
            String(repeating: "e\u{301}<|endoftext|>", count: megabyte / 16),
            String(repeating: "😀 \u{1F469}\u{200D}\u{1F467} ", count: megabyte / 16),
        ]
        for p in prompts {
            for t in [sd1, sd2] {
                let ids = t.encode(p)
                #expect(ids.count == 77)
                #expect(ids.first == t.bosID && ids.last == t.eosID)
            }
        }
        #expect(sd2.tokenize(String(repeating: "!", count: megabyte)).count == megabyte)
        #expect(sd1.tokenize(String(repeating: "a photo of a cat, ", count: 1000)).count == 6000)
        #expect(!sd1.tokenize(String(repeating: "a", count: megabyte)).isEmpty)
    }

    @Test func oneTokenizerManyThreads() throws {
        let tokenizer = try CLIPTokenizer(folder: Fixtures.path("tokenizer/sd1"))
        let prompts = try Self.corpus().map(\.text)
        let serial = prompts.map { tokenizer.encode($0) }
        let results = Results(count: 4)
        DispatchQueue.concurrentPerform(iterations: 4) { k in
            results.set(k, prompts.map { tokenizer.encode($0) } == serial)
        }
        #expect(results.all)
    }

    final class Results: @unchecked Sendable {
        private let lock = NSLock()
        private var values: [Bool]
        init(count: Int) { values = Array(repeating: false, count: count) }
        func set(_ i: Int, _ v: Bool) { lock.lock(); values[i] = v; lock.unlock() }
        var all: Bool { lock.lock(); defer { lock.unlock() }; return values.allSatisfy { $0 } }
    }

    // MARK: - Hostile folders

    /// A temporary tokenizer folder. Files given as text; vocab.json / merges.txt default to CLIP's (symlinked).
    func folder(_ files: [String: String] = [:], bytes: [String: [UInt8]] = [:]) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tok-\(UUID().uuidString)").path
        made.append(path)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        for name in ["vocab.json", "merges.txt"] where files[name] == nil && bytes[name] == nil {
            try FileManager.default.createSymbolicLink(atPath: path + "/" + name, withDestinationPath: Fixtures.path("clip_vocab/\(name)"))
        }
        for (name, text) in files { try text.write(toFile: path + "/" + name, atomically: true, encoding: .utf8) }
        for (name, data) in bytes { try Data(data).write(to: URL(fileURLWithPath: path + "/" + name)) }
        return path
    }

    /// A tiny vocabulary with the two special tokens, for vocab.json / merges.txt errors.
    static let tinyVocab = #"{"a": 0, "b": 1, "ab": 2, "<|startoftext|>": 3, "<|endoftext|>": 4}"#
    static let tinyMerges = "#version: 0.2\na b\n"

    @Test func tinyVocabularyLoads() throws {
        let t = try CLIPTokenizer(folder: folder(["vocab.json": Self.tinyVocab, "merges.txt": Self.tinyMerges]))
        #expect((t.bosID, t.eosID, t.padID) == (3, 4, 4))
        // Bytes the vocabulary lacks (here "b</w>", "c") stand for the unk token, as in tokenizers.
        #expect(t.tokenize("ab c") == [0, 4, 4])
    }

    @Test func refusesBadVocabulary() throws {
        let cases: [(String, DiffusionError.Code, [String])] = [
            ("[1, 2]", .invalidFile, ["vocab.json", "JSON object"]),
            ("{\"a\": 0,", .invalidFile, ["vocab.json", "invalid JSON"]),
            ("", .invalidFile, ["vocab.json", "invalid JSON"]),
            ("{}", .invalidFile, ["vocab.json", "empty"]),
            (#"{"a": "0", "b": 1}"#, .invalidFile, ["vocab.json", "\"a\"", "not an integer"]),
            (#"{"a": 0.5, "b": 1}"#, .invalidFile, ["vocab.json", "not an integer"]),
            (#"{"a": null, "b": 1}"#, .invalidFile, ["vocab.json", "not an integer"]),
            (#"{"a": 0, "b": 0}"#, .invalidFile, ["vocab.json", "id 0", "two tokens"]),
            (#"{"a": 0, "b": 2}"#, .invalidFile, ["vocab.json", "id 2", "outside"]),
            (#"{"a": -1, "b": 1}"#, .invalidFile, ["vocab.json", "id -1", "outside"]),
            (#"{"a": 1e300, "b": 1}"#, .invalidFile, ["vocab.json", "not an integer"]),
            (#"{"a": 0, "a": 1}"#, .invalidFile, ["vocab.json", "\"a\"", "twice"]),
        ]
        for (text, code, phrases) in cases {
            let path = try folder(["vocab.json": text, "merges.txt": Self.tinyMerges])
            expectError(code, phrases) { _ = try CLIPTokenizer(folder: path) }
        }
        let notUTF8 = try folder(["merges.txt": Self.tinyMerges], bytes: ["vocab.json": [0x7B, 0x22, 0xFF, 0x22, 0x3A, 0x30, 0x7D]])
        expectError(.invalidFile, ["vocab.json", "UTF-8"]) { _ = try CLIPTokenizer(folder: notUTF8) }
    }

    @Test func refusesBadMerges() throws {
        let cases: [(String, [String])] = [
            ("#version: 0.2\na b c\n", ["merges.txt line 2", "two tokens"]),
            ("#version: 0.2\nab\n", ["merges.txt line 2", "two tokens"]),
            ("#version: 0.2\na  b\n", ["merges.txt line 2", "two tokens"]),
            ("#version: 0.2\na b \n", ["merges.txt line 2", "two tokens"]),
            ("#version: 0.2\n\na b\n", ["merges.txt line 2", "two tokens"]),
            ("#version: 0.2\na z\n", ["merges.txt line 2", "\"z\"", "not in vocab.json"]),
            ("a b\nb a\n", ["merges.txt line 2", "\"ba\"", "not in vocab.json"]),
        ]
        for (text, phrases) in cases {
            let path = try folder(["vocab.json": Self.tinyVocab, "merges.txt": text])
            expectError(.invalidFile, phrases) { _ = try CLIPTokenizer(folder: path) }
        }
        // CRLF line ends and a missing final newline are fine, as for tokenizers.
        _ = try CLIPTokenizer(folder: folder(["vocab.json": Self.tinyVocab, "merges.txt": "#version: 0.2\r\na b"]))
        let notUTF8 = try folder(["vocab.json": Self.tinyVocab], bytes: ["merges.txt": [0x61, 0x20, 0xC3]])
        expectError(.invalidFile, ["merges.txt", "UTF-8"]) { _ = try CLIPTokenizer(folder: notUTF8) }
    }

    @Test func refusesMissingFilesAndNonFiles() throws {
        expectError(.io, ["/nonexistent/tokenizer", "not a directory"]) { _ = try CLIPTokenizer(folder: "/nonexistent/tokenizer") }
        for name in ["vocab.json", "merges.txt"] {
            let path = try folder()
            try FileManager.default.removeItem(atPath: path + "/" + name)
            expectError(.io, [name]) { _ = try CLIPTokenizer(folder: path) }
        }
        // A FIFO must be refused, not opened (open() would wait for a writer forever); so must a directory.
        for name in ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"] {
            let fifo = try folder()
            try? FileManager.default.removeItem(atPath: fifo + "/" + name)
            #expect(mkfifo(fifo + "/" + name, 0o644) == 0)
            expectError(.io, [name, "not a regular file"]) { _ = try CLIPTokenizer(folder: fifo) }
            let dir = try folder()
            try? FileManager.default.removeItem(atPath: dir + "/" + name)
            try FileManager.default.createDirectory(atPath: dir + "/" + name, withIntermediateDirectories: false)
            expectError(.io, [name, "not a regular file"]) { _ = try CLIPTokenizer(folder: dir) }
        }
    }

    @Test func refusesBadConfigs() throws {
        let config = "tokenizer_config.json", map = "special_tokens_map.json"
        let cases: [(String, String, DiffusionError.Code, [String])] = [
            (config, "[]", .invalidFile, [config, "JSON object"]),
            (config, "{\"model_max_length\": 77", .invalidFile, [config, "invalid JSON"]),
            (config, #"{"pad_token": "<pad>"}"#, .invalidFile, [config, "pad_token", "\"<pad>\"", "not in vocab.json"]),
            (config, #"{"bos_token": {"__type": "AddedToken", "content": "<s>"}}"#, .invalidFile, [config, "\"<s>\"", "not in vocab.json"]),
            (config, #"{"mask_token": "<mask>"}"#, .invalidFile, [config, "\"<mask>\"", "not in vocab.json"]),
            (config, #"{"additional_special_tokens": ["<extra>"]}"#, .invalidFile, [config, "\"<extra>\"", "not in vocab.json"]),
            (map, #"{"unk_token": {"content": "<unk>"}}"#, .invalidFile, [map, "\"<unk>\"", "not in vocab.json"]),
            (config, #"{"bos_token": 5}"#, .invalidFile, [config, "bos_token", "string or an AddedToken"]),
            (config, #"{"eos_token": {"normalized": true}}"#, .invalidFile, [config, "eos_token", "content"]),
            (config, #"{"eos_token": {"content": "<|endoftext|>", "normalized": "yes"}}"#, .invalidFile, [config, "eos_token.normalized"]),
            (config, #"{"eos_token": {"__type": "Other", "content": "<|endoftext|>"}}"#, .invalidFile, [config, "__type"]),
            (config, #"{"pad_token": null}"#, .invalidFile, [config, "pad_token", "null"]),
            (map, #"{"pad_token": null}"#, .invalidFile, [map, "pad_token", "null"]),
            (config, #"{"model_max_length": 1000000000000000019884624838656}"#, .invalidFile, [config, "model_max_length"]),
            (config, #"{"model_max_length": 1048576}"#, .invalidFile, [config, "model_max_length", "1048576"]),
            (config, #"{"model_max_length": 1}"#, .invalidFile, [config, "model_max_length"]),
            (config, #"{"model_max_length": 0}"#, .invalidFile, [config, "model_max_length"]),
            (config, #"{"model_max_length": -77}"#, .invalidFile, [config, "model_max_length"]),
            (config, #"{"model_max_length": 77.5}"#, .invalidFile, [config, "model_max_length"]),
            (config, #"{"model_max_length": "77"}"#, .invalidFile, [config, "model_max_length"]),
            (config, #"{"added_tokens_decoder": []}"#, .invalidFile, [config, "added_tokens_decoder"]),
            (config, #"{"added_tokens_decoder": {"x": {"content": "a"}}}"#, .invalidFile, [config, "added_tokens_decoder", "\"x\""]),
            (config, #"{"added_tokens_decoder": {"5": "a"}}"#, .invalidFile, [config, "added_tokens_decoder[5]"]),
            (config, #"{"added_tokens_decoder": {"49408": {"content": "<new>", "special": false}}}"#, .invalidFile, [config, "\"<new>\"", "not in vocab.json"]),
            // eos, unk and pad equal: transformers registers eos only, so its lstrip counts (checked against transformers;
            // with unk left a plain string, the string registers last and lstrip is gone).
            (config, #"{"eos_token": {"content": "<|endoftext|>", "lstrip": true}, "unk_token": {"content": "<|endoftext|>", "lstrip": true}, "pad_token": {"content": "<|endoftext|>", "lstrip": true}}"#,
             .unsupported, [config, "lstrip"]),
            (config, #"{"split_special_tokens": true}"#, .unsupported, [config, "split_special_tokens"]),
            (config, "{\"bos_token\": \"" + String(repeating: "x", count: 300) + "\"}", .invalidFile, [config, "longer than 256"]),
        ]
        for (name, text, code, phrases) in cases {
            let path = try folder([name: text])
            expectError(code, phrases) { _ = try CLIPTokenizer(folder: path) }
        }
        let legacy = try folder(["added_tokens.json": #"{"<cat-toy>": 49408}"#])
        expectError(.unsupported, ["added_tokens.json"]) { _ = try CLIPTokenizer(folder: legacy) }
    }

    /// Configs that are odd but valid: their ids still come from vocab.json, never from *_token_id.
    @Test func acceptsOddButValidConfigs() throws {
        let path = try folder(["tokenizer_config.json": #"{"bos_token_id": 7, "eos_token_id": 8, "pad_token_id": 9, "model_max_length": 2}"#])
        let t = try CLIPTokenizer(folder: path)
        #expect((t.bosID, t.eosID, t.padID, t.modelMaxLength) == (49406, 49407, 49407, 2))
        #expect(t.encode("a long prompt that is cut entirely") == [49406, 49407])
        let nulls = try CLIPTokenizer(folder: folder(["tokenizer_config.json": #"{"sep_token": null, "model_max_length": null}"#]))
        #expect(nulls.modelMaxLength == 77)
        // lstrip on eos and pad but not on unk (a plain string, registered after eos): the string's flags count.
        let lstrip = try CLIPTokenizer(folder: folder(["tokenizer_config.json":
            #"{"eos_token": {"content": "<|endoftext|>", "lstrip": true}, "pad_token": {"content": "<|endoftext|>", "lstrip": true}}"#]))
        #expect(lstrip.tokenize("a <|endoftext|>x") == [320, 49407, 343])
    }
}
