import CDiffusion

/// `gemmTile` in the bf16 mode: one operand is a weight packed as bf16 pairs, the other is packed
/// as float32 (its usual `pack`, or read in place) and rounded to bf16 pairs in the tile's slab;
/// `cdiffusion_bf16_tile` (`vdpbf16ps`, 6 × 32 per call) sums the products in float32. The same
/// tiles and the same k order as the f32 path, so the output is the same for any thread count.
func gemmTileBF16<A: PanelSource, B: PanelSource>(_ plan: GEMMPlan, _ job: Int, a: A, b: B, out: GEMMOutput,
                                                  bias: GEMMBias, aScratch: UnsafeMutablePointer<Float>?,
                                                  bScratch: UnsafeMutablePointer<Float>?) {
    let mr = MicroKernel.rows, nr = MicroKernel.cols, k = plan.k, kc = plan.kc
    let (row0, col0, rows, cols, rowPanels, colPanels) = plan.tile(job)
    let zeroStart = startTile(plan, job, out: out, bias: bias)
    // A partial row panel of an A read as rows, packed (zero past the last row).
    withUnsafeTemporaryAllocation(of: UInt32.self, capacity: mr * ((kc + 1) / 2)) { edgeBuffer in
    let edgePanel = edgeBuffer.baseAddress!
    var k0 = 0
    while k0 < k {
        let depth = min(kc, k - k0), pairs = (depth + 1) / 2
        let overwrite = zeroStart && k0 == 0
        // Each operand's slab as (first panel, uint32 between panels), or A's rows in place.
        let aRows = a.pairRows(k0: k0, l0: row0)
        let (ap, aStride) = aRows != nil ? (UnsafePointer<UInt32>(bitPattern: 64)!, 0)
            : pairSlab(a, k0: k0, depth: depth, l0: row0, width: rows, panel: mr, panels: rowPanels,
                       scratch: aScratch)
        let (bp, bStride) = pairSlab(b, k0: k0, depth: depth, l0: col0, width: cols, panel: nr, panels: colPanels,
                                     scratch: bScratch)
        var jp = 0
        while jp < colPanels {
            let (c0, valid0) = out.panel(col0 + jp * nr)
            let second = jp + 1 < colPanels
            let (c1, valid1) = second ? out.panel(col0 + (jp + 1) * nr) : (c0, 0)
            let b0 = bp + jp * bStride, b1 = b0 + bStride
            for ip in 0..<rowPanels {
                let r = ip * mr, height = min(mr, rows - r)
                var at = ap + ip * aStride, lda = 0  // lda > 0: A as rows
                if let (base, ld) = aRows {
                    if height == mr {
                        at = base + r * ld; lda = ld
                    } else {
                        for p in 0..<pairs {
                            for i in 0..<mr { edgePanel[p * mr + i] = i < height ? base[(r + i) * ld + p] : 0 }
                        }
                        at = UnsafePointer(edgePanel)
                    }
                }
                let rowOffset = (row0 + r) * out.ldc
                if height == mr && valid0 == nr && valid1 == nr {
                    tile(pairs, at, lda, b0, b1, c0 + rowOffset, c1 + rowOffset, out.ldc, overwrite)
                    continue
                }
                @inline(__always) func one(_ bq: UnsafePointer<UInt32>, _ c: UnsafeMutablePointer<Float>, _ valid: Int) {
                    guard valid > 0 else { return }
                    if height == mr && valid == nr {
                        tile(pairs, at, lda, bq, nil, c + rowOffset, nil, out.ldc, overwrite)
                    } else {
                        bf16EdgeTile(pairs: pairs, a: at, lda: lda, b: bq, c: c + rowOffset, ldc: out.ldc, rows: height,
                                     cols: valid, overwrite: overwrite)
                    }
                }
                one(b0, c0, valid0)
                one(b1, c1, valid1)
            }
            jp += 2
        }
        k0 += depth
    }
    }
}

/// The micro-kernel on a packed A panel (lda 0) or on 6 rows of A (row stride lda).
@inline(__always)
private func tile(_ pairs: Int, _ a: UnsafePointer<UInt32>, _ lda: Int, _ b0: UnsafePointer<UInt32>, _ b1: UnsafePointer<UInt32>?,
                  _ c0: UnsafeMutablePointer<Float>, _ c1: UnsafeMutablePointer<Float>?, _ ldc: Int, _ overwrite: Bool) {
    if lda > 0 {
        cdiffusion_bf16_tile_rows(pairs, a, lda, b0, b1, c0, c1, ldc, overwrite ? 1 : 0)
    } else {
        cdiffusion_bf16_tile(pairs, a, b0, b1, c0, c1, ldc, overwrite ? 1 : 0)
    }
}

/// One operand's bf16-pair slab for k0 ..< k0 + depth: in place for a pair-packed weight, else
/// packed as float32 into the tile's slab and rounded there, panel by panel, in place.
@inline(__always)
private func pairSlab<S: PanelSource>(_ s: S, k0: Int, depth: Int, l0: Int, width: Int, panel: Int, panels: Int,
                                      scratch: UnsafeMutablePointer<Float>?) -> (UnsafePointer<UInt32>, Int) {
    if let p = s.pairSlab(k0: k0, kc: depth, l0: l0, panel: panel) { return (p, panel * ((depth + 1) / 2)) }
    let slab = slabPointer(scratch)
    let words = UnsafeMutableRawPointer(slab).assumingMemoryBound(to: UInt32.self)
    if panel == 16, s.packPairs(k0: k0, kc: depth, l0: l0, width: width, into: words) {
        return (UnsafePointer(words), panel * ((depth + 1) / 2))
    }
    if let f = s.direct(k0: k0, kc: depth, l0: l0, panel: panel) {
        for q in 0..<panels { cdiffusion_bf16_pairs(f + q * panel * depth, depth, panel, words + q * panel * depth) }
    } else {
        s.pack(k0: k0, kc: depth, l0: l0, width: width, panel: panel, into: slab)
        for q in 0..<panels { cdiffusion_bf16_pairs(slab + q * panel * depth, depth, panel, words + q * panel * depth) }
    }
    return (UnsafePointer(words), panel * depth)
}

/// A tile at the edge of C (rows × cols of the 6 × 16 exist): computed whole into a temporary.
private func bf16EdgeTile(pairs: Int, a: UnsafePointer<UInt32>, lda: Int, b: UnsafePointer<UInt32>,
                          c: UnsafeMutablePointer<Float>, ldc: Int, rows: Int, cols: Int, overwrite: Bool) {
    withUnsafeTemporaryAllocation(of: Float.self, capacity: 6 * 16) { buffer in
        let t = buffer.baseAddress!
        tile(pairs, a, lda, b, nil, t, nil, 16, true)
        for r in 0..<rows {
            for j in 0..<cols { c[r * ldc + j] = overwrite ? t[r * 16 + j] : c[r * ldc + j] + t[r * 16 + j] }
        }
    }
}
