/// Tiled encode and decode with diffusers' `enable_tiling` semantics (AutoencoderKL.tiled_decode and
/// _tiled_encode, diffusers 0.42): the input is cut into tiles of `tile` input elements starting
/// every int(tile × (1 − overlap)); each tile runs through the network on its own; every output tile
/// is blended linearly into the one above (blend_v) and then the one to its left (blend_h) over
/// int(outTile × overlap) rows / columns — the neighbours already blended themselves, as diffusers
/// blends in place — and cropped to its first outTile − blend rows and columns. Memory is bounded by
/// one tile's network pass; the result differs from a whole-image pass near tile borders, as
/// diffusers' does.
extension AutoencoderKL {
    /// diffusers' default `tile_overlap_factor`.
    public static let tileOverlapFactor = 0.25

    /// Tiled `decode` (diffusers' `decode` with use_tiling: latents larger than one tile go through
    /// tiled_decode, smaller ones are decoded whole). `tileLatentSize` (diffusers' tile_latent_min_size) defaults to the config's
    /// sample_size / 2^(levels−1) and `tileSampleSize` (tile_sample_min_size) to sample_size; giving
    /// only one derives the other through the downsample factor.
    public func decodeTiled(_ z: Tensor, tileSampleSize: Int? = nil, tileLatentSize: Int? = nil,
                            overlapFactor: Double = AutoencoderKL.tileOverlapFactor, threads: Int) throws -> Tensor {
        try checkLatents(z)
        let (sampleTile, latentTile) = try tileSizes(sample: tileSampleSize, latent: tileLatentSize, overlap: overlapFactor)
        // Latents within one tile are decoded whole (diffusers' _decode: tiled_decode itself would
        // crop such a tile to tile − blend).
        let f = downsampleFactor
        // One tile's pass, plus the result and two rows of output tiles.
        let tile = decodeWorkingSetBytes(height: min(z.h, latentTile), width: min(z.w, latentTile), batch: z.n, threads: threads)
        let kept = 4 * Double(z.n * config.outChannels) * (Double(z.h * f) * Double(z.w * f) + 2 * Double(sampleTile) * Double(z.w * f))
        try checkMemory(tile + kept, "decoding \(z.n) latent(s) of \(z.h)x\(z.w) in tiles of \(latentTile)")
        guard z.h > latentTile || z.w > latentTile else { return try decodeUnchecked(z, threads: threads) }
        return try tiled(z, inTile: latentTile, outTile: sampleTile, overlap: overlapFactor,
                     outChannels: config.outChannels, outSize: { $0 * f }) { try decodeUnchecked($0, threads: threads) }
    }

    /// Tiled `encode` (diffusers' `encode` with use_tiling: images larger than one tile go through
    /// _tiled_encode, smaller ones are encoded whole): the moments are blended, then split into mean and
    /// clamped logvar. Every image tile, the last ones included, must be at least
    /// 2^(levels−1) pixels on each side (torch fails on smaller ones too).
    public func encodeTiled(_ image: Tensor, tileSampleSize: Int? = nil, tileLatentSize: Int? = nil,
                            overlapFactor: Double = AutoencoderKL.tileOverlapFactor,
                            threads: Int) throws -> (mean: Tensor, logvar: Tensor) {
        try checkImage(image)
        let (sampleTile, latentTile) = try tileSizes(sample: tileSampleSize, latent: tileLatentSize, overlap: overlapFactor)
        let tile = encodeWorkingSetBytes(height: min(image.h, sampleTile), width: min(image.w, sampleTile), batch: image.n,
                                         threads: threads)
        let kept = 4 * Double(image.n * 2 * config.latentChannels) * (Double(image.h) * Double(image.w) + 2 * Double(sampleTile) * Double(image.w))
        try checkMemory(tile + kept, "encoding \(image.n) image(s) of \(image.h)x\(image.w) in tiles of \(sampleTile)")
        guard image.h > sampleTile || image.w > sampleTile else { return try posterior(moments(image, threads: threads)) }
        let step = Self.tileStep(sampleTile, overlapFactor), f = downsampleFactor
        for (size, side) in [(image.h, "height"), (image.w, "width")] {
            let last = size - (size - 1) / step * step   // the last tile's extent
            if min(last, sampleTile) < f {
                throw DiffusionError(.invalidArgument, "tiled encode: image \(side) \(size) with tiles of \(sampleTile) every \(step) pixels leaves a tile of \(min(last, sampleTile)) pixels, fewer than the encoder's \(f)")
            }
        }
        let levels = config.blockOutChannels.count
        let m = try tiled(image, inTile: sampleTile, outTile: latentTile, overlap: overlapFactor,
                      outChannels: 2 * config.latentChannels, outSize: { $0 >> (levels - 1) }) { try moments($0, threads: threads) }
        return try posterior(m)
    }

    /// Whether a decode of latents [batch, latent_channels, height, width] should be tiled: the
    /// latents exceed one default tile (diffusers tiles only then) and the whole-image decode's
    /// estimated peak working memory (`decodeWorkingSetBytes`) exceeds `budget` bytes. A caller that
    /// decodes one image at a time passes batch 1. False when the config's tiles are unusable
    /// (sample_size too small for the number of levels).
    public func decodeNeedsTiling(height: Int, width: Int, batch: Int, budget: Double = 1.5e9,
                                  threads: Int = cpuCount()) -> Bool {
        guard let tiles = try? tileSizes(sample: nil, latent: nil, overlap: Self.tileOverlapFactor),
              height > tiles.latent || width > tiles.latent else { return false }
        return decodeWorkingSetBytes(height: height, width: width, batch: batch, threads: threads) > budget
    }

    /// The same rule for an encode of images [batch, in_channels, height, width] (pixels).
    public func encodeNeedsTiling(height: Int, width: Int, batch: Int, budget: Double = 1.5e9,
                                  threads: Int = cpuCount()) -> Bool {
        guard let tiles = try? tileSizes(sample: nil, latent: nil, overlap: Self.tileOverlapFactor),
              height > tiles.sample || width > tiles.sample else { return false }
        return encodeWorkingSetBytes(height: height, width: width, batch: batch, threads: threads) > budget
    }

    /// int(tile × (1 − overlap)), as Python computes it.
    static func tileStep(_ tile: Int, _ overlap: Double) -> Int { Int(Double(tile) * (1 - overlap)) }

    func tileSizes(sample: Int?, latent: Int?, overlap: Double) throws -> (sample: Int, latent: Int) {
        let f = downsampleFactor, limit = Self.maxSide
        guard overlap.isFinite, overlap >= 0, overlap < 1 else {
            throw DiffusionError(.invalidArgument, "tile overlap factor \(overlap) must be in [0, 1)")
        }
        for (value, name) in [(sample, "tile sample size"), (latent, "tile latent size")] {
            if let v = value, v < 1 || v > limit { throw DiffusionError(.invalidArgument, "\(name) \(v) must be in 1...\(limit)") }
        }
        let s: Int, l: Int
        switch (sample, latent) {
        case let (s0?, l0?): (s, l) = (s0, l0)
        case let (s0?, nil): (s, l) = (s0, s0 / f)
        case let (nil, l0?): (s, l) = (min(l0 * f, limit), l0)
        case (nil, nil): (s, l) = (config.sampleSize, config.tileLatentSize)
        }
        guard l >= 1, Self.tileStep(l, overlap) >= 1, Self.tileStep(s, overlap) >= 1 else {
            throw DiffusionError(.invalidArgument, "tiles of \(s) pixels / \(l) latents with overlap \(overlap) do not advance (sample_size \(config.sampleSize) is too small for \(config.blockOutChannels.count) levels)")
        }
        return (s, l)
    }

    /// The tiling loop shared by encode and decode. `inTile` input elements per tile side, `outTile`
    /// the nominal output tile side (for the blend extent and the crop), `outSize` the network's
    /// output side for an input side, `run` the network.
    func tiled(_ x: Tensor, inTile: Int, outTile: Int, overlap: Double, outChannels: Int, outSize: (Int) -> Int,
               _ run: (Tensor) throws -> Tensor) throws -> Tensor {
        let step = Self.tileStep(inTile, overlap)
        let blend = Int(Double(outTile) * overlap)
        let rowLimit = outTile - blend
        let rows = Array(stride(from: 0, to: x.h, by: step)), cols = Array(stride(from: 0, to: x.w, by: step))
        // Output extent of each tile row / column after the crop.
        let keptH = rows.map { min(rowLimit, outSize(min(inTile, x.h - $0))) }
        let keptW = cols.map { min(rowLimit, outSize(min(inTile, x.w - $0))) }
        let result = try Tensor(n: x.n, c: outChannels, h: keptH.reduce(0, +), w: keptW.reduce(0, +))
        var above: [Tensor] = []
        var y0 = 0
        for (ri, i) in rows.enumerated() {
            var row: [Tensor] = []
            var x0 = 0
            for (cj, j) in cols.enumerated() {
                let tile = try run(try crop(x, top: i, left: j, height: min(inTile, x.h - i), width: min(inTile, x.w - j)))
                if ri > 0 { blendVertical(above[cj], tile, extent: blend) }
                if cj > 0 { blendHorizontal(row[cj - 1], tile, extent: blend) }
                paste(tile, into: result, top: y0, left: x0, height: keptH[ri], width: keptW[cj])
                row.append(tile)
                x0 += keptW[cj]
            }
            above = row
            y0 += keptH[ri]
        }
        return result
    }

    /// x[:, :, top ..< top+height, left ..< left+width] as a new tensor.
    private func crop(_ x: Tensor, top: Int, left: Int, height: Int, width: Int) throws -> Tensor {
        let y = try Tensor(n: x.n, c: x.c, h: height, w: width)
        for plane in 0..<(x.n * x.c) {
            for r in 0..<height {
                (y.data + (plane * height + r) * width).update(from: x.data + plane * x.hw + (top + r) * x.w + left, count: width)
            }
        }
        return y
    }

    /// result[:, :, top ..< top+height, left ..< left+width] = tile[:, :, ..< height, ..< width].
    private func paste(_ tile: Tensor, into result: Tensor, top: Int, left: Int, height: Int, width: Int) {
        for plane in 0..<(tile.n * tile.c) {
            for r in 0..<height {
                (result.data + plane * result.hw + (top + r) * result.w + left)
                    .update(from: tile.data + plane * tile.hw + r * tile.w, count: width)
            }
        }
    }

    /// diffusers' blend_v, in place on b: for y < e = min(a.h, b.h, extent),
    /// b[.., y, :] = a[.., a.h − e + y, :] · (1 − y/e) + b[.., y, :] · (y/e) (weights rounded to
    /// float32, products and sum in float32, as torch computes them). a and b have the same width.
    private func blendVertical(_ a: Tensor, _ b: Tensor, extent: Int) {
        let e = min(a.h, b.h, extent), w = b.w
        guard e > 0, a.w == w, a.c == b.c, a.n == b.n else { return }
        for plane in 0..<(b.n * b.c) {
            for y in 0..<e {
                let t = Double(y) / Double(e)
                let wa = Float(1 - t), wb = Float(t)
                let src = a.data + plane * a.hw + (a.h - e + y) * w, dst = b.data + plane * b.hw + y * w
                for k in 0..<w { dst[k] = src[k] * wa + dst[k] * wb }
            }
        }
    }

    /// diffusers' blend_h, in place on b: the same along columns (a and b have the same height).
    private func blendHorizontal(_ a: Tensor, _ b: Tensor, extent: Int) {
        let e = min(a.w, b.w, extent), h = b.h
        guard e > 0, a.h == h, a.c == b.c, a.n == b.n else { return }
        for plane in 0..<(b.n * b.c) {
            for r in 0..<h {
                let src = a.data + plane * a.hw + r * a.w + (a.w - e), dst = b.data + plane * b.hw + r * b.w
                for x in 0..<e {
                    let t = Double(x) / Double(e)
                    dst[x] = src[x] * Float(1 - t) + dst[x] * Float(t)
                }
            }
        }
    }
}
