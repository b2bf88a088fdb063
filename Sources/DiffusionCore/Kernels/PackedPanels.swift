#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A weight matrix in the panel layout `gemm` consumes, in its stored dtype (F16 / BF16 stay 2
/// bytes and are widened exactly slab by slab as tiles read them; F32 panels are read in place).
/// Seen as a k × width operand whose columns go into panels of `panel` (6 for an A operand, 16
/// for B).
///
/// Packed on first use (in parallel, by the first caller's threads) from the file's mapping, whose
/// pages of it are then handed back, so the weight counts once in memory. `drop()` frees the
/// packed copy — a pipeline calls it (through `SafeTensorsFile.releaseResidentPages`) when a
/// component is done, e.g. the UNet before the VAE decodes — and the next use packs it again.
/// Users hold the storage through `withPanels`; a drop while someone computes waits for them.
///
/// Layout: k in the blocks `gemmDepth(k)` cuts it into; within the block of depth kc starting at
/// k0, panel q holds kc × panel elements (k-major) at element k0 · paddedWidth + q · panel · kc,
/// zero past `width`. So a tile's slab (consecutive panels of one block) is one contiguous run.
final class PackedPanels: @unchecked Sendable {
    let k: Int, width: Int, panel: Int, kc: Int
    let dtype: DType
    private let source: StoredTensor
    private let strideK: Int, strideL: Int
    private struct State { var storage: UnsafeMutableRawPointer?; var users = 0; var dropWanted = false }
    private let state = Mutex(State())

    /// Element (kk, l) is the source tensor's element kk · strideK + l · strideL.
    init(_ source: StoredTensor, k: Int, width: Int, strideK: Int, strideL: Int, panel: Int) {
        self.source = source
        self.k = k; self.width = width; self.panel = panel; self.dtype = source.dtype
        self.strideK = strideK; self.strideL = strideL
        kc = gemmDepth(k)
        source.file.register(self)
    }

    deinit { free(state.withLock { $0.storage }) }

    private var paddedWidth: Int { (width + panel - 1) / panel * panel }

    /// Runs `body` with the packed panels (packing them first if needed, over `threads`).
    func withPanels<R>(threads: Int, _ body: (PackedView) -> R) -> R {
        let storage = state.withLock { s -> UnsafeMutableRawPointer in
            s.users += 1
            if let p = s.storage { return p }
            let p = pack(threads: threads)
            s.storage = p
            return p
        }
        defer {
            state.withLock { s in
                s.users -= 1
                if s.users == 0 && s.dropWanted { free(s.storage); s.storage = nil; s.dropWanted = false }
            }
        }
        return body(PackedView(storage: storage, dtype: dtype, k: k, panel: panel, kc: kc, paddedWidth: paddedWidth))
    }

    /// Frees the packed copy now, or when its last current user is done.
    func drop() {
        state.withLock { s in
            if s.users == 0 { free(s.storage); s.storage = nil } else { s.dropWanted = true }
        }
    }

    private func pack(threads: Int) -> UnsafeMutableRawPointer {
        let padded = paddedWidth, size = dtype.byteSize
        var raw: UnsafeMutableRawPointer?
        if posix_memalign(&raw, 64, (max(1, k * padded * size) + 63) & ~63) != 0 || raw == nil {
            fatalError("libdiffusion: out of memory packing a \(k) × \(width) weight")
        }
        let dst = raw!
        let bytes = source.file.rawBytes(source.info)
        let src = bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 64)!
        let panels = padded / panel, blocks = (k + kc - 1) / kc
        parallelFor(blocks * panels, threads: threads) { job in
            let k0 = (job / panels) * kc, q = job % panels
            switch size {
            case 4: packPanel(src, into: dst, as: UInt32.self, k0: k0, q: q, padded: padded)
            default: packPanel(src, into: dst, as: UInt16.self, k0: k0, q: q, padded: padded)
            }
        }
        source.file.releasePages(bytes)
        return dst
    }

    /// One panel of one k block: raw element copies (the source need not be aligned for its dtype),
    /// zero for the padding lanes.
    private func packPanel<E: FixedWidthInteger>(_ src: UnsafeRawPointer, into storage: UnsafeMutableRawPointer, as: E.Type,
                                                 k0: Int, q: Int, padded: Int) {
        let depth = min(kc, k - k0), size = MemoryLayout<E>.size
        let d = storage.assumingMemoryBound(to: E.self) + k0 * padded + q * panel * depth
        let lanes = min(panel, width - q * panel)
        // Written in order (k-major), read from `lanes` source streams at once.
        for kk in 0..<depth {
            let row = d + kk * panel, at = (k0 + kk) * strideK
            for lane in 0..<lanes {
                row[lane] = src.loadUnaligned(fromByteOffset: (at + (q * panel + lane) * strideL) * size, as: E.self)
            }
            for lane in lanes..<panel { row[lane] = 0 }
        }
    }
}

/// Packed panels as a gemm operand, valid inside `PackedPanels.withPanels`.
struct PackedView: PanelSource {
    let storage: UnsafeMutableRawPointer
    let dtype: DType
    let k: Int, panel: Int, kc: Int, paddedWidth: Int

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
