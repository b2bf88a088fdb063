/// What a tokenizer folder's tokenizer_config.json and special_tokens_map.json say, resolved the way
/// transformers 5.25's `CLIPTokenizer.from_pretrained` resolves them (both files optional):
///
/// 1. tokenizer_config.json is read. If it has `added_tokens_decoder` (what transformers >= 4.34
///    writes), special_tokens_map.json is not read at all; otherwise each of its keys replaces the
///    config's. Missing named tokens take CLIPTokenizer's defaults: bos `<|startoftext|>`, eos, unk
///    and pad `<|endoftext|>`.
/// 2. Tokens are registered in this order: `added_tokens_decoder` (by id), then bos, eos, unk, sep,
///    pad, cls, mask, then extra special tokens — skipping a token whose content the decoder
///    already holds, or that equals one registered before. A token whose content is a named
///    token's is special.
/// 3. For a content registered more than once, the last registration's flags count (tokenizers
///    0.23 replaces the earlier one). Example: SD1's config makes eos a `normalized: true` object
///    but pad the plain string "<|endoftext|>", so `<|endoftext|>` is matched on the raw text only.
/// 4. A plain string is special and not normalized; an object's missing "normalized" is `!special`.
///
/// `bos_token_id`-style numbers are ignored: ids always come from vocab.json.
struct CLIPTokenizerConfig {
    var bos: AddedToken
    var eos: AddedToken
    var unk: AddedToken
    var pad: AddedToken
    /// One per content, with its effective flags, in first-registration order.
    var addedTokens: [AddedToken]
    var modelMaxLength: Int

    static let defaultModelMaxLength = 77
    /// model_max_length must lie in 2..<maxModelMaxLength (bos + eos need two places; transformers
    /// writes 1e30 for "unknown", which would make every encode allocate forever).
    static let maxModelMaxLength = 1 << 20
    /// Caps on what a config may declare, so a hostile one cannot make matching slow.
    static let maxAddedTokens = 4096
    static let maxAddedTokenScalars = 256

    private static let named = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]
    private static let defaults = ["bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                                   "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"]

    static func load(folder: String) throws -> CLIPTokenizerConfig {
        let configPath = folder + "/tokenizer_config.json"
        let mapPath = folder + "/special_tokens_map.json"
        let config = try readObject(configPath)

        // 1. Which file each key comes from.
        var values: [String: (value: JSONValue, source: String, fromMap: Bool)] = [:]
        for (key, value) in config { values[key] = (value, configPath, false) }
        var decoder: [AddedToken] = []
        if let entries = values["added_tokens_decoder"]?.value {
            decoder = try parseDecoder(entries, source: configPath)
        } else {
            if FileIO.exists(folder + "/added_tokens.json") {
                throw DiffusionError(.unsupported, "\(folder)/added_tokens.json: tokens added by a legacy added_tokens.json are not supported")
            }
            for (key, value) in try readObject(mapPath) { values[key] = (value, mapPath, true) }
        }
        if let split = values["split_special_tokens"], split.value == .bool(true) {
            throw DiffusionError(.unsupported, "\(split.source): split_special_tokens true is not supported")
        }

        // 2. Named tokens, then extras, in transformers' registration order.
        var namedTokens: [String: AddedToken] = [:]
        var candidates: [AddedToken] = []
        for key in named {
            let token: AddedToken?
            if let entry = values[key] {
                token = try AddedToken.parse(entry.value, key: key, source: entry.source, forceSpecial: entry.fromMap)
                if token == nil && defaults[key] != nil {
                    throw DiffusionError(.invalidFile, "\(entry.source): \(key) is null; the tokenizer needs it")
                }
            } else {
                token = defaults[key].map { AddedToken(content: $0, normalizedFlag: nil, special: true, isString: true,
                                                       source: "transformers' CLIPTokenizer default") }
            }
            if var t = token {
                t.special = true
                namedTokens[key] = t
                candidates.append(t)
            }
        }
        candidates += try extraTokens(values)

        let decoderContents = Set(decoder.map(\.content))
        var registered = decoder
        for t in candidates where !decoderContents.contains(t.content) && !registered.contains(where: { $0.sameToken(t) }) {
            registered.append(t)
        }
        let namedContents = Set(namedTokens.values.map(\.content))
        for i in registered.indices where namedContents.contains(registered[i].content) { registered[i].special = true }

        // 3. The last registration of a content decides its flags.
        var order: [String] = []
        var effective: [String: AddedToken] = [:]
        for t in registered where !t.content.isEmpty {  // tokenizers ignores empty tokens
            if effective.updateValue(t, forKey: t.content) == nil { order.append(t.content) }
        }
        let added = order.compactMap { effective[$0] }
        try check(added)

        guard let bos = namedTokens["bos_token"], let eos = namedTokens["eos_token"],
              let unk = namedTokens["unk_token"], let pad = namedTokens["pad_token"] else {
            throw DiffusionError(.internal, "\(folder): a required special token is missing")  // defaults make this unreachable
        }
        return CLIPTokenizerConfig(bos: bos, eos: eos, unk: unk, pad: pad, addedTokens: added,
                                   modelMaxLength: try modelMaxLength(values["model_max_length"]))
    }

    /// The file's top-level object, or no members if the file does not exist.
    private static func readObject(_ path: String) throws -> [(String, JSONValue)] {
        guard FileIO.exists(path) else { return [] }
        guard case let .object(members) = try VocabularyFiles.readJSON(path) else {
            throw DiffusionError(.invalidFile, "\(path): expected a JSON object")
        }
        return members
    }

    /// `added_tokens_decoder`: {"<id>": {"content": ..., ...}}, registered in order of id.
    private static func parseDecoder(_ value: JSONValue, source: String) throws -> [AddedToken] {
        guard case let .object(entries) = value else {
            throw DiffusionError(.invalidFile, "\(source): added_tokens_decoder is \(VocabularyFiles.brief(value)), expected an object")
        }
        guard entries.count <= maxAddedTokens else {
            throw DiffusionError(.invalidFile, "\(source): added_tokens_decoder has \(entries.count) tokens, more than \(maxAddedTokens)")
        }
        var tokens: [(Int, AddedToken)] = []
        for (key, entry) in entries {
            guard let id = Int(key), id >= 0 else {
                throw DiffusionError(.invalidFile, "\(source): added_tokens_decoder key \(VocabularyFiles.quoted(key)) is not a token id")
            }
            guard case .object = entry, let token = try AddedToken.parse(entry, key: "added_tokens_decoder[\(key)]", source: source, forceSpecial: false) else {
                throw DiffusionError(.invalidFile, "\(source): added_tokens_decoder[\(key)] is not an AddedToken object")
            }
            tokens.append((id, token))
        }
        return tokens.sorted { $0.0 < $1.0 }.map(\.1)
    }

    /// additional_special_tokens / extra_special_tokens (a list, or extra_special_tokens as a name -> token
    /// object), and any other `*_token` key holding a token: transformers registers them all as special.
    private static func extraTokens(_ values: [String: (value: JSONValue, source: String, fromMap: Bool)]) throws -> [AddedToken] {
        var out: [AddedToken] = []
        for key in values.keys.sorted() {
            guard let entry = values[key] else { continue }
            let items: [(String, JSONValue)]
            switch (key, entry.value) {
            case ("additional_special_tokens", .array(let a)), ("extra_special_tokens", .array(let a)):
                items = a.enumerated().map { ("\(key)[\($0.offset)]", $0.element) }
            case ("extra_special_tokens", .object(let o)):
                items = o.map { ("\(key).\($0.0)", $0.1) }
            case (_, .string), (_, .object):
                guard key.hasSuffix("_token") && !named.contains(key) else { continue }
                items = [(key, entry.value)]
            default:
                continue
            }
            for (name, value) in items {
                if var token = try AddedToken.parse(value, key: name, source: entry.source, forceSpecial: entry.fromMap) {
                    if token.isString { token.special = true }
                    out.append(token)
                }
            }
        }
        guard out.count <= maxAddedTokens else {
            throw DiffusionError(.invalidFile, "the tokenizer config declares \(out.count) extra special tokens, more than \(maxAddedTokens)")
        }
        return out
    }

    private static func check(_ tokens: [AddedToken]) throws {
        for t in tokens {
            guard t.content.unicodeScalars.count <= maxAddedTokenScalars else {
                throw DiffusionError(.invalidFile, "\(t.source): the added token \(VocabularyFiles.quoted(t.content)) is longer than \(maxAddedTokenScalars) characters")
            }
            if t.lstrip || t.rstrip || t.singleWord {
                throw DiffusionError(.unsupported, "\(t.source): the added token \(VocabularyFiles.quoted(t.content)) has lstrip, rstrip or single_word set, which is not supported")
            }
        }
    }

    private static func modelMaxLength(_ entry: (value: JSONValue, source: String, fromMap: Bool)?) throws -> Int {
        guard let entry, !entry.value.isNull else { return defaultModelMaxLength }
        guard let d = entry.value.doubleValue else {
            throw DiffusionError(.invalidFile, "\(entry.source): model_max_length is \(VocabularyFiles.brief(entry.value)), expected an integer")
        }
        guard d.rounded() == d, d >= 2, d < Double(maxModelMaxLength) else {
            throw DiffusionError(.invalidFile, "\(entry.source): model_max_length \(VocabularyFiles.brief(entry.value)) is not an integer in 2..<\(maxModelMaxLength)")
        }
        return Int(d)
    }
}
