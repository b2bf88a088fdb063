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
}

extension PanelSource {
    func direct(k0: Int, kc: Int, l0: Int, panel: Int) -> UnsafePointer<Float>? { nil }
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

func gemm<A: PanelSource, B: PanelSource>(m: Int, n: Int, k: Int, a: A, b: B, out: GEMMOutput,
                                          bias: GEMMBias = .none, threads: Int) {
    guard m > 0, n > 0 else { return }
    let mr = MicroKernel.rows, nr = MicroKernel.cols
    let kc = gemmDepth(k)
    let mPanels = (m + mr - 1) / mr, nPanels = (n + nr - 1) / nr
    // Tall tiles (up to 576 rows): each B slab — im2col packed from the activation, the costly
    // operand — is packed for 576 rows of C instead of 192 (cifar batch 8: 0.85 -> 0.72 s; SD VAE
    // decode 25.5 -> 20.4 s, one run each on a noisy VM; taller still was no better). The A slab
    // (576 rows × kc, 576 KB) then streams from L2/L3, which the broadcasts tolerate.
    var tileM = min(mPanels, gemmTilePanels.rows), tileN = min(nPanels, gemmTilePanels.cols)
    func jobs() -> Int { ((mPanels + tileM - 1) / tileM) * ((nPanels + tileN - 1) / tileN) }
    // Enough tiles to keep a few threads busy; from the shape only, never the thread count.
    while jobs() < 8 && tileN > 4 { tileN = (tileN + 1) / 2 }
    while jobs() < 8 && tileM > 4 { tileM = (tileM + 1) / 2 }
    let mTiles = (mPanels + tileM - 1) / tileM, nTiles = (nPanels + tileN - 1) / tileN
    parallelFor(mTiles * nTiles, threads: threads) { job in
        let row0 = (job % mTiles) * tileM * mr, col0 = (job / mTiles) * tileN * nr
        let rows = min(tileM * mr, m - row0), cols = min(tileN * nr, n - col0)
        let rowPanels = (rows + mr - 1) / mr, colPanels = (cols + nr - 1) / nr
        // Slabs only for operands that are not already packed float32 (taken from the pool once
        // per tile, not per k block).
        var aSlab: FloatBuffer?, bSlab: FloatBuffer?
        initialize(out, bias: bias, row0: row0, rows: rows, col0: col0, colPanels: colPanels)
        var k0 = 0
        while k0 < k {
            let depth = min(kc, k - k0)
            let aPanels: UnsafePointer<Float>, bPanels: UnsafePointer<Float>
            if let p = a.direct(k0: k0, kc: depth, l0: row0, panel: mr) { aPanels = p } else {
                let slab = aSlab ?? FloatBuffer(count: rowPanels * mr * kc)
                aSlab = slab
                a.pack(k0: k0, kc: depth, l0: row0, width: rows, panel: mr, into: slab.pointer)
                aPanels = UnsafePointer(slab.pointer)
            }
            if let p = b.direct(k0: k0, kc: depth, l0: col0, panel: nr) { bPanels = p } else {
                let slab = bSlab ?? FloatBuffer(count: colPanels * nr * kc)
                bSlab = slab
                b.pack(k0: k0, kc: depth, l0: col0, width: cols, panel: nr, into: slab.pointer)
                bPanels = UnsafePointer(slab.pointer)
            }
            for jp in 0..<colPanels {
                let (c, valid) = out.panel(col0 + jp * nr)
                guard valid > 0 else { continue }
                let bp = bPanels + jp * nr * depth
                for ip in 0..<rowPanels {
                    let ap = aPanels + ip * mr * depth
                    let r = ip * mr, height = min(mr, rows - r)
                    let cp = c + (row0 + r) * out.ldc
                    if height == mr && valid == nr {
                        MicroKernel.full(kc: depth, a: ap, b: bp, c: cp, ldc: out.ldc)
                    } else {
                        MicroKernel.edge(kc: depth, a: ap, b: bp, c: cp, ldc: out.ldc, rows: height, cols: valid)
                    }
                }
            }
            k0 += depth
        }
        withExtendedLifetime((aSlab, bSlab)) {}
    }
}

/// The tile's part of C before the first slab: zero or the bias (or left as is to accumulate).
@inline(__always)
private func initialize(_ out: GEMMOutput, bias: GEMMBias, row0: Int, rows: Int, col0: Int, colPanels: Int) {
    if case .accumulate = bias { return }
    for jp in 0..<colPanels {
        let col = col0 + jp * MicroKernel.cols
        let (c, valid) = out.panel(col)
        guard valid > 0 else { continue }
        for r in row0..<(row0 + rows) {
            let dst = c + r * out.ldc
            switch bias {
            case .rows(let b): dst.update(repeating: b[r], count: valid)
            case .columns(let b):
                let seg = col / out.segmentColumns
                dst.update(from: b + (col - seg * out.segmentColumns), count: valid)
            default: dst.update(repeating: 0, count: valid)
            }
        }
    }
}

/// Row-major float32 rows (a linear layer's input: row l, element kk at base[l · ld + kk]) as
/// gemm's A operand: panels of rows, each k-major.
struct RowsSource: PanelSource {
    let base: UnsafePointer<Float>
    let ld: Int

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
