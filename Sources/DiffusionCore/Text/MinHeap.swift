/// A 4-ary min-heap of UInt64 keys: half the depth of a binary heap, and a node's four children
/// sit side by side, which matters once a long word's heap outgrows the cache.
struct MinHeap {
    private var items: [UInt64] = []

    mutating func removeAll() { items.removeAll(keepingCapacity: true) }

    mutating func push(_ x: UInt64) {
        items.append(x)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) >> 2
            let p = items[parent]
            if p <= x { break }
            items[i] = p
            i = parent
        }
        items[i] = x
    }

    mutating func pop() -> UInt64? {
        guard let last = items.popLast() else { return nil }
        guard let top = items.first else { return last }
        let n = items.count
        var i = 0
        while true {
            let first = 4 * i + 1
            if first >= n { break }
            var m = first
            var best = items[first]
            var c = first + 1
            while c < min(first + 4, n) {
                if items[c] < best { best = items[c]; m = c }
                c += 1
            }
            if best >= last { break }
            items[i] = best
            i = m
        }
        items[i] = last
        return top
    }
}
