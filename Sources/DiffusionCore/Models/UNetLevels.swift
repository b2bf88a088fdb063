/// One level of a U-Net: resnets, each followed by its attention block when the level has them,
/// then the level's resampling convolution (Downsample2D or Upsample2D).
struct UNetLevel<Attention> {
    var resnets: [ResnetBlock2D] = []
    var attentions: [Attention] = []
    var resample: Conv2d? = nil
}

/// The walk UNet2DModel and UNet2DConditionModel share between conv_in and the output norm: down
/// levels pushing every output as a skip, the mid block, up levels concatenating the skips back
/// (the upsampler resizes to the next skip's size: diffusers' upsample_size for sizes that are not
/// multiples of 2^levels). `attend` runs one attention block.
func unetBody<Attention>(_ x: Tensor, down: [UNetLevel<Attention>], mid: (Tensor) throws -> Tensor, up: [UNetLevel<Attention>],
                         emb: [Float], threads: Int, attend: (Attention, Tensor) throws -> Tensor) throws -> Tensor {
    var sample = x
    var skips = [sample]
    for level in down {
        for (j, r) in level.resnets.enumerated() {
            sample = try r(sample, activatedEmb: emb, threads: threads)
            if j < level.attentions.count { sample = try attend(level.attentions[j], sample) }
            skips.append(sample)
        }
        if let conv = level.resample {
            sample = try conv(sample, threads: threads)
            skips.append(sample)
        }
    }
    sample = try mid(sample)
    for level in up {
        for (j, r) in level.resnets.enumerated() {
            sample = try r(try concatChannels(sample, skips.removeLast()), activatedEmb: emb, threads: threads)
            if j < level.attentions.count { sample = try attend(level.attentions[j], sample) }
        }
        if let conv = level.resample, let next = skips.last {
            sample = try conv(try upsampleNearest(sample, h: next.h, w: next.w), threads: threads)
        }
    }
    return sample
}
