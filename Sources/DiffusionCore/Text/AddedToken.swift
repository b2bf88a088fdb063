/// One added token (a special token such as `<|endoftext|>`, or any token a config declares), as
/// transformers 5 hands it to the tokenizers library. Added tokens are cut out of the text before
/// normalization and BPE and become their vocabulary id.
struct AddedToken: Sendable {
    var content: String
    /// As written; nil takes the tokenizers default, `!special` (evaluated when the token is registered).
    var normalizedFlag: Bool?
    var special: Bool
    var lstrip = false
    var rstrip = false
    var singleWord = false
    /// Written as a plain string: transformers never finds a string equal to an AddedToken object.
    var isString: Bool
    /// The file (or "transformers' default") it came from, for messages.
    var source: String

    /// Matched against the normalized text (after NFC, space folding, lower-casing) rather than the raw text.
    var normalized: Bool { normalizedFlag ?? !special }

    /// transformers' `token in tokens_to_add` test.
    func sameToken(_ other: AddedToken) -> Bool {
        guard isString == other.isString else { return false }
        if isString { return content == other.content }
        return content == other.content && normalized == other.normalized && special == other.special
            && lstrip == other.lstrip && rstrip == other.rstrip && singleWord == other.singleWord
    }

    /// A config value: a plain string, or an object `{"__type": "AddedToken", "content": ..., ...}`
    /// (`__type` optional). `forceSpecial`: special_tokens_map.json objects are made special.
    /// nil for JSON null.
    static func parse(_ value: JSONValue, key: String, source: String, forceSpecial: Bool) throws -> AddedToken? {
        switch value {
        case .null:
            return nil
        case let .string(s):
            return AddedToken(content: s, normalizedFlag: nil, special: true, isString: true, source: source)
        case .object:
            if let type = value["__type"], type != .string("AddedToken") {
                throw DiffusionError(.invalidFile, "\(source): \(key) has __type \(VocabularyFiles.brief(type)), expected \"AddedToken\"")
            }
            guard let content = value["content"]?.stringValue else {
                throw DiffusionError(.invalidFile, "\(source): \(key) has no \"content\" string")
            }
            func flag(_ name: String) throws -> Bool? {
                guard let v = value[name], !v.isNull else { return nil }
                guard let b = v.boolValue else {
                    throw DiffusionError(.invalidFile, "\(source): \(key).\(name) is \(VocabularyFiles.brief(v)), expected true or false")
                }
                return b
            }
            var token = AddedToken(content: content, normalizedFlag: try flag("normalized"),
                                   special: forceSpecial ? true : (try flag("special") ?? false),
                                   isString: false, source: source)
            token.lstrip = try flag("lstrip") ?? false
            token.rstrip = try flag("rstrip") ?? false
            token.singleWord = try flag("single_word") ?? false
            return token
        default:
            throw DiffusionError(.invalidFile, "\(source): \(key) is \(VocabularyFiles.brief(value)), expected a string or an AddedToken object")
        }
    }
}
