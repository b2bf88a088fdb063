/// The reference's pre-tokenizer on normalized text: `Split(pattern, behavior: removed, invert: true)`
/// with CLIP's pattern
///
///     <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
///
/// followed by `ByteLevel(use_regex: true)`, which splits every piece again with GPT-2's pattern.
/// A hand-written scanner gives the same pieces as the two regexes:
/// - at each position the alternatives are tried in order (leftmost-first); what no alternative
///   matches is whitespace, and it is dropped;
/// - letters run greedily, a number is one scalar, anything else runs greedily (so "!'s" is "!'" + "s");
/// - the text is already lower-cased, so case-insensitivity does not matter ("'S" arrived as "'s");
/// - GPT-2's pattern leaves every piece alone except a literal `<|startoftext|>` / `<|endoftext|>`
///   (one that was not taken as an added token), which it cuts into "<|", the word, "|>".
enum CLIPPreTokenizer {
    private static let specialLiterals: [[Unicode.Scalar]] = ["<|startoftext|>", "<|endoftext|>"].map { Array($0.unicodeScalars) }

    /// Calls `body` with each piece, in order, until it returns false. Returns false if stopped early.
    @discardableResult
    static func forEachPiece(_ text: ArraySlice<Unicode.Scalar>, _ body: (ArraySlice<Unicode.Scalar>) -> Bool) -> Bool {
        let end = text.endIndex
        var i = text.startIndex
        while i < end {
            let c = text[i]
            let kind = CLIPCharacterClass.of(c)
            if kind == .space { i += 1; continue }
            if c == "<", let n = specialLiteralLength(text, at: i) {
                // GPT-2's pattern re-splits the literal: "<|", the letters, "|>".
                guard body(text[i..<(i + 2)]), body(text[(i + 2)..<(i + n - 2)]), body(text[(i + n - 2)..<(i + n)]) else { return false }
                i += n
                continue
            }
            if c == "'", let n = contractionLength(text, at: i) {
                guard body(text[i..<(i + n)]) else { return false }
                i += n
                continue
            }
            var j = i + 1
            if kind != .number {
                while j < end && CLIPCharacterClass.of(text[j]) == kind { j += 1 }
            }
            guard body(text[i..<j]) else { return false }
            i = j
        }
        return true
    }

    private static func specialLiteralLength(_ text: ArraySlice<Unicode.Scalar>, at i: Int) -> Int? {
        for literal in specialLiterals where text.endIndex - i >= literal.count {
            if text[i..<(i + literal.count)].elementsEqual(literal) { return literal.count }
        }
        return nil
    }

    /// 's 't 're 've 'm 'll 'd (none is a prefix of another, so their order does not matter).
    private static func contractionLength(_ text: ArraySlice<Unicode.Scalar>, at i: Int) -> Int? {
        guard i + 1 < text.endIndex else { return nil }
        switch text[i + 1] {
        case "s", "t", "m", "d": return 2
        case "r", "v":
            return i + 2 < text.endIndex && text[i + 2] == "e" ? 3 : nil
        case "l":
            return i + 2 < text.endIndex && text[i + 2] == "l" ? 3 : nil
        default: return nil
        }
    }
}
