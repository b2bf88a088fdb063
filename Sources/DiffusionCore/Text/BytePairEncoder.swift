/// The reference's model: byte-level BPE with "</w>" appended to a word's last symbol
/// (`BPE(end_of_word_suffix: "</w>", continuing_subword_prefix: "", fuse_unk: false)`).
///
/// A word's UTF-8 bytes start as one symbol each (GPT-2's byte-to-character table names them in
/// vocab.json), then the adjacent pair with the lowest merge rank is merged, leftmost first, until
/// no pair has a merge — tokenizers' `Word::merge_all`, with a heap so a long word costs
/// O(n log n), not O(n^2). Immutable after loading, so one encoder serves any number of threads.
struct BytePairEncoder: Sendable {
    /// (rank, resulting id) of a merge; rank is the line's index among merges.txt's merge lines.
    struct Merge: Sendable {
        var rank: Int32
        var id: Int32
    }

    /// Id of each byte as a word's inner symbol, and as its last symbol (with "</w>").
    let byteIDs: [Int32]
    let finalByteIDs: [Int32]
    let merges: MergeTable

    init(byteIDs: [Int32], finalByteIDs: [Int32], merges: [UInt64: Merge]) {
        self.byteIDs = byteIDs
        self.finalByteIDs = finalByteIDs
        self.merges = MergeTable(merges)
    }

    @inline(__always)
    static func pairKey(_ left: Int32, _ right: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
    }

    /// GPT-2's reversible byte -> printable character table, as CLIP's vocab.json spells bytes.
    static let byteCharacters: [Unicode.Scalar] = {
        var printable: [UInt32] = Array(0x21...0x7E) + Array(0xA1...0xAC) + Array(0xAE...0xFF)
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        for b in printable { table[Int(b)] = Unicode.Scalar(UInt8(b)) }
        var next: UInt32 = 256
        for b in 0..<256 where !printable.contains(UInt32(b)) {
            table[b] = Unicode.Scalar(next) ?? " "  // 256...323 are all valid scalars
            printable.append(UInt32(b))
            next += 1
        }
        return table
    }()

    /// Working memory of `encode`, reused from word to word (one per call of the tokenizer, never shared).
    struct Scratch {
        var ids: [Int32] = []
        var prev: [Int32] = []
        var next: [Int32] = []
        var heap = MinHeap()
    }

    /// Appends the ids of one word (a piece's UTF-8 bytes) to `out`.
    func encode(_ word: [UInt8], into out: inout [Int], scratch: inout Scratch) {
        let n = word.count
        guard n > 1 else {
            if n == 1 { out.append(Int(finalByteIDs[Int(word[0])])) }
            return
        }
        // Doubly linked symbols; a symbol merged into its left neighbour gets id -1.
        scratch.ids.removeAll(keepingCapacity: true)
        scratch.prev.removeAll(keepingCapacity: true)
        scratch.next.removeAll(keepingCapacity: true)
        for i in 0..<n {
            scratch.ids.append(i == n - 1 ? finalByteIDs[Int(word[i])] : byteIDs[Int(word[i])])
            scratch.prev.append(Int32(i - 1))  // n < 2^31: see CLIPTokenizer.maxPromptScalars
            scratch.next.append(i + 1 < n ? Int32(i + 1) : -1)
        }
        // Min-heap of rank << 32 | position: lowest rank first, then leftmost (tokenizers' Merge ordering).
        scratch.heap.removeAll()
        for i in 0..<(n - 1) {
            if let m = merges.get(Self.pairKey(scratch.ids[i], scratch.ids[i + 1])) {
                scratch.heap.push(UInt64(m.rank) << 32 | UInt64(i))
            }
        }
        while let top = scratch.heap.pop() {
            let pos = Int(top & 0xFFFF_FFFF)
            let rank = Int32(truncatingIfNeeded: top >> 32)
            guard scratch.ids[pos] >= 0, scratch.next[pos] >= 0 else { continue }
            let right = Int(scratch.next[pos])
            // A stale entry: the pair at `pos` changed since it was pushed.
            guard let m = merges.get(Self.pairKey(scratch.ids[pos], scratch.ids[right])), m.rank == rank else { continue }
            scratch.ids[pos] = m.id
            scratch.ids[right] = -1
            let after = scratch.next[right]
            scratch.next[pos] = after
            if after >= 0 { scratch.prev[Int(after)] = Int32(pos) }
            let before = scratch.prev[pos]
            if before >= 0, let l = merges.get(Self.pairKey(scratch.ids[Int(before)], m.id)) {
                scratch.heap.push(UInt64(l.rank) << 32 | UInt64(before))
            }
            if after >= 0, let r = merges.get(Self.pairKey(m.id, scratch.ids[Int(after)])) {
                scratch.heap.push(UInt64(r.rank) << 32 | UInt64(pos))
            }
        }
        var i = 0
        while i >= 0 {
            out.append(Int(scratch.ids[i]))
            i = Int(scratch.next[i])
        }
    }
}
