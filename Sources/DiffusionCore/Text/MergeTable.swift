/// The merges as an open-addressing table with a multiplicative hash: a word of n bytes makes about
/// 3n lookups, each cheaper than a Dictionary's SipHash.
struct MergeTable: Sendable {
    /// `empty` marks a free slot; real keys hold two ids below 2^31, so they never equal it.
    private static let empty = UInt64.max
    private let keys: [UInt64]
    private let values: [BytePairEncoder.Merge]
    private let shift: UInt64

    init(_ merges: [UInt64: BytePairEncoder.Merge]) {
        var bits: UInt64 = 4
        while (1 << bits) < 2 * merges.count { bits += 1 }  // load factor <= 1/2
        let size = 1 << Int(bits)
        var keys = [UInt64](repeating: Self.empty, count: size)
        var values = [BytePairEncoder.Merge](repeating: .init(rank: 0, id: 0), count: size)
        shift = 64 - bits
        for (key, value) in merges {
            var slot = Self.slot(key, shift)
            while keys[slot] != Self.empty { slot = (slot + 1) & (size - 1) }
            keys[slot] = key
            values[slot] = value
        }
        self.keys = keys
        self.values = values
    }

    @inline(__always)
    private static func slot(_ key: UInt64, _ shift: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift)  // Fibonacci hashing
    }

    @inline(__always)
    func get(_ key: UInt64) -> BytePairEncoder.Merge? {
        let mask = keys.count - 1
        var slot = Self.slot(key, shift)
        while true {
            let k = keys[slot]
            if k == key { return values[slot] }
            if k == Self.empty { return nil }
            slot = (slot + 1) & mask
        }
    }
}
