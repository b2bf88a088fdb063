/// CLIP's BPE tokenizer, id for id what transformers 5.25's `CLIPTokenizer.from_pretrained(folder)`
/// gives (a `TokenizersBackend` over the tokenizers library; `CLIPTokenizerFast` is the same class).
///
/// The stages, as tokenizers runs them:
/// 1. added tokens that are not `normalized` are cut out of the raw text (`AddedTokenMatcher`);
/// 2. each remaining run is normalized (`CLIPNormalizer`: NFC, whitespace runs -> " ", lower case);
/// 3. `normalized` added tokens are cut out of that;
/// 4. the rest is split into words (`CLIPPreTokenizer`) and each word's bytes are BPE-encoded
///    (`BytePairEncoder`).
/// Consequences worth knowing: SD2's tokenizer pads with "!", which makes "!" a special token, so
/// every "!" in a prompt is id 0 (never "!</w>" or "!!"); `<|endoftext|>` typed in a prompt is the
/// eos id, while `<|ENDOFTEXT|>` is BPE'd as "<|", "endoftext", "|>" unless the config marks the
/// token normalized.
///
/// Immutable after loading: one tokenizer may be used by any number of threads at once.
public final class CLIPTokenizer: Sendable {
    /// tokenizer_config.json's model_max_length (77 without one): the length of `encode`'s result.
    public let modelMaxLength: Int
    public let bosID: Int
    public let eosID: Int
    public let padID: Int
    /// Stands in for a byte that vocab.json lacks (never, with CLIP's vocabulary).
    let unkID: Int

    private let encoder: BytePairEncoder
    private let rawTokens: AddedTokenMatcher
    private let normalizedTokens: AddedTokenMatcher

    /// Prompts are cut after this many scalars (16 Mi, far beyond any prompt): NFC at most triples the
    /// scalars, lower-casing at most doubles them, a scalar is at most 4 bytes, so a word stays below
    /// 2^31 bytes and its positions fit the BPE's Int32 links.
    static let maxPromptScalars = 1 << 24

    /// Loads a diffusers `tokenizer/` folder: vocab.json + merges.txt (required), tokenizer_config.json and
    /// special_tokens_map.json (optional). Every file is validated; a bad one throws DiffusionError(.invalidFile or .io)
    /// whose message names the file and the problem.
    public init(folder: String) throws {
        guard FileIO.isDirectory(folder) else { throw DiffusionError(.io, "\(folder) is not a directory") }
        let vocabulary = try VocabularyFiles.readVocabulary(folder + "/vocab.json")
        let merges = try VocabularyFiles.readMerges(folder + "/merges.txt", vocabulary: vocabulary)
        let config = try CLIPTokenizerConfig.load(folder: folder)

        func id(_ token: AddedToken, _ role: String) throws -> Int {
            guard let id = vocabulary[token.content] else {
                throw DiffusionError(.invalidFile, "\(token.source): the \(role) \(VocabularyFiles.quoted(token.content)) is not in vocab.json")
            }
            return id
        }
        bosID = try id(config.bos, "bos_token")
        eosID = try id(config.eos, "eos_token")
        padID = try id(config.pad, "pad_token")
        unkID = try id(config.unk, "unk_token")
        modelMaxLength = config.modelMaxLength

        var raw: [([Unicode.Scalar], Int)] = []
        var normalized: [([Unicode.Scalar], Int)] = []
        for token in config.addedTokens {
            let tokenID = try id(token, "added token")
            let scalars = Array(token.content.unicodeScalars)
            // tokenizers matches a normalized token by its normalized form.
            if token.normalized { normalized.append((CLIPNormalizer.normalize(scalars[...]), tokenID)) }
            else { raw.append((scalars, tokenID)) }
        }
        rawTokens = AddedTokenMatcher(raw)
        normalizedTokens = AddedTokenMatcher(normalized)

        let unk = Int32(unkID)  // below the token count: fits
        let symbols = BytePairEncoder.byteCharacters.map { String($0) }
        encoder = BytePairEncoder(
            byteIDs: symbols.map { vocabulary[$0].map { Int32($0) } ?? unk },
            finalByteIDs: symbols.map { vocabulary[$0 + "</w>"].map { Int32($0) } ?? unk },
            merges: merges)
    }

    /// The ids transformers gives for tokenizer(text, padding="max_length", max_length=model_max_length, truncation=True).input_ids:
    /// bos, BPE ids truncated to modelMaxLength-2, eos, then padID up to modelMaxLength.
    public func encode(_ text: String) -> [Int] {
        var ids = [bosID]
        ids += tokens(text, limit: modelMaxLength - 2)
        ids.append(eosID)
        ids += repeatElement(padID, count: modelMaxLength - ids.count)
        return ids
    }

    /// `encode` for a prompt that arrives as bytes (the C boundary). Throws `.invalidArgument` if they are not UTF-8.
    public func encode(utf8 bytes: [UInt8]) throws -> [Int] {
        try encode(Self.validatedText(bytes))
    }

    /// BPE ids without special tokens and without truncation (for counting / diagnostics).
    /// Added tokens written in the text are included, as their ids.
    public func tokenize(_ text: String) -> [Int] {
        tokens(text, limit: .max)
    }

    /// The first `limit` ids of the text; stops working once it has them.
    private func tokens(_ text: String, limit: Int) -> [Int] {
        let scalars = Array(text.unicodeScalars.prefix(Self.maxPromptScalars))
        var out: [Int] = []
        var word: [UInt8] = []
        var scratch = BytePairEncoder.Scratch()
        guard limit > 0 else { return out }
        rawTokens.forEachSplit(scalars[...]) { split in
            switch split {
            case let .token(id):
                out.append(id)
            case let .text(range):
                let normal = CLIPNormalizer.normalize(scalars[range])
                return normalizedTokens.forEachSplit(normal[...]) { split in
                    switch split {
                    case let .token(id):
                        out.append(id)
                    case let .text(range):
                        return CLIPPreTokenizer.forEachPiece(normal[range]) { piece in
                            word.removeAll(keepingCapacity: true)
                            for u in piece { UTF8.encode(u) { word.append($0) } }
                            encoder.encode(word, into: &out, scratch: &scratch)
                            return out.count < limit
                        }
                    }
                    return out.count < limit
                }
            }
            return out.count < limit
        }
        if out.count > limit { out.removeLast(out.count - limit) }
        return out
    }

    /// The bytes as text, or `.invalidArgument` naming the first bad byte.
    static func validatedText(_ bytes: [UInt8]) throws -> String {
        if let text = String(validating: bytes, as: UTF8.self) { return text }
        let (offset, reason) = bytes.withUnsafeBufferPointer { buf -> (Int, String) in
            guard let p = buf.baseAddress else { return (0, "invalid UTF-8") }
            var i = 0
            while i < buf.count {
                let (len, problem) = UTF8Check.sequenceLength(p, i, buf.count)
                if let problem { return (i, problem) }
                i += len
            }
            return (0, "invalid UTF-8")
        }
        throw DiffusionError(.invalidArgument, "prompt is not valid UTF-8 (byte \(offset): \(reason))")
    }
}
