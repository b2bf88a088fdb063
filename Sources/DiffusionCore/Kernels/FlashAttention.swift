import CDiffusion

/// One head's matrix (tokens × features): element (t, f) at base + t · tokenStride + f · featureStride.
struct HeadMatrix<P> {
    var base: P
    var tokenStride: Int, featureStride: Int
}

/// Scaled dot-product attention of `groups` independent heads (image × head), flash-style: each
/// job takes 64 queries and walks the keys in blocks of 192 with a running max and sum per
/// query, so no queries × keys matrix exists and memory stays a few tiles per thread.
///
/// Everything is computed transposed, so the softmax runs down columns, 16 queries per vector:
/// S^T (keys × queries) = K · Q^T and O^T (features × queries) += V^T · P^T both go through the
/// 6 × 16 micro-kernel, with K and V^T packed once per head into A panels, Q^T into B panels per
/// job, and P^T — the micro-kernel's own output tile, written panel by panel — used as B in place.
/// Fixed blocks: any thread count gives the same bytes. `causal` masks keys after the query.
///
/// `.bf16`: both products run on `cdiffusion_bf16_tile`. The panels are
/// packed as above, then each is rounded in place to bf16 pairs (along d for K and Q^T, along the
/// keys for V^T and P^T); scores, the running max and sum, the softmax and O stay float32.
func flashAttention(groups: Int, queries: Int, keys: Int, headDim d: Int, causal: Bool, precision: Precision = .exact,
                    threads: Int,
                    head: (Int) -> (q: HeadMatrix<UnsafePointer<Float>>, k: HeadMatrix<UnsafePointer<Float>>,
                                    v: HeadMatrix<UnsafePointer<Float>>, out: HeadMatrix<UnsafeMutablePointer<Float>>)) throws {
    guard groups > 0, queries > 0, keys > 0, d > 0 else { return }
    typealias V16 = SIMD16<Float>
    let mr = MicroKernel.rows, nr = MicroKernel.cols
    let keyBlock = 192, queryBlock = 64
    let keysPad = (keys + mr - 1) / mr * mr, dPad = (d + mr - 1) / mr * mr
    let dk = gemmDepth(d)
    let scale = 1 / Float(d).squareRoot()
    let bf16 = precision == .bf16
    /// A packed panel (`rows` of k × `panel` lanes) rounded to bf16 pairs in place.
    @inline(__always) func round(_ p: UnsafeMutablePointer<Float>, rows: Int, panel: Int) {
        cdiffusion_bf16_pairs(p, rows, panel, UnsafeMutableRawPointer(p).assumingMemoryBound(to: UInt32.self))
    }
    @inline(__always) func words(_ p: UnsafePointer<Float>) -> UnsafePointer<UInt32> {
        UnsafeRawPointer(p).assumingMemoryBound(to: UInt32.self)
    }

    // K as A panels (6 keys × d, in gemm's d blocks) and V^T as A panels (6 features × each key
    // block's keys), per head.
    let kPacked = try FloatBuffer(count: groups * keysPad * d), vPacked = try FloatBuffer(count: groups * keysPad * dPad)
    let keyBlocks = (keysPad + keyBlock - 1) / keyBlock
    parallelFor(groups * keyBlocks, threads: threads) { job in
        let g = job / keyBlocks, j0 = (job % keyBlocks) * keyBlock, kb = min(keyBlock, keysPad - j0)
        let (_, k, v, _) = head(g)
        let kp = kPacked.pointer + g * keysPad * d, vp = vPacked.pointer + g * keysPad * dPad
        var d0 = 0
        while d0 < d {
            let depth = min(dk, d - d0)
            for p in stride(from: j0, to: j0 + kb, by: mr) {
                let dst = kp + d0 * keysPad + p * depth
                for r in 0..<mr {
                    let key = p + r
                    if key >= keys { for kk in 0..<depth { dst[kk * mr + r] = 0 }; continue }
                    let src = k.base + key * k.tokenStride + d0 * k.featureStride
                    for kk in 0..<depth { dst[kk * mr + r] = src[kk * k.featureStride] }
                }
            }
            d0 += depth
        }
        for fp in stride(from: 0, to: dPad, by: mr) {
            let dst = vp + j0 * dPad + fp * kb
            for kk in 0..<kb {
                let key = j0 + kk
                for r in 0..<mr {
                    let f = fp + r
                    dst[kk * mr + r] = key < keys && f < d ? v.base[key * v.tokenStride + f * v.featureStride] : 0
                }
            }
            if bf16 { round(dst, rows: kb, panel: mr) }
        }
        if bf16 {
            var d0 = 0
            while d0 < d {
                let depth = min(dk, d - d0)
                for p in stride(from: j0, to: j0 + kb, by: mr) { round(kp + d0 * keysPad + p * depth, rows: depth, panel: mr) }
                d0 += depth
            }
        }
    }

    let queryBlocks = (queries + queryBlock - 1) / queryBlock
    let lanes = SIMD16<Int32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
    // Each thread's Q^T, score and output tiles, set aside here (see gemm's slabs).
    let maxPanels = (min(queryBlock, queries) + nr - 1) / nr
    let qtFloats = d * maxPanels * nr, sFloats = maxPanels * keyBlock * nr, oFloats = maxPanels * dPad * nr
    let perSlot = qtFloats + sFloats + oFloats
    let tiles = try FloatBuffer(count: parallelSlots(groups * queryBlocks, threads: threads) * perSlot)
    parallelFor(groups * queryBlocks, threads: threads) { job, slot in
        let g = job / queryBlocks, q0 = (job % queryBlocks) * queryBlock, nq = min(queryBlock, queries - q0)
        let (q, _, _, out) = head(g)
        let panels = (nq + nr - 1) / nr, qPad = panels * nr
        let kp = UnsafePointer(kPacked.pointer + g * keysPad * d), vp = UnsafePointer(vPacked.pointer + g * keysPad * dPad)
        let qt = tiles.pointer + slot * perSlot, s = qt + qtFloats, o = s + sFloats
        // Q^T as B panels (d × 16 queries, in d blocks).
        var d0 = 0
        while d0 < d {
            let depth = min(dk, d - d0)
            for jp in 0..<panels {
                let dst = qt + d0 * qPad + jp * nr * depth
                for c in 0..<nr {
                    let query = q0 + jp * nr + c
                    if query >= q0 + nq { for kk in 0..<depth { dst[kk * nr + c] = 0 }; continue }
                    let src = q.base + query * q.tokenStride + d0 * q.featureStride
                    for kk in 0..<depth { dst[kk * nr + c] = src[kk * q.featureStride] }
                }
                if bf16 { round(dst, rows: depth, panel: nr) }
            }
            d0 += depth
        }
        o.update(repeating: 0, count: panels * dPad * nr)
        withUnsafeTemporaryAllocation(of: V16.self, capacity: 2 * panels) { stats in
            let m = stats.baseAddress!, l = m + panels
            for jp in 0..<panels {
                m[jp] = V16(repeating: -.greatestFiniteMagnitude)
                l[jp] = V16()
            }
            var j0 = 0
            while j0 < keysPad {
                let kb = min(keyBlock, keysPad - j0), valid = min(kb, keys - j0)
                // bf16: the scores of two query panels per tile (6 × 32: twice the accumulators).
                var pair = 0
                while bf16 && pair < panels {
                    let two = pair + 1 < panels
                    let s0 = s + pair * keyBlock * nr, s1 = s0 + keyBlock * nr
                    var d0 = 0
                    while d0 < d {  // d blocks as gemm's: the first writes S, the others add
                        let depth = min(dk, d - d0)
                        let q0 = words(qt + d0 * qPad + pair * nr * depth), q1 = q0 + nr * depth
                        for p in stride(from: 0, to: kb, by: mr) {
                            cdiffusion_bf16_tile((depth + 1) / 2, words(kp + d0 * keysPad + (j0 + p) * depth), q0,
                                                 two ? q1 : nil, s0 + p * nr, two ? s1 + p * nr : nil, nr, d0 == 0 ? 1 : 0)
                        }
                        d0 += depth
                    }
                    pair += 2
                }
                for jp in 0..<panels {
                    let sp = s + jp * keyBlock * nr
                    if !bf16 { sp.update(repeating: 0, count: kb * nr) }
                    var d0 = 0
                    while !bf16 && d0 < d {
                        let depth = min(dk, d - d0)
                        let qp = UnsafePointer(qt + d0 * qPad + jp * nr * depth)
                        for p in stride(from: 0, to: kb, by: mr) {
                            MicroKernel.full(kc: depth, a: kp + d0 * keysPad + (j0 + p) * depth, b: qp, c: sp + p * nr, ldc: nr)
                        }
                        d0 += depth
                    }
                    // Causal: key j0 + kk is masked for the lanes whose query is before it.
                    let query = SIMD16<Int32>(repeating: Int32(q0 + jp * nr)) &+ lanes
                    let raw = UnsafeMutableRawPointer(sp)
                    var mx = m[jp]
                    for kk in 0..<valid {
                        var row = raw.load(fromByteOffset: kk * nr * 4, as: V16.self)
                        if causal { row.replace(with: -.greatestFiniteMagnitude, where: query .< Int32(j0 + kk)) }
                        mx.replace(with: row, where: row .> mx)
                    }
                    let alpha = exp16((m[jp] - mx) * scale)
                    var sum = V16()
                    // bf16: P^T straight into pair rows (keys kk, kk + 1), in place: row kk / 2
                    // is written after rows kk and kk + 1 are read.
                    var kk = 0
                    let log2Scale = scale * 1.442_695_04, offset = -mx * log2Scale
                    while bf16 && kk < valid {
                        var p0 = exp2Short(raw.load(fromByteOffset: kk * nr * 4, as: V16.self) * log2Scale + offset), p1 = V16()
                        if kk + 1 < valid {
                            p1 = exp2Short(raw.load(fromByteOffset: (kk + 1) * nr * 4, as: V16.self) * log2Scale + offset)
                        }
                        if causal {
                            p0.replace(with: 0, where: query .< Int32(j0 + kk))
                            p1.replace(with: 0, where: query .< Int32(j0 + kk + 1))
                        }
                        sum += p0
                        sum += p1
                        raw.storeBytes(of: bf16Round(p0) | bf16Round(p1) &<< 16, toByteOffset: kk / 2 * nr * 4,
                                       as: SIMD16<UInt32>.self)
                        kk += 2
                    }
                    if bf16 && (valid + 1) / 2 < kb / 2 {
                        (sp + (valid + 1) / 2 * nr).update(repeating: 0, count: (kb / 2 - (valid + 1) / 2) * nr)
                    }
                    for kk in 0..<(bf16 ? 0 : valid) {
                        var p = exp16((raw.load(fromByteOffset: kk * nr * 4, as: V16.self) - mx) * scale)
                        if causal { p.replace(with: 0, where: query .< Int32(j0 + kk)) }
                        raw.storeBytes(of: p, toByteOffset: kk * nr * 4, as: V16.self)
                        sum += p
                    }
                    if !bf16 && valid < kb { (sp + valid * nr).update(repeating: 0, count: (kb - valid) * nr) }
                    l[jp] = l[jp] * alpha + sum
                    m[jp] = mx
                    let op = UnsafeMutableRawPointer(o + jp * dPad * nr)
                    for f in 0..<dPad {
                        op.storeBytes(of: op.load(fromByteOffset: f * nr * 4, as: V16.self) * alpha, toByteOffset: f * nr * 4, as: V16.self)
                    }
                    if bf16 { continue }  // O after every panel's P (below)
                    for fp in stride(from: 0, to: dPad, by: mr) {
                        MicroKernel.full(kc: kb, a: vp + j0 * dPad + fp * kb, b: UnsafePointer(sp),
                                         c: o + jp * dPad * nr + fp * nr, ldc: nr)
                    }
                }
                // bf16: O^T += V^T · P^T, two query panels per tile.
                pair = 0
                while bf16 && pair < panels {
                    let two = pair + 1 < panels
                    let p0 = words(s + pair * keyBlock * nr), p1 = p0 + keyBlock * nr
                    let o0 = o + pair * dPad * nr, o1 = o0 + dPad * nr
                    for fp in stride(from: 0, to: dPad, by: mr) {
                        cdiffusion_bf16_tile(kb / 2, words(vp + j0 * dPad + fp * kb), p0, two ? p1 : nil, o0 + fp * nr,
                                             two ? o1 + fp * nr : nil, nr, 0)
                    }
                    pair += 2
                }
                j0 += kb
            }
            // out = O^T / l, transposed back.
            for jp in 0..<panels {
                let inv = 1 / l[jp], n = min(nr, nq - jp * nr)
                let op = UnsafeRawPointer(o + jp * dPad * nr)
                for f in 0..<d {
                    let y = op.load(fromByteOffset: f * nr * 4, as: V16.self) * inv
                    let dst = out.base + (q0 + jp * nr) * out.tokenStride + f * out.featureStride
                    if out.tokenStride == 1 && n == nr {
                        UnsafeMutableRawPointer(dst).storeBytes(of: y, as: V16.self)
                    } else {
                        for c in 0..<n { dst[c * out.tokenStride] = y[c] }
                    }
                }
            }
        }
    }
    withExtendedLifetime((kPacked, vPacked, tiles)) {}
}


/// 2^t for t ≤ 0 (a softmax's shifted scores), to about 4e-5 relative: enough for probabilities
/// that are rounded to bf16 (2^-9) next. t below -125 gives 2^-125 (no denormals).
@inline(__always)
private func exp2Short(_ t: SIMD16<Float>) -> SIMD16<Float> {
    var t = t
    t.replace(with: -125, where: t .< -125)
    let magic: Float = 12_582_912  // 1.5 · 2^23: adding it rounds to an integer in the low bits
    let shifted = t + magic
    let f = t - (shifted - magic)  // in [-0.5, 0.5]
    var p = SIMD16<Float>(repeating: 9.618_03e-3)
    p = p * f + 5.550_357e-2
    p = p * f + 2.402_265e-1
    p = p * f + 6.931_472e-1
    p = p * f + 1
    let bits = (unsafeBitCast(shifted, to: SIMD16<UInt32>.self) &- magic.bitPattern &+ 127) &<< 23
    return p * unsafeBitCast(bits, to: SIMD16<Float>.self)
}
