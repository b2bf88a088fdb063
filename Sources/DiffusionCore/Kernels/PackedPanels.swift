#if canImport(Glibc)
import Glibc
#endif
import CDiffusion
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
///
/// `winograd`: a 3 × 3 convolution's weight [width = cout, k = cin, 3, 3] as the 16 float32
/// matrices U_ξ = (G g Gᵀ)_ξ of Winograd F(2 × 2, 3 × 3) (`WinogradConv`), each k × width in the
/// layout above, one after the other. They are float32 (16/9 of the float32 weight), so they are
/// kept only for float32 weights (where they replace a float32 packed copy); for F16 / BF16
/// weights (SD checkpoints) they are made per call in pooled scratch, which keeps the model at 2
/// bytes per weight (a kept copy added 0.4 GB to the SD1.5 UNet: 2.23 -> 2.63 GB peak). As bf16
/// pairs (below) U is half that and is kept: 4-5% of the bf16 UNet's time, with the same 2.34 GB
/// peak for a 512² generation (the per-call scratch it replaces was in the plan too).
///
/// `pairs` (the file's precision is bf16): the panels hold bfloat16 pairs instead, the operand
/// layout of `cdiffusion_bf16_tile` — within a block, k rows 2p and 2p + 1 of a lane share one
/// uint32 (low and high half; the high half is 0 past an odd depth), so a block of depth kc
/// takes ⌈kc / 2⌉ uint32 rows, and the block starting at k0 (even) begins at uint32
/// k0 / 2 · paddedWidth. Winograd's U matrices are rounded to bf16 after the f32 transform.
final class PackedPanels: @unchecked Sendable {
    let k: Int, width: Int, panel: Int, kc: Int
    let dtype: DType
    let winograd: Bool
    let pairs: Bool
    private let source: StoredTensor
    private let strideK: Int, strideL: Int
    private struct State { var storage: UnsafeMutableRawPointer?; var users = 0; var dropWanted = false }
    private let state = Locked(State())

    /// Element (kk, l) is the source tensor's element kk · strideK + l · strideL.
    init(_ source: StoredTensor, k: Int, width: Int, strideK: Int, strideL: Int, panel: Int, winograd: Bool = false) {
        self.source = source
        self.k = k; self.width = width; self.panel = panel
        self.winograd = winograd
        dtype = winograd ? .f32 : source.dtype
        pairs = source.file.precision == .bf16
        self.strideK = strideK; self.strideL = strideL
        kc = gemmDepth(k)
        source.file.register(self)
    }

    deinit { free(state.withLock { $0.storage }) }

    private var paddedWidth: Int { (width + panel - 1) / panel * panel }

    /// Bytes of one packed matrix (16 of them for `winograd`).
    private var matrixBytes: Int { pairs ? (k + 1) / 2 * paddedWidth * 4 : k * paddedWidth * dtype.byteSize }

    private func view(_ storage: UnsafeMutableRawPointer) -> PackedView {
        PackedView(storage: storage, dtype: dtype, pairs: pairs, k: k, panel: panel, kc: kc, paddedWidth: paddedWidth)
    }

    /// Whether Winograd's U is made per call rather than kept: float32 U from F16 / BF16 weights.
    /// bf16 pairs are kept (2 bytes × 16/9 per weight, freed with the mapped weight's pages).
    private var madePerCall: Bool { winograd && source.dtype != .f32 && !pairs }

    /// Bytes the packed copy holds beyond the stored tensor it replaces in memory (the file's pages
    /// are handed back once packed): Winograd's U kept as float32 is 16/9 of a float32 weight.
    var extraBytes: Int {
        madePerCall ? 0 : max(0, (winograd ? 16 : 1) * matrixBytes - source.info.byteRange.count)
    }

    /// Runs `body` with the packed panels (packing them first if needed, over `threads`).
    func withPanels<R>(threads: Int, _ body: (PackedView) throws -> R) throws -> R {
        if madePerCall {
            let scratch = try FloatBuffer(count: (16 * matrixBytes + 3) / 4)
            let storage = UnsafeMutableRawPointer(scratch.pointer)
            try pack(threads: threads, into: storage)
            return try withExtendedLifetime(scratch) { try body(view(storage)) }
        }
        let storage = try state.withLock { s -> UnsafeMutableRawPointer in
            if let p = s.storage { s.users += 1; return p }
            let p = try pack(threads: threads)
            s.storage = p
            s.users += 1
            return p
        }
        defer {
            state.withLock { s in
                s.users -= 1
                if s.users == 0 && s.dropWanted { free(s.storage); s.storage = nil; s.dropWanted = false }
            }
        }
        return try body(view(storage))
    }

    /// Frees the packed copy now, or when its last current user is done.
    func drop() {
        state.withLock { s in
            if s.users == 0 { free(s.storage); s.storage = nil } else { s.dropWanted = true }
        }
    }

    private func pack(threads: Int) throws -> UnsafeMutableRawPointer {
        let matrices = winograd ? 16 : 1
        let raw = try checkedAllocation(bytes: (max(1, matrices * matrixBytes) + 63) & ~63, alignment: 64)
        do { try pack(threads: threads, into: raw) } catch { free(raw); throw error }
        return raw
    }

    private func pack(threads: Int, into dst: UnsafeMutableRawPointer) throws {
        let padded = paddedWidth, size = dtype.byteSize
        let bytes = source.file.rawBytes(source.info)
        let src = bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 64)!
        let panels = padded / panel, blocks = (k + kc - 1) / kc
        if winograd {
            // Each thread's widened kernels (a panel's output channels), set aside here (see gemm's slabs).
            let per = panel * k * 9
            let widened = try FloatBuffer(count: parallelSlots(panels, threads: threads) * per)
            parallelFor(panels, threads: threads) { q, slot in
                packWinogradPanel(src, into: dst, q: q, padded: padded, g: widened.pointer + slot * per)
            }
            withExtendedLifetime(widened) {}
            // Made per call from F16 / BF16: the mapped weight stays resident (it is read again).
            if !madePerCall { source.file.releasePages(bytes) }
            return
        }
        if pairs {
            let per = kc * panel
            let widened = try FloatBuffer(count: parallelSlots(blocks * panels, threads: threads) * per)
            parallelFor(blocks * panels, threads: threads) { job, slot in
                let k0 = (job / panels) * kc, q = job % panels, depth = min(kc, k - k0)
                let t = widened.pointer + slot * per
                packWidened(src, into: t, k0: k0, q: q)
                let to = dst.assumingMemoryBound(to: UInt32.self) + k0 / 2 * padded + q * panel * ((depth + 1) / 2)
                cdiffusion_bf16_pairs(t, depth, panel, to)
            }
            withExtendedLifetime(widened) {}
            source.file.releasePages(bytes)
            return
        }
        parallelFor(blocks * panels, threads: threads) { job in
            let k0 = (job / panels) * kc, q = job % panels
            switch size {
            case 4: packPanel(src, into: dst, as: UInt32.self, k0: k0, q: q, padded: padded)
            default: packPanel(src, into: dst, as: UInt16.self, k0: k0, q: q, padded: padded)
            }
        }
        source.file.releasePages(bytes)
    }

    /// One panel of one k block as float32 (depth × panel, k-major), zero for the padding lanes.
    private func packWidened(_ src: UnsafeRawPointer, into d: UnsafeMutablePointer<Float>, k0: Int, q: Int) {
        let depth = min(kc, k - k0), size = source.dtype.byteSize, dtype = source.dtype
        let lanes = min(panel, width - q * panel)
        for kk in 0..<depth {
            let row = d + kk * panel, at = (k0 + kk) * strideK
            for lane in 0..<lanes {
                dtype.convert(src + (at + (q * panel + lane) * strideL) * size, count: 1, to: row + lane)
            }
            for lane in lanes..<panel { row[lane] = 0 }
        }
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

extension PackedPanels {
    /// Panel q (output channels q · panel ..< +panel) of all 16 Winograd matrices: each (co, ci)
    /// kernel g (3 × 3, widened exactly) becomes U = G g Gᵀ with G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1],
    /// U_ξ (ξ = 4 · row + column) going to matrix ξ at (ci, co): float32, or with `pairs` rounded
    /// to bf16 and paired along ci straight from the float32 transform (no float32 copy).
    /// `g`: scratch for the panel's widened kernels (panel · k · 9 floats). The lanes are the inner
    /// loop, so each matrix is written `panel` values at a time (not one value per 16 matrices).
    fileprivate func packWinogradPanel(_ src: UnsafeRawPointer, into dst: UnsafeMutableRawPointer, q: Int, padded: Int,
                                       g: UnsafeMutablePointer<Float>) {
        let lanes = min(panel, width - q * panel), size = source.dtype.byteSize, per = k * 9
        let matrix = matrixBytes / 4  // elements (float32) or pairs (uint32) per matrix
        let f = dst.assumingMemoryBound(to: Float.self), w32 = dst.assumingMemoryBound(to: UInt32.self)
        /// The 16 values of U for input channel ci of a lane's kernel (`at` = lane · k + ci).
        @inline(__always) func transform(_ at: Int) -> SIMD16<Float> {
            let w = g + at * 9
            // Rows of G g (4 × 3), then each row times Gᵀ.
            @inline(__always) func column(_ c: Int) -> SIMD4<Float> {
                let a = w[c], b = w[3 + c], d = w[6 + c]
                return SIMD4(a, (a + b + d) * 0.5, (a - b + d) * 0.5, d)
            }
            let c0 = column(0), c1 = column(1), c2 = column(2)  // columns of G g
            let u0 = c0, u1 = (c0 + c1 + c2) * 0.5, u2 = (c0 - c1 + c2) * 0.5, u3 = c2
            return SIMD16(u0[0], u1[0], u2[0], u3[0], u0[1], u1[1], u2[1], u3[1],
                          u0[2], u1[2], u2[2], u3[2], u0[3], u1[3], u2[3], u3[3])
        }
        source.dtype.convert(src + q * panel * per * size, count: lanes * per, to: g)
        var k0 = 0
        while k0 < k {
            let depth = min(kc, k - k0)
            if pairs {
                let base = w32 + k0 / 2 * padded + q * panel * ((depth + 1) / 2)
                for p in 0..<((depth + 1) / 2) {
                    let ci = k0 + 2 * p
                    for lane in 0..<panel {
                        let at = base + p * panel + lane
                        guard lane < lanes else {
                            for xi in 0..<16 { at[xi * matrix] = 0 }
                            continue
                        }
                        let odd = 2 * p + 1 < depth ? transform(lane * k + ci + 1) : SIMD16()
                        let bits = bf16Round(transform(lane * k + ci)) | bf16Round(odd) &<< 16
                        for xi in 0..<16 { at[xi * matrix] = bits[xi] }
                    }
                }
            } else {
                let base = f + k0 * padded + q * panel * depth
                for kk in 0..<depth {
                    for lane in 0..<panel {
                        let u = lane < lanes ? transform(lane * k + k0 + kk) : SIMD16()
                        for xi in 0..<16 { base[kk * panel + lane + xi * matrix] = u[xi] }
                    }
                }
            }
            k0 += depth
        }
    }
}

/// Packed panels as a gemm operand, valid inside `PackedPanels.withPanels`.
struct PackedView: PanelSource {
    let storage: UnsafeMutableRawPointer
    let dtype: DType
    /// bf16 pairs (`PackedPanels.pairs`).
    var pairs = false
    let k: Int, panel: Int, kc: Int, paddedWidth: Int

    init(storage: UnsafeMutableRawPointer, dtype: DType, pairs: Bool = false, k: Int, panel: Int, kc: Int, paddedWidth: Int) {
        self.storage = storage; self.dtype = dtype; self.pairs = pairs
        self.k = k; self.panel = panel; self.kc = kc; self.paddedWidth = paddedWidth
    }

    @inline(__always)
    private func offset(k0: Int, l0: Int, kc depth: Int) -> Int {
        precondition(l0 % panel == 0 && k0 % kc == 0 && depth == min(kc, k - k0), "packed weight read out of its blocking")
        return pairs ? k0 / 2 * paddedWidth + l0 * ((depth + 1) / 2) : k0 * paddedWidth + l0 * depth
    }

    /// Winograd matrix ξ of a `winograd` packing.
    func matrix(_ xi: Int) -> PackedView {
        let bytes = pairs ? (k + 1) / 2 * paddedWidth * 4 : k * paddedWidth * 4
        return PackedView(storage: storage + xi * bytes, dtype: .f32, pairs: pairs, k: k, panel: panel, kc: kc,
                          paddedWidth: paddedWidth)
    }

    var isPairs: Bool { pairs }

    func pairSlab(k0: Int, kc depth: Int, l0: Int, panel: Int) -> UnsafePointer<UInt32>? {
        guard pairs, panel == self.panel else { return nil }
        return UnsafePointer(storage.assumingMemoryBound(to: UInt32.self) + offset(k0: k0, l0: l0, kc: depth))
    }

    func direct(k0: Int, kc depth: Int, l0: Int, panel: Int) -> UnsafePointer<Float>? {
        guard dtype == .f32, !pairs, panel == self.panel else { return nil }
        return UnsafePointer(storage.assumingMemoryBound(to: Float.self) + offset(k0: k0, l0: l0, kc: depth))
    }

    func pack(k0: Int, kc depth: Int, l0: Int, width w: Int, panel: Int, into dst: UnsafeMutablePointer<Float>) {
        precondition(panel == self.panel && !pairs, "packed weight read with another panel width or as float32")
        let count = (w + panel - 1) / panel * panel * depth
        dtype.convert(storage + offset(k0: k0, l0: l0, kc: depth) * dtype.byteSize, count: count, to: dst)
    }
}
