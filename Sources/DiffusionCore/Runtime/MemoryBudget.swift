#if canImport(Glibc)
import Glibc
#endif

/// The memory a model may plan for: the caller's `memory_limit`, or else what the process can
/// have: the machine's physical memory, lowered by an address-space or data rlimit and by the
/// cgroup's memory.max (a container's limit), so that work too large for them is refused up front
/// instead of failing an allocation midway.
/// Work whose estimate (the model's mapped weights plus the work's activations) exceeds it is
/// refused with OUT_OF_MEMORY and the numbers, before anything is allocated.
public struct MemoryBudget: Sendable {
    /// Bytes available, and whether the caller set them.
    public let limit: Double
    public let isCallers: Bool
    /// Bytes planned already: the weights' mappings.
    public var reserved: Double = 0

    /// `limit` 0 means the machine's physical memory.
    public init(limit: UInt64 = 0) {
        if limit > 0 {
            self.limit = Double(limit)
            isCallers = true
        } else {
            self.limit = MemoryBudget.available
            isCallers = false
        }
    }

    /// Physical memory, RLIMIT_AS, RLIMIT_DATA and cgroup v2 memory.max, the smallest.
    static var available: Double {
        var bytes = Double(sysconf(Int32(_SC_PHYS_PAGES))) * Double(sysconf(Int32(_SC_PAGESIZE)))
        for resource in [RLIMIT_AS, RLIMIT_DATA] {
            var r = rlimit()
            if getrlimit(__rlimit_resource_t(resource.rawValue), &r) == 0, r.rlim_cur != rlim_t.max {
                bytes = min(bytes, Double(r.rlim_cur))
            }
        }
        if let value = cgroupMemoryMax() { bytes = min(bytes, value) }
        return bytes
    }

    /// The cgroup v2 limit of this process's group ("max" or absent: none). A kernel file with no
    /// size, so read directly, a few bytes.
    static func cgroupMemoryMax() -> Double? {
        let fd = open("/sys/fs/cgroup/memory.max", O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
        guard n > 0 else { return nil }
        let digits = buffer[0..<n].prefix { $0 >= 0x30 && $0 <= 0x39 }
        guard !digits.isEmpty, digits.count == buffer[0..<n].filter({ $0 > 0x20 }).count else { return nil }
        return Double(String(decoding: digits, as: UTF8.self))
    }

    static func gigabytes(_ bytes: Double) -> String {
        // Estimates of absurd requests can pass Int's range: no trap, a plain number then.
        guard bytes.isFinite, bytes < 1e24 else { return "\(bytes / 1e9) GB" }
        let centi = Int((bytes / 1e7).rounded())
        let frac = centi % 100
        return "\(centi / 100).\(frac < 10 ? "0" : "")\(frac) GB"
    }

    /// Refuses `what` when the weights plus `bytes` of working memory exceed the limit.
    public func check(_ bytes: Double, _ what: String, hint: String = "") throws {
        guard reserved + bytes > limit else { return }
        let over = isCallers ? "the memory_limit of \(Self.gigabytes(limit))" : "the \(Self.gigabytes(limit)) of memory this process can have (physical memory, rlimits, cgroup)"
        throw DiffusionError(.outOfMemory, "\(what) needs about \(Self.gigabytes(reserved + bytes)) (weights \(Self.gigabytes(reserved)) + working memory \(Self.gigabytes(bytes))), more than \(over)\(hint)")
    }
}
