/// diffusers' `AutoencoderKL` configuration (vae/config.json), with the class's defaults for absent
/// keys (configs written by diffusers 0.6 carry only the keys of that time: no scaling_factor, no
/// quant-conv switches). Anything this version cannot run is refused naming key and value.
public struct AutoencoderKLConfig {
    public var inChannels = 3, outChannels = 3
    public var downBlockTypes = ["DownEncoderBlock2D"]
    public var upBlockTypes = ["UpDecoderBlock2D"]
    public var blockOutChannels = [64]
    /// Resnets per encoder block (decoder blocks have one more).
    public var layersPerBlock = 1
    public var latentChannels = 4
    public var normNumGroups = 32
    /// Side of the image tile of tiled encode / decode (diffusers' `tile_sample_min_size`). A list
    /// [h, w] in the file gives its first entry, as diffusers' tile size does.
    public var sampleSize = 32
    /// Latents of the diffusion model are `scalingFactor * (z - shiftFactor)`; the caller applies
    /// both (the VAE's decode takes z, its encode gives z's distribution).
    public var scalingFactor = 0.18215
    public var shiftFactor: Double? = nil
    public var useQuantConv = true, usePostQuantConv = true
    public var midBlockAddAttention = true

    static let maxChannels = 65536

    public init() {}

    public init(json: JSONValue) throws {
        guard case .object = json else { throw DiffusionError(.invalidFile, "config.json is not a JSON object") }
        let r = ConfigReader(json)
        if let cls = json["_class_name"]?.stringValue, cls != "AutoencoderKL" {
            throw r.unsupported("_class_name", cls)
        }
        inChannels = try r.int("in_channels", inChannels, min: 1)
        outChannels = try r.int("out_channels", outChannels, min: 1)
        downBlockTypes = try r.strings("down_block_types", downBlockTypes)
        upBlockTypes = try r.strings("up_block_types", upBlockTypes)
        blockOutChannels = try r.ints("block_out_channels", blockOutChannels)
        layersPerBlock = try r.int("layers_per_block", layersPerBlock, min: 1)
        let act = try r.string("act_fn", "silu")
        guard act == "silu" || act == "swish" else { throw r.unsupported("act_fn", act) }
        latentChannels = try r.int("latent_channels", latentChannels, min: 1)
        guard let groups = try r.optionalInt("norm_num_groups", min: 1, default: normNumGroups) else {
            throw DiffusionError(.unsupported, "norm_num_groups null is not supported")
        }
        normNumGroups = groups
        if let (h, _) = try r.sampleSize() { sampleSize = h }
        scalingFactor = try r.double("scaling_factor", scalingFactor)
        if let v = json["shift_factor"], !v.isNull {
            guard let d = v.doubleValue, d.isFinite else {
                throw DiffusionError(.invalidFile, "shift_factor must be a number or null, got \(v.serialized)")
            }
            shiftFactor = d
        }
        // Per-channel latent statistics (SDXL-era VAEs of other pipelines): the pipelines this
        // library runs do not use them, so a VAE that has them is not one of ours.
        try r.requireNull("latents_mean")
        try r.requireNull("latents_std")
        // force_upcast only matters for half-precision runs: ignored.
        useQuantConv = try r.bool("use_quant_conv", useQuantConv)
        usePostQuantConv = try r.bool("use_post_quant_conv", usePostQuantConv)
        midBlockAddAttention = try r.bool("mid_block_add_attention", midBlockAddAttention)
        try validate()
    }

    /// Checks a config however it was made (decoded, or built in code from `init()`).
    public func validate() throws {
        let levels = blockOutChannels.count
        guard levels >= 1, levels <= 8, blockOutChannels.allSatisfy({ $0 >= 1 && $0 <= Self.maxChannels }) else {
            throw DiffusionError(.unsupported, "block_out_channels \(blockOutChannels) must be 1 to 8 channel counts in 1...\(Self.maxChannels)")
        }
        guard downBlockTypes.count == levels, upBlockTypes.count == levels else {
            throw DiffusionError(.invalidFile, "down_block_types (\(downBlockTypes.count)) and up_block_types (\(upBlockTypes.count)) must have one entry per block_out_channels entry (\(levels))")
        }
        for t in downBlockTypes where t != "DownEncoderBlock2D" {
            throw DiffusionError(.unsupported, "down_block_types: block type \"\(t)\" is not supported (supported: DownEncoderBlock2D)")
        }
        for t in upBlockTypes where t != "UpDecoderBlock2D" {
            throw DiffusionError(.unsupported, "up_block_types: block type \"\(t)\" is not supported (supported: UpDecoderBlock2D)")
        }
        guard (1...4096).contains(inChannels), (1...4096).contains(outChannels), (1...4096).contains(latentChannels) else {
            throw DiffusionError(.unsupported, "in_channels \(inChannels), out_channels \(outChannels) or latent_channels \(latentChannels) is outside 1...4096")
        }
        guard (1...64).contains(layersPerBlock) else {
            throw DiffusionError(.unsupported, "layers_per_block \(layersPerBlock) is outside 1...64")
        }
        guard normNumGroups >= 1, normNumGroups <= Self.maxChannels else {
            throw DiffusionError(.unsupported, "norm_num_groups \(normNumGroups) is out of range")
        }
        for c in blockOutChannels where c % normNumGroups != 0 {
            throw DiffusionError(.unsupported, "norm_num_groups \(normNumGroups) does not divide block_out_channels entry \(c)")
        }
        guard scalingFactor.isFinite, scalingFactor != 0, abs(scalingFactor) < 1e6, abs(scalingFactor) > 1e-6 else {
            throw DiffusionError(.unsupported, "scaling_factor \(scalingFactor) is out of range")
        }
    }

    /// Pixels per latent along each side: 2^(levels − 1).
    public var downsampleFactor: Int { 1 << (blockOutChannels.count - 1) }

    /// diffusers' `tile_latent_min_size`: int(sample_size / 2^(levels − 1)).
    public var tileLatentSize: Int { sampleSize / downsampleFactor }

    public var json: JSONValue {
        func n(_ v: Int) -> JSONValue { .number(Double(v)) }
        return .object([
            ("_class_name", .string("AutoencoderKL")),
            ("in_channels", n(inChannels)), ("out_channels", n(outChannels)),
            ("down_block_types", .array(downBlockTypes.map { .string($0) })),
            ("up_block_types", .array(upBlockTypes.map { .string($0) })),
            ("block_out_channels", .array(blockOutChannels.map(n))),
            ("layers_per_block", n(layersPerBlock)),
            ("act_fn", .string("silu")),
            ("latent_channels", n(latentChannels)),
            ("norm_num_groups", n(normNumGroups)),
            ("sample_size", n(sampleSize)),
            ("scaling_factor", .number(scalingFactor)),
            ("shift_factor", shiftFactor.map { .number($0) } ?? .null),
            ("use_quant_conv", .bool(useQuantConv)),
            ("use_post_quant_conv", .bool(usePostQuantConv)),
            ("mid_block_add_attention", .bool(midBlockAddAttention)),
        ])
    }
}
