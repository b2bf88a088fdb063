/// 3 × 3 convolutions with stride 1 and padding 1 by Winograd F(2 × 2, 3 × 3): each 2 × 2 block
/// of output pixels (a tile) comes from the 4 × 4 input patch around it as
///     Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A,
/// so the channel sums become 16 independent GEMMs M_ξ [cout × tiles] = U_ξ [cout × cin] ·
/// V_ξ [cin × tiles] (ξ = 4 · row + column of the 4 × 4 transform), with 16 multiply-adds per
/// (cout, cin, tile) where im2col spends 36: 2.25× fewer. U = G g Gᵀ is packed once per layer
/// (`PackedPanels` with `winograd`); V = Bᵀ d B is written per call straight into gemm's B panel
/// layout, so gemm packs nothing; M is turned into pixels (and the bias added) by Aᵀ M A.
///
/// Accuracy: the transforms add a few roundings per value (measured per layer against a float64
/// direct convolution: 5.9e-7 relative at 320 input channels, 2.0e-6 at 1280, against 3.5e-7 /
/// 6.7e-7 for im2col, ../shared/ENGINE.md), well inside exact mode's 1e-4.
///
/// Tiles run in chunks of whole tile rows (across images), sized so V and M of a chunk stay near
/// the caches; the chunking and gemm's tiles depend on the shape only, so the output is the same
/// for any thread count.
///
///     Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]   Aᵀ = [1 1 1 0; 0 1 −1 −1]
enum WinogradConv {
    typealias V8 = SIMD8<Float>

    /// Shapes this path takes: 3 × 3, stride 1, padding 1 on every side, even height, width a
    /// multiple of 16 (tile rows of whole 8-tile halves of gemm's 16-tile panels), tiles filling
    /// whole panels.
    static func applicable(kernel: Int, stride: Int, pads: (Int, Int, Int, Int), n: Int, h: Int, w: Int) -> Bool {
        kernel == 3 && stride == 1 && pads == (1, 1, 1, 1) && h >= 2 && h % 2 == 0 && w >= 16 && w % 16 == 0
            && (n * h / 2 * w / 2) % 16 == 0
    }

    /// Scratch one call holds at most, in bytes: U made per call (F16 / BF16 weights), and one
    /// chunk's V and M (at least two tile rows of an image `width` wide).
    static func scratchBytes(cin: Int, cout: Int, width: Int) -> Int {
        16 * cin * cout * 4 + max(chunkBytes, 64 * (cin + cout) * width)
    }

    /// The V and M of a chunk of tiles: about 4 MB, near the caches.
    static let chunkBytes = 4 << 20

    /// y [n, cout, h, w] = conv(x [n, cin, h, w]) + bias, with `u` the layer's 16 packed U matrices.
    static func run(x: Tensor, y: Tensor, u: PackedView, bias: UnsafePointer<Float>?, cin: Int, cout: Int, threads: Int) throws {
        let h = x.h, w = x.w, th = h / 2, tw = w / 2
        let tileRows = x.n * th
        // A chunk's V and M take 64 bytes per (channel, tile).
        let wantTiles = max(64, chunkBytes / (64 * (cin + cout)))
        // Whole 16-tile panels per chunk: an even number of rows when a row has 8 tiles.
        let rowStep = tw % 16 == 0 ? 1 : 2
        let chunkRows = min(tileRows, max(rowStep, wantTiles / tw / rowStep * rowStep))
        let maxTiles = chunkRows * tw
        let v = try FloatBuffer(count: 16 * cin * maxTiles), m = try FloatBuffer(count: 16 * cout * maxTiles)
        var r0 = 0
        while r0 < tileRows {
            let rows = min(chunkRows, tileRows - r0), tiles = rows * tw
            let plane = Plane(h: h, w: w, th: th, tw: tw, r0: r0, tiles: tiles)
            // Bᵀ d B into V_ξ, gemm's B panels (16 tiles × k, by gemm's k blocks).
            let groups = (cin + 15) / 16
            parallelFor(rows * groups, threads: threads) { job in
                let r = job / groups, c0 = (job % groups) * 16
                transformInput(x: UnsafePointer(x.data), plane: plane, row: r, channels: c0..<min(cin, c0 + 16), cin: cin,
                               into: v.pointer)
            }
            // M_ξ = U_ξ · V_ξ, 16 gemms as one set of tiles.
            let plan = GEMMPlan(m: cout, n: tiles, k: cin, problems: 16)
            let kc = gemmDepth(cin)
            // bf16: V is rounded to pairs per tile into a slab of the thread's scratch.
            let slab = u.pairs ? plan.bSlabFloats : 0
            let scratch = slab > 0 ? try FloatBuffer(count: parallelSlots(16 * plan.jobs, threads: threads) * slab) : nil
            parallelFor(16 * plan.jobs, threads: threads) { job, slot in
                let xi = job / plan.jobs
                let b = PackedView(storage: UnsafeMutableRawPointer(v.pointer + xi * cin * tiles), dtype: .f32, k: cin,
                                   panel: MicroKernel.cols, kc: kc, paddedWidth: tiles)
                let out = GEMMOutput(c: m.pointer + xi * cout * tiles, ldc: tiles, n: tiles)
                gemmTile(plan, job % plan.jobs, a: u.matrix(xi), b: b, out: out, bias: .none,
                         bScratch: scratch.map { $0.pointer + slot * slab })
            }
            withExtendedLifetime(scratch) {}
            // Aᵀ M A (+ bias) into the output pixels.
            parallelFor(cout * rows, threads: threads) { job in
                let co = job / rows, r = job % rows
                transformOutput(m: UnsafePointer(m.pointer), plane: plane, row: r, co: co, cout: cout,
                                bias: bias?[co] ?? 0, into: y.data)
            }
            r0 += rows
        }
        withExtendedLifetime((v, m)) {}
    }

    /// One chunk's geometry: tile rows r0 ..< r0 + tiles / tw of all images (tile row R is image
    /// R / th, row R % th); tile (R, tx) is column (R − r0) · tw + tx of V and M.
    struct Plane {
        let h: Int, w: Int, th: Int, tw: Int, r0: Int, tiles: Int
    }

    /// V_ξ for tile row `row` of the chunk and some input channels. With the zero-padded input row
    /// p[u] = x[u − 1], tile tx reads p[2tx ... 2tx + 3] = e[tx], o[tx], e[tx + 1], o[tx + 1] where
    /// e[j] = x[2j − 1] and o[j] = x[2j]: so after de-interleaving each row the column transform is
    /// four vector operations on unaligned loads.
    @inline(__always)
    private static func transformInput(x: UnsafePointer<Float>, plane: Plane, row: Int, channels: Range<Int>, cin: Int,
                                       into v: UnsafeMutablePointer<Float>) {
        let h = plane.h, w = plane.w, tw = plane.tw, R = plane.r0 + row
        let image = R / plane.th, y0 = 2 * (R % plane.th) - 1
        let stride = tw + 8  // room for 8-lane loads at tx + 1 ≤ tw
        let kc = gemmDepth(cin), tiles = plane.tiles, matrix = cin * tiles
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 8 * stride) { buffer in
            let t = buffer.baseAddress!
            t.initialize(repeating: 0, count: 8 * stride)
            for ci in channels {
                // e and o of the 4 input rows (rows outside the image are zero).
                for r in 0..<4 {
                    let e = t + (2 * r) * stride, o = e + stride
                    let y = y0 + r
                    guard y >= 0 && y < h else {
                        e.update(repeating: 0, count: tw + 1); o.update(repeating: 0, count: tw + 1)
                        continue
                    }
                    let src = x + ((image * cin + ci) * h + y) * w
                    e[0] = 0
                    var j = 0
                    while j < tw {  // 16 inputs -> 8 even (o), 8 odd (e): two shuffles
                        let a = load(src + 2 * j), b = load(src + 2 * j + 8)
                        store(V8(a[0], a[2], a[4], a[6], b[0], b[2], b[4], b[6]), o + j)
                        store(V8(a[1], a[3], a[5], a[7], b[1], b[3], b[5], b[7]), e + j + 1)
                        j += 8
                    }
                    o[tw] = 0
                }
                // Row transform Bᵀ d, on e and o alike: (d0 − d2, d1 + d2, d2 − d1, d1 − d3).
                var j = 0
                while j <= tw {
                    for half in 0..<2 {
                        let p = t + half * stride + j
                        let d0 = load(p), d1 = load(p + 2 * stride), d2 = load(p + 4 * stride), d3 = load(p + 6 * stride)
                        store(d0 - d2, p); store(d1 + d2, p + 2 * stride)
                        store(d2 - d1, p + 4 * stride); store(d1 - d3, p + 6 * stride)
                    }
                    j += 8
                }
                // Column transform and the stores into V_ξ's panels.
                let k0 = ci / kc * kc, depth = min(kc, cin - k0)
                let at = v + k0 * tiles + (ci - k0) * 16
                var tx0 = 0
                while tx0 < tw {
                    let l = row * tw + tx0  // a multiple of 8: half of panel l / 16
                    let dst = at + (l / 16) * 16 * depth + l % 16
                    for i in 0..<4 {
                        let e = t + (2 * i) * stride + tx0, o = e + stride
                        let e0 = load(e), e1 = load(e + 1), o0 = load(o), o1 = load(o + 1)
                        store(e0 - e1, dst + (4 * i) * matrix)
                        store(o0 + e1, dst + (4 * i + 1) * matrix)
                        store(e1 - o0, dst + (4 * i + 2) * matrix)
                        store(o0 - o1, dst + (4 * i + 3) * matrix)
                    }
                    tx0 += 8
                }
            }
        }
    }

    /// Output channel `co` of tile row `row`: Aᵀ M A per tile, written as two output rows.
    @inline(__always)
    private static func transformOutput(m: UnsafePointer<Float>, plane: Plane, row: Int, co: Int, cout: Int, bias: Float,
                                        into y: UnsafeMutablePointer<Float>) {
        let h = plane.h, w = plane.w, tw = plane.tw, R = plane.r0 + row
        let image = R / plane.th, oy = 2 * (R % plane.th)
        let tiles = plane.tiles, matrix = cout * tiles
        let top = y + ((image * cout + co) * h + oy) * w, bottom = top + w
        let b = V8(repeating: bias)
        var tx0 = 0
        while tx0 < tw {
            let src = m + co * tiles + row * tw + tx0
            @inline(__always) func q(_ xi: Int) -> V8 { load(src + xi * matrix) }
            // Aᵀ M: s = m0 + m1 + m2, d = m1 − m2 − m3 (rows), then the same on columns.
            var s = (V8(), V8(), V8(), V8()), d = (V8(), V8(), V8(), V8())
            s.0 = q(0) + q(4) + q(8); d.0 = q(4) - q(8) - q(12)
            s.1 = q(1) + q(5) + q(9); d.1 = q(5) - q(9) - q(13)
            s.2 = q(2) + q(6) + q(10); d.2 = q(6) - q(10) - q(14)
            s.3 = q(3) + q(7) + q(11); d.3 = q(7) - q(11) - q(15)
            let y00 = s.0 + s.1 + s.2 + b, y01 = s.1 - s.2 - s.3 + b
            let y10 = d.0 + d.1 + d.2 + b, y11 = d.1 - d.2 - d.3 + b
            interleave(y00, y01, into: top + 2 * tx0)
            interleave(y10, y11, into: bottom + 2 * tx0)
            tx0 += 8
        }
    }

    @inline(__always)
    private static func load(_ p: UnsafePointer<Float>) -> V8 { UnsafeRawPointer(p).loadUnaligned(as: V8.self) }

    @inline(__always)
    private static func store(_ v: V8, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: V8.self) }

    /// dst[2l] = a[l], dst[2l + 1] = b[l] for l in 0..<8.
    @inline(__always)
    private static func interleave(_ a: V8, _ b: V8, into dst: UnsafeMutablePointer<Float>) {
        store(V8(a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3]), dst)
        store(V8(a[4], b[4], a[5], b[5], a[6], b[6], a[7], b[7]), dst + 8)
    }
}
