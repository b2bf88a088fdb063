#if canImport(Glibc)
import Glibc
#endif

/// The memory a model may plan for: the caller's `memory_limit`, or the machine's physical memory.
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
            self.limit = Double(sysconf(Int32(_SC_PHYS_PAGES))) * Double(sysconf(Int32(_SC_PAGESIZE)))
            isCallers = false
        }
    }

    static func gigabytes(_ bytes: Double) -> String {
        let centi = Int((bytes / 1e7).rounded())
        let frac = centi % 100
        return "\(centi / 100).\(frac < 10 ? "0" : "")\(frac) GB"
    }

    /// Refuses `what` when the weights plus `bytes` of working memory exceed the limit.
    public func check(_ bytes: Double, _ what: String, hint: String = "") throws {
        guard reserved + bytes > limit else { return }
        let over = isCallers ? "the memory_limit of \(Self.gigabytes(limit))" : "this machine's \(Self.gigabytes(limit)) of memory"
        throw DiffusionError(.outOfMemory, "\(what) needs about \(Self.gigabytes(reserved + bytes)) (weights \(Self.gigabytes(reserved)) + working memory \(Self.gigabytes(bytes))), more than \(over)\(hint)")
    }
}
