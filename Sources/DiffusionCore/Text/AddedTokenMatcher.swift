/// Finds added tokens in text the way tokenizers' AddedVocabulary does: leftmost match first, and
/// of the matches starting there the longest (Aho-Corasick `LeftmostLongest`), never overlapping.
/// A trie over scalars; a config's tokens are few and at most `maxAddedTokenScalars` long, so
/// walking it from every position stays linear in the text.
struct AddedTokenMatcher: Sendable {
    enum Split {
        case text(Range<Int>)
        case token(Int)
    }

    private struct Node: Sendable {
        var children: [Unicode.Scalar: Int32] = [:]
        var tokenID: Int32 = -1
    }

    private var nodes = [Node()]

    var isEmpty: Bool { nodes.count == 1 }

    /// `patterns`: (scalars, id). Of two equal patterns the first is kept.
    init(_ patterns: [([Unicode.Scalar], Int)]) {
        for (scalars, id) in patterns where !scalars.isEmpty {
            var node = 0
            for u in scalars {
                if let child = nodes[node].children[u] {
                    node = Int(child)
                } else {
                    nodes.append(Node())
                    let child = nodes.count - 1
                    nodes[node].children[u] = Int32(child)  // nodes <= tokens x scalars per token: small
                    node = child
                }
            }
            if nodes[node].tokenID < 0 { nodes[node].tokenID = Int32(id) }  // ids come from a bounded vocab.json
        }
    }

    /// Calls `body` with the text between matches and with each match, in order, until it returns
    /// false. Returns false if stopped early. Empty text gives no call.
    @discardableResult
    func forEachSplit(_ text: ArraySlice<Unicode.Scalar>, _ body: (Split) -> Bool) -> Bool {
        guard !isEmpty else { return text.isEmpty || body(.text(text.indices)) }
        var plainStart = text.startIndex
        var i = text.startIndex
        while i < text.endIndex {
            guard let (end, id) = longestMatch(text, at: i) else { i += 1; continue }
            if plainStart < i, !body(.text(plainStart..<i)) { return false }
            if !body(.token(id)) { return false }
            i = end
            plainStart = end
        }
        return plainStart == text.endIndex || body(.text(plainStart..<text.endIndex))
    }

    private func longestMatch(_ text: ArraySlice<Unicode.Scalar>, at start: Int) -> (Int, Int)? {
        var node = 0
        var best: (Int, Int)?
        var j = start
        while j < text.endIndex, let child = nodes[node].children[text[j]] {
            node = Int(child)
            j += 1
            if nodes[node].tokenID >= 0 { best = (j, Int(nodes[node].tokenID)) }
        }
        return best
    }
}
