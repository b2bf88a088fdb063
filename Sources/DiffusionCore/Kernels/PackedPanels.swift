#if canImport(Glibc)
import Glibc
#endif

/// A weight matrix packed once, at load, into the panel layout `gemm` consumes, in its stored
/// dtype (F16 / BF16 stay 2 bytes and are widened exactly slab by slab as tiles read them; F32
/// panels are read in place, with no copy at all). Seen as a k × width operand (`PanelSource`)
/// whose columns go into panels of `panel` (6 for an A operand, 16 for B).
///
/// Layout: k in the blocks `gemmDepth(k)` cuts it into; within the block of depth kc starting at
/// k0, panel q holds kc × panel elements (k-major) at element k0 · paddedWidth + q · panel · kc,
/// zero past `width`. So a tile's slab (consecutive panels of one block) is one contiguous run.
final class PackedPanels: PanelSource, @unchecked Sendable {
    let k: Int, width: Int, panel: Int, kc: Int
    let dtype: DType
    private let storage: UnsafeMutableRawPointer
    private var paddedWidth: Int { (width + panel - 1) / panel * panel }

    /// Packs element (kk, l) = source element at kk · strideK + l · strideL of `dtype`.
    init(_ source: UnsafeRawPointer, dtype: DType, k: Int, width: Int, strideK: Int, strideL: Int, panel: Int) {
        self.k = k; self.width = width; self.panel = panel; self.dtype = dtype
        kc = gemmDepth(k)
        let padded = (width + panel - 1) / panel * panel
        let bytes = max(1, k * padded * dtype.byteSize)
        var raw: UnsafeMutableRawPointer?
        if posix_memalign(&raw, 64, (bytes + 63) & ~63) != 0 || raw == nil {
            fatalError("libdiffusion: out of memory packing a \(k) × \(width) weight")
        }
        storage = raw!
        switch dtype.byteSize {
        case 4: Self.pack(source.assumingMemoryBound(to: UInt32.self), into: storage.bindMemory(to: UInt32.self, capacity: k * padded),
                          k: k, width: width, strideK: strideK, strideL: strideL, panel: panel, kc: kc)
        default: Self.pack(source.assumingMemoryBound(to: UInt16.self), into: storage.bindMemory(to: UInt16.self, capacity: k * padded),
                           k: k, width: width, strideK: strideK, strideL: strideL, panel: panel, kc: kc)
        }
    }

    deinit { free(storage) }

    /// Raw element copy (bit patterns: the source need not be aligned for its dtype, so it is
    /// read with unaligned loads), zero for the padding lanes.
    private static func pack<E: FixedWidthInteger>(_ src: UnsafePointer<E>, into dst: UnsafeMutablePointer<E>,
                                                   k: Int, width: Int, strideK: Int, strideL: Int, panel: Int, kc: Int) {
        let raw = UnsafeRawPointer(src), size = MemoryLayout<E>.size
        let padded = (width + panel - 1) / panel * panel
        var k0 = 0
        while k0 < k {
            let depth = min(kc, k - k0)
            for q in 0..<(padded / panel) {
                let d = dst + k0 * padded + q * panel * depth
                for lane in 0..<panel {
                    let l = q * panel + lane
                    if l >= width {
                        for kk in 0..<depth { d[kk * panel + lane] = 0 }
                        continue
                    }
                    for kk in 0..<depth {
                        d[kk * panel + lane] = raw.loadUnaligned(fromByteOffset: ((k0 + kk) * strideK + l * strideL) * size, as: E.self)
                    }
                }
            }
            k0 += depth
        }
    }

    @inline(__always)
    private func offset(k0: Int, l0: Int, kc depth: Int) -> Int {
        precondition(l0 % panel == 0 && k0 % kc == 0 && depth == min(kc, k - k0), "packed weight read out of its blocking")
        return k0 * paddedWidth + l0 * depth
    }

    func direct(k0: Int, kc depth: Int, l0: Int, panel: Int) -> UnsafePointer<Float>? {
        guard dtype == .f32, panel == self.panel else { return nil }
        return UnsafePointer(storage.assumingMemoryBound(to: Float.self) + offset(k0: k0, l0: l0, kc: depth))
    }

    func pack(k0: Int, kc depth: Int, l0: Int, width w: Int, panel: Int, into dst: UnsafeMutablePointer<Float>) {
        precondition(panel == self.panel, "packed weight read with another panel width")
        let count = (w + panel - 1) / panel * panel * depth
        dtype.convert(storage + offset(k0: k0, l0: l0, kc: depth) * dtype.byteSize, count: count, to: dst)
    }
}
