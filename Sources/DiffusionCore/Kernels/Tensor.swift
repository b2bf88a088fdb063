#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Owned, 64-byte aligned float storage. Freed blocks go back to `BufferPool`, so the same
/// sizes in the next network evaluation reuse memory instead of faulting in fresh pages.
public final class FloatBuffer {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int
    private let bytes: Int
    private let pooled: Bool
    /// Set when taken inside a sampler's network evaluation: the `Arena` placed it or saw it.
    private let ticket: Arena.Ticket?

    /// `pooled: false` for long-lived storage (weights), which goes straight back to the system.
    public init(count: Int, pooled: Bool = true) throws {
        self.count = count
        self.pooled = pooled
        let bytes = (max(count, 1) * MemoryLayout<Float>.stride + 63) & ~63
        self.bytes = bytes
        let raw: UnsafeMutableRawPointer
        if pooled, let arena = Arena.current {
            (raw, ticket) = try arena.take(bytes: bytes)
        } else {
            raw = try BufferPool.shared.take(bytes: bytes, reuse: pooled)
            ticket = nil
        }
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
    }

    /// Long-lived storage holding `values`.
    public convenience init(_ values: [Float]) throws {
        try self.init(count: values.count, pooled: false)
        values.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { pointer.update(from: base, count: values.count) }
        }
    }

    deinit {
        if let ticket {
            ticket.arena.give(ticket, UnsafeMutableRawPointer(pointer), bytes: bytes)
        } else if pooled {
            BufferPool.shared.give(UnsafeMutableRawPointer(pointer), bytes: bytes)
        } else {
            free(pointer)
        }
    }
}

/// Free blocks by exact size, shared by the process (a network evaluation allocates the same
/// sizes every time). Holds at most `limit` bytes; beyond that, blocks go back to the system.
public final class BufferPool: @unchecked Sendable {
    static let shared = BufferPool()
    private let lock = Locked<(free: [Int: [UnsafeMutableRawPointer]], held: Int)>(([:], 0))
    /// Bytes held at most, and the largest block kept: big blocks come from mmap anyway, and
    /// holding them would add a whole network's temporaries to the process's peak memory.
    public static let limit = 256 << 20
    public static let largestBlock = 32 << 20

    /// A block of `bytes`, 64-byte aligned. When the system refuses, the pool's free blocks are
    /// released and it is asked once more; then OUT_OF_MEMORY is thrown (never an abort).
    func take(bytes: Int, reuse: Bool) throws -> UnsafeMutableRawPointer {
        if reuse, let p = lock.withLock({ state -> UnsafeMutableRawPointer? in
            guard let p = state.free[bytes]?.popLast() else { return nil }
            state.held -= bytes
            return p
        }) { return p }
        if let p = try? checkedAllocation(bytes: bytes, alignment: 64) { return p }
        releaseHeld()
        return try checkedAllocation(bytes: bytes, alignment: 64)
    }

    /// Frees every block the pool holds.
    func releaseHeld() {
        let blocks = lock.withLock { state -> [UnsafeMutableRawPointer] in
            let all = state.free.values.flatMap { $0 }
            state.free = [:]
            state.held = 0
            return all
        }
        for p in blocks { free(p) }
    }

    func give(_ p: UnsafeMutableRawPointer, bytes: Int) {
        let kept = lock.withLock { state -> Bool in
            guard bytes <= BufferPool.largestBlock, state.held + bytes <= BufferPool.limit else { return false }
            state.free[bytes, default: []].append(p)
            state.held += bytes
            return true
        }
        if !kept { free(p) }
    }
}

/// `bytes` (at least 1) aligned to `alignment` from the system, or OUT_OF_MEMORY naming the size:
/// the one path every large allocation takes, so a refusal is an error and never an abort.
func checkedAllocation(bytes: Int, alignment: Int) throws -> UnsafeMutableRawPointer {
    var raw: UnsafeMutableRawPointer?
    guard bytes >= 0, posix_memalign(&raw, alignment, max(bytes, 1)) == 0, let raw else {
        throw DiffusionError(.outOfMemory, "the system refused an allocation of \(MemoryBudget.gigabytes(Double(max(bytes, 0)))) (\(bytes) bytes)")
    }
    return raw
}

/// Asks the system for `bytes` and gives them back: for state kept in Swift arrays (a sampler's
/// latent-sized scheduler state), whose allocation cannot fail softly, so that a refusal is an
/// OUT_OF_MEMORY at creation rather than an abort later.
func probeAllocation(bytes: Int, _ what: String) throws {
    do { free(try checkedAllocation(bytes: bytes, alignment: 64)) } catch let e as DiffusionError {
        throw DiffusionError(.outOfMemory, "\(what): \(e.message)")
    }
}

/// A float32 NCHW tensor. Value semantics are not provided: kernels write into fresh tensors.
public struct Tensor {
    public let buffer: FloatBuffer
    public let n: Int, c: Int, h: Int, w: Int

    public init(n: Int, c: Int, h: Int, w: Int) throws {
        self.n = n; self.c = c; self.h = h; self.w = w
        buffer = try FloatBuffer(count: n * c * h * w)
    }

    public var count: Int { n * c * h * w }
    public var hw: Int { h * w }
    public var data: UnsafeMutablePointer<Float> { buffer.pointer }

    public func copyToArray() -> [Float] {
        Array(UnsafeBufferPointer(start: data, count: count))
    }
}

/// Token activations [n, length, width], row-major (attention and text layers).
public struct Tokens {
    public let buffer: FloatBuffer
    public let n: Int, length: Int, width: Int

    public init(n: Int, length: Int, width: Int) throws {
        self.n = n; self.length = length; self.width = width
        buffer = try FloatBuffer(count: n * length * width)
    }

    public var count: Int { n * length * width }
    public var rows: Int { n * length }
    public var data: UnsafeMutablePointer<Float> { buffer.pointer }

    public func copyToArray() -> [Float] {
        Array(UnsafeBufferPointer(start: data, count: count))
    }

    /// [a; b] along the batch (a and b of the same length and width).
    public static func concatenated(_ parts: [Tokens]) throws -> Tokens {
        let y = try Tokens(n: parts.reduce(0) { $0 + $1.n }, length: parts[0].length, width: parts[0].width)
        var offset = 0
        for p in parts {
            (y.data + offset).update(from: p.data, count: p.count)
            offset += p.count
        }
        return y
    }

    /// Sample `i` repeated `times` times, for every i (torch's repeat_interleave over the batch).
    public func repeatingEach(_ times: Int) throws -> Tokens {
        let y = try Tokens(n: n * times, length: length, width: width)
        let per = length * width
        for i in 0..<n { for r in 0..<times { (y.data + (i * times + r) * per).update(from: data + i * per, count: per) } }
        return y
    }
}

extension Tensor {
    /// The tensors stacked along the batch (same c, h, w).
    public static func concatenatedBatch(_ parts: [Tensor]) throws -> Tensor {
        let y = try Tensor(n: parts.reduce(0) { $0 + $1.n }, c: parts[0].c, h: parts[0].h, w: parts[0].w)
        var offset = 0
        for p in parts {
            (y.data + offset).update(from: p.data, count: p.count)
            offset += p.count
        }
        return y
    }
}

extension Optional where Wrapped == [Float] {
    /// The array's storage (nil when there is no array) for the duration of `body`: a layer's
    /// optional bias handed to a kernel.
    func withPointer<R>(_ body: (UnsafePointer<Float>?) throws -> R) rethrows -> R {
        guard let array = self else { return try body(nil) }
        return try array.withUnsafeBufferPointer { try body($0.baseAddress) }
    }
}
