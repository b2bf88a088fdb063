import CDiffusion

/// C = A · B (+ bias) for the convolutions and linear layers: A is m × k, B is k × n, each an
/// operand that packs itself into panels (`PanelSource`: weights in their stored dtype, im2col of
/// an activation, a linear layer's input rows), so nothing is widened or unfolded in full first.
///
/// C is cut into fixed tiles of rows × columns that depend on the shape only; a tile walks k in
/// blocks of `gemmDepth(k)`, packs its slab of A (rows in panels of 6) and of B (columns in panels of
/// 16) and runs the 6 × 16 micro-kernel over them. Each element of C sums its k products in the
/// same order whatever the tiling and thread count, so results are bitwise reproducible.
///
/// Columns may come in segments (one per image of a convolution): `segmentColumns` columns of
/// the driver's column space per segment (a multiple of 16, so no panel straddles two images),
/// of which `segmentValid` exist in C, segments `segmentStride` floats apart.
struct GEMMOutput {
    var c: UnsafeMutablePointer<Float>
    var ldc: Int
    var segmentColumns: Int
    var segmentValid: Int
    var segmentStride: Int

    /// A plain row-major m × n matrix.
    init(c: UnsafeMutablePointer<Float>, ldc: Int, n: Int) {
        self.c = c; self.ldc = ldc; segmentColumns = n; segmentValid = n; segmentStride = 0
    }

    init(c: UnsafeMutablePointer<Float>, ldc: Int, segmentColumns: Int, segmentValid: Int, segmentStride: Int) {
        self.c = c; self.ldc = ldc
        self.segmentColumns = segmentColumns; self.segmentValid = segmentValid; self.segmentStride = segmentStride
    }

    /// Where the panel starting at driver column `col` goes, and how many of its columns exist.
    @inline(__always)
    func panel(_ col: Int) -> (UnsafeMutablePointer<Float>, Int) {
        let seg = col / segmentColumns, p = col - seg * segmentColumns
        return (c + seg * segmentStride + p, min(MicroKernel.cols, segmentValid - p))
    }
}

enum GEMMBias {
    /// C = A · B
    case none
    /// C = A · B + bias[row]
    case rows(UnsafePointer<Float>)
    /// C = A · B + bias[column] (columns of C, not of the driver's padded column space)
    case columns(UnsafePointer<Float>)
    /// C += A · B
    case accumulate
}

/// One operand seen as a k × width matrix whose columns go into panels of `panel` (6 for A,
/// whose columns are C's rows; 16 for B): writes rows k0..<k0+kc of columns l0..<l0+width as
/// consecutive panels of kc × panel floats (k-major), zero past `width`.
protocol PanelSource {
    func pack(k0: Int, kc: Int, l0: Int, width: Int, panel: Int, into dst: UnsafeMutablePointer<Float>)
    /// The packed slab in place, when the source already holds it as float32 (`PackedPanels`).
    func direct(k0: Int, kc: Int, l0: Int, panel: Int) -> UnsafePointer<Float>?
    /// As an A operand: element (kk, l) at p[(l − l0) · ld + kk − k0] for the returned (p, ld),
    /// when the source is float32 rows the micro-kernel can read in place (`RowsSource`).
    func rows(k0: Int, l0: Int) -> (UnsafePointer<Float>, Int)?
    /// A weight packed as bf16 pairs (`PackedPanels.pairs`): the product runs in the bf16 mode
    /// (`gemmTileBF16`), the other operand rounded to bf16 as it is packed.
    var isPairs: Bool { get }
    /// The packed bf16-pair slab in place (when `isPairs`).
    func pairSlab(k0: Int, kc: Int, l0: Int, panel: Int) -> UnsafePointer<UInt32>?
    /// As an A operand in the bf16 mode: rows of bf16 pairs read in place, pair (kk − k0) / 2 of row
    /// l − l0 at p[(l − l0) · ld + (kk − k0) / 2] for the returned (p, ld) (`PairRowsSource`).
    func pairRows(k0: Int, l0: Int) -> (UnsafePointer<UInt32>, Int)?
    /// As `pack` with panels of 16, rounded to bf16 pairs as they are made (panels of ⌈kc / 2⌉ × 16
    /// uint32); false when the source has no such packer (gemm then packs float32 and rounds).
    func packPairs(k0: Int, kc: Int, l0: Int, width: Int, into dst: UnsafeMutablePointer<UInt32>) -> Bool
}

extension PanelSource {
    func direct(k0: Int, kc: Int, l0: Int, panel: Int) -> UnsafePointer<Float>? { nil }
    func rows(k0: Int, l0: Int) -> (UnsafePointer<Float>, Int)? { nil }
    var isPairs: Bool { false }
    func pairSlab(k0: Int, kc: Int, l0: Int, panel: Int) -> UnsafePointer<UInt32>? { nil }
    func pairRows(k0: Int, l0: Int) -> (UnsafePointer<UInt32>, Int)? { nil }
    func packPairs(k0: Int, kc: Int, l0: Int, width: Int, into dst: UnsafeMutablePointer<UInt32>) -> Bool { false }
}

/// Depth of one packed slab: 6 × 256 floats of A (6 KB) and 16 × 256 of B (16 KB) stay in L1
/// while the micro-kernel runs; a k of up to 384 is done in one slab.
let gemmKBlock = 256

/// The depth of gemm's k blocks for a given k (the last block may be shorter).
@inline(__always)
func gemmDepth(_ k: Int) -> Int { k <= gemmKBlock * 3 / 2 ? max(k, 1) : gemmKBlock }

/// The largest tile, in row panels (of 6) and column panels (of 16).
let gemmTilePanels = (rows: 96, cols: 24)

/// Scratch the running tiles of a gemm hold at most (their packed slabs, under 1 MB per thread):
/// for memory estimates.
func gemmScratchBytes(threads: Int) -> Int {
    let slabs = gemmTilePanels.rows * MicroKernel.rows + gemmTilePanels.cols * MicroKernel.cols
    return max(threads, 1) * slabs * gemmKBlock * 3 / 2 * MemoryLayout<Float>.size
}

/// How `gemm` cuts an m × n product into tiles of C: from the shape only (and the number of
/// same-shaped products run together), never the thread count.
struct GEMMPlan {
    let m: Int, n: Int, k: Int, kc: Int
    let tileM: Int, tileN: Int, mTiles: Int, nTiles: Int
    var jobs: Int { mTiles * nTiles }
    /// Floats of one tile's packed slabs of A and of B (when the operand is packed per tile).
    var aSlabFloats: Int { tileM * MicroKernel.rows * kc }
    var bSlabFloats: Int { tileN * MicroKernel.cols * kc }

    /// `wideColumns`: tiles span all of n (cut only when there are too few row tiles), for an A operand
    /// that is costly to pack and a B that is not (a linear layer's input rows against its packed
    /// weight): each A slab is then packed once per call instead of once per 24 column panels.
    init(m: Int, n: Int, k: Int, problems: Int = 1, wideColumns: Bool = false) {
        let mr = MicroKernel.rows, nr = MicroKernel.cols
        self.m = m; self.n = n; self.k = k
        kc = gemmDepth(k)
        let mPanels = (m + mr - 1) / mr, nPanels = (n + nr - 1) / nr
        // Tall tiles (up to 576 rows): each B slab — im2col packed from the activation, the costly
        // operand — is packed for 576 rows of C instead of 192 (cifar batch 8: 0.85 -> 0.72 s; SD VAE
        // decode 25.5 -> 20.4 s, one run each on a noisy VM; taller still was no better). The A slab
        // (576 rows × kc, 576 KB) then streams from L2/L3, which the broadcasts tolerate.
        var tileM = min(mPanels, gemmTilePanels.rows), tileN = min(nPanels, wideColumns ? nPanels : gemmTilePanels.cols)
        func jobs() -> Int { ((mPanels + tileM - 1) / tileM) * ((nPanels + tileN - 1) / tileN) * problems }
        // Enough tiles to keep a few threads busy.
        while jobs() < 8 && tileN > 4 { tileN = (tileN + 1) / 2 }
        while jobs() < 8 && tileM > 4 { tileM = (tileM + 1) / 2 }
        self.tileM = tileM; self.tileN = tileN
        mTiles = (mPanels + tileM - 1) / tileM; nTiles = (nPanels + tileN - 1) / tileN
    }
}

func gemm<A: PanelSource, B: PanelSource>(m: Int, n: Int, k: Int, a: A, b: B, out: GEMMOutput,
                                          bias: GEMMBias = .none, wideColumns: Bool = false, threads: Int) throws {
    guard m > 0, n > 0 else { return }
    let plan = GEMMPlan(m: m, n: n, k: k, wideColumns: wideColumns)
    // The slabs of the operands packed per tile, one set per thread, taken here (in the sampler's
    // arena when there is one) rather than per tile on the workers, where the pool's reuse would
    // depend on which tiles happened to run at once.
    let mr = MicroKernel.rows, nr = MicroKernel.cols
    let bf16 = a.isPairs || b.isPairs
    let packsA = bf16 ? !a.isPairs && a.pairRows(k0: 0, l0: 0) == nil : a.rows(k0: 0, l0: 0) == nil && a.direct(k0: 0, kc: plan.kc, l0: 0, panel: mr) == nil
    let packsB = bf16 ? !b.isPairs : b.direct(k0: 0, kc: plan.kc, l0: 0, panel: nr) == nil
    let perSlot = (packsA ? plan.aSlabFloats : 0) + (packsB ? plan.bSlabFloats : 0)
    let slots = parallelSlots(plan.jobs, threads: threads)
    let scratch = perSlot > 0 ? try FloatBuffer(count: slots * perSlot) : nil
    parallelFor(plan.jobs, threads: threads) { job, slot in
        let base = scratch.map { $0.pointer + slot * perSlot }
        gemmTile(plan, job, a: a, b: b, out: out, bias: bias,
                 aScratch: packsA ? base : nil, bScratch: packsB ? base.map { $0 + (packsA ? plan.aSlabFloats : 0) } : nil)
    }
    withExtendedLifetime(scratch) {}
}

/// Tile `job` of `plan`: C's rows × columns of that tile, all of k.
@inline(__always)
func gemmTile<A: PanelSource, B: PanelSource>(_ plan: GEMMPlan, _ job: Int, a: A, b: B, out: GEMMOutput,
                                              bias: GEMMBias, aScratch: UnsafeMutablePointer<Float>? = nil,
                                              bScratch: UnsafeMutablePointer<Float>? = nil) {
    if a.isPairs || b.isPairs {
        gemmTileBF16(plan, job, a: a, b: b, out: out, bias: bias, aScratch: aScratch, bScratch: bScratch)
        return
    }
    let mr = MicroKernel.rows, nr = MicroKernel.cols, k = plan.k, kc = plan.kc
    let (row0, col0, rows, cols, rowPanels, colPanels) = plan.tile(job)
    // Slabs only for operands that are not already packed float32, in the caller's per-thread
    // scratch (a tile allocates nothing: it runs on the workers, where a failure could not be
    // reported).
    let zeroStart = startTile(plan, job, out: out, bias: bias)
    var k0 = 0
    while k0 < k {
        let depth = min(kc, k - k0)
        let overwrite = zeroStart && k0 == 0
        let aPanels: UnsafePointer<Float>, bPanels: UnsafePointer<Float>
        let aRows = a.rows(k0: k0, l0: row0)
        if aRows != nil {
            aPanels = UnsafePointer(bitPattern: 64)!  // unused: A is read in place
        } else if let p = a.direct(k0: k0, kc: depth, l0: row0, panel: mr) { aPanels = p } else {
            let slab = slabPointer(aScratch)
            a.pack(k0: k0, kc: depth, l0: row0, width: rows, panel: mr, into: slab)
            aPanels = UnsafePointer(slab)
        }
        if let p = b.direct(k0: k0, kc: depth, l0: col0, panel: nr) { bPanels = p } else {
            let slab = slabPointer(bScratch)
            b.pack(k0: k0, kc: depth, l0: col0, width: cols, panel: nr, into: slab)
            bPanels = UnsafePointer(slab)
        }
        if let (base, lda) = aRows {
            // A read in place: each 6-row panel (6 × kc, L1) runs against all column panels
            // (streamed), so the rows — possibly pages apart — are touched once per k block.
            for ip in 0..<rowPanels {
                let r = ip * mr, height = min(mr, rows - r)
                let ar = base + r * lda
                for jp in 0..<colPanels {
                    let (c, valid) = out.panel(col0 + jp * nr)
                    guard valid > 0 else { continue }
                    let bp = bPanels + jp * nr * depth, cp = c + (row0 + r) * out.ldc
                    if height == mr && valid == nr {
                        MicroKernel.fullRows(kc: depth, a: ar, lda: lda, b: bp, c: cp, ldc: out.ldc, overwrite: overwrite)
                    } else {
                        withUnsafeTemporaryAllocation(of: Float.self, capacity: mr * depth) { t in
                            let panel = t.baseAddress!
                            for i in 0..<mr {
                                for kk in 0..<depth { panel[kk * mr + i] = i < height ? ar[i * lda + kk] : 0 }
                            }
                            MicroKernel.edge(kc: depth, a: panel, b: bp, c: cp, ldc: out.ldc, rows: height, cols: valid,
                                             overwrite: overwrite)
                        }
                    }
                }
            }
            k0 += depth
            continue
        }
        for jp in 0..<colPanels {
            let (c, valid) = out.panel(col0 + jp * nr)
            guard valid > 0 else { continue }
            let bp = bPanels + jp * nr * depth
            for ip in 0..<rowPanels {
                let r = ip * mr, height = min(mr, rows - r)
                let cp = c + (row0 + r) * out.ldc
                let ap = aPanels + ip * mr * depth
                if height == mr && valid == nr {
                    MicroKernel.full(kc: depth, a: ap, b: bp, c: cp, ldc: out.ldc, overwrite: overwrite)
                } else {
                    MicroKernel.edge(kc: depth, a: ap, b: bp, c: cp, ldc: out.ldc, rows: height, cols: valid, overwrite: overwrite)
                }
            }
        }
        k0 += depth
    }
}

/// A tile's slab: the caller's per-thread scratch (`GEMMPlan.aSlabFloats` / `bSlabFloats`),
/// which every caller of a tile that packs an operand provides.
@inline(__always)
func slabPointer(_ scratch: UnsafeMutablePointer<Float>?) -> UnsafeMutablePointer<Float> {
    guard let scratch else { preconditionFailure("a gemm tile packs an operand but was given no scratch") }
    return scratch
}

extension GEMMPlan {
    /// Where tile `job` sits in C: its first row and column, its extent, and its panels.
    @inline(__always)
    func tile(_ job: Int) -> (row0: Int, col0: Int, rows: Int, cols: Int, rowPanels: Int, colPanels: Int) {
        let mr = MicroKernel.rows, nr = MicroKernel.cols
        let row0 = (job % mTiles) * tileM * mr, col0 = (job / mTiles) * tileN * nr
        let rows = min(tileM * mr, m - row0), cols = min(tileN * nr, n - col0)
        return (row0, col0, rows, cols, (rows + mr - 1) / mr, (cols + nr - 1) / nr)
    }
}

/// Prepares tile `job`'s part of C and says whether the first k block is to overwrite it: C = A · B
/// (no bias) writes C in its first block instead of adding to a zero fill; otherwise C starts as
/// the bias (or as is, to accumulate).
@inline(__always)
func startTile(_ plan: GEMMPlan, _ job: Int, out: GEMMOutput, bias: GEMMBias) -> Bool {
    if case .none = bias, plan.k > 0 { return true }
    let t = plan.tile(job)
    initializeTile(out, bias: bias, row0: t.row0, rows: t.rows, col0: t.col0, colPanels: t.colPanels)
    return false
}

/// The tile's part of C before the first slab: zero or the bias (or left as is to accumulate).
@inline(__always)
func initializeTile(_ out: GEMMOutput, bias: GEMMBias, row0: Int, rows: Int, col0: Int, colPanels: Int) {
    if case .accumulate = bias { return }
    for jp in 0..<colPanels {
        let col = col0 + jp * MicroKernel.cols
        let (c, valid) = out.panel(col)
        guard valid > 0 else { continue }
        for r in row0..<(row0 + rows) {
            let dst = c + r * out.ldc
            switch bias {
            // At most 16 values per row: inline vector moves, not memset / memmove calls.
            case .rows(let b): for j in 0..<valid { dst[j] = b[r] }
            case .columns(let b):
                let seg = col / out.segmentColumns
                copyShortRow(dst, b + (col - seg * out.segmentColumns), count: valid)
            default: for j in 0..<valid { dst[j] = 0 }
            }
        }
    }
}

/// Row-major float32 rows (a linear layer's input: row l, element kk at base[l · ld + kk]) as
/// gemm's A operand: panels of rows, each k-major.
struct RowsSource: PanelSource {
    let base: UnsafePointer<Float>
    let ld: Int

    func rows(k0: Int, l0: Int) -> (UnsafePointer<Float>, Int)? { (base + l0 * ld + k0, ld) }

    func pack(k0: Int, kc: Int, l0: Int, width: Int, panel: Int, into dst: UnsafeMutablePointer<Float>) {
        var q = 0
        while q * panel < width {
            let first = l0 + q * panel, w = min(panel, width - q * panel)
            let d = dst + q * panel * kc
            for r in 0..<panel {
                if r >= w {
                    for kk in 0..<kc { d[kk * panel + r] = 0 }
                    continue
                }
                let row = base + (first + r) * ld + k0
                for kk in 0..<kc { d[kk * panel + r] = row[kk] }
            }
            q += 1
        }
    }
}

/// Rows of bf16 pairs (a linear layer's input rounded once, `cdiffusion_bf16_rows`: row l, pair p
/// at base[l · ld + p]) as gemm's A operand in the bf16 mode: the micro-kernel reads them in place.
struct PairRowsSource: PanelSource {
    let base: UnsafePointer<UInt32>
    let ld: Int

    func pairRows(k0: Int, l0: Int) -> (UnsafePointer<UInt32>, Int)? { (base + l0 * ld + k0 / 2, ld) }

    /// The values as float32 panels (exact: they are bf16), for completeness; gemm reads the rows.
    func pack(k0: Int, kc: Int, l0: Int, width: Int, panel: Int, into dst: UnsafeMutablePointer<Float>) {
        var q = 0
        while q * panel < width {
            let first = l0 + q * panel, w = min(panel, width - q * panel)
            for r in 0..<panel {
                for kk in 0..<kc {
                    let pair = r < w ? base[(first + r) * ld + (k0 + kk) / 2] : 0
                    dst[q * panel * kc + kk * panel + r] = Float(bitPattern: (k0 + kk) % 2 == 0 ? pair << 16 : pair & 0xFFFF_0000)
                }
            }
            q += 1
        }
    }
}
