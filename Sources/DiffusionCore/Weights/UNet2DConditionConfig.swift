/// diffusers' `UNet2DConditionModel` configuration (config.json), with the class's defaults for
/// absent keys (configs written by diffusers 0.6 carry only the keys of that time). Anything this
/// version cannot run (SDXL's addition embeddings, LCM's time condition, other block types, ...)
/// is refused naming key and value.
public struct UNet2DConditionConfig {
    public var sampleHeight: Int? = nil, sampleWidth: Int? = nil
    public var inChannels = 4, outChannels = 4
    public var centerInputSample = false
    public var flipSinToCos = true
    public var freqShift = 0
    public var downBlockTypes = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    public var midBlockType: String? = "UNetMidBlock2DCrossAttn"
    public var upBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    public var blockOutChannels = [320, 640, 1280, 1280]
    /// Per down block (up blocks use the reverse, plus one).
    public var layersPerBlock = [2, 2, 2, 2]
    public var downsamplePadding = 1
    public var midBlockScaleFactor = 1.0
    public var normNumGroups = 32
    public var normEps = 1e-5
    public var crossAttentionDim = 1280
    /// Per down block.
    public var transformerLayersPerBlock = [1, 1, 1, 1]
    /// diffusers' `attention_head_dim`, which UNet2DConditionModel uses as the number of heads
    /// (a naming accident kept for compatibility), per down block.
    public var attentionHeads = [8, 8, 8, 8]
    public var useLinearProjection = false
    public var upcastAttention = false
    public var resnetTimeScaleShift = "default"
    public var timeEmbeddingDim: Int? = nil

    static let downTypes: Set = ["CrossAttnDownBlock2D", "DownBlock2D"]
    static let upTypes: Set = ["CrossAttnUpBlock2D", "UpBlock2D"]

    public init() {}

    public init(json: JSONValue) throws {
        guard case .object = json else { throw DiffusionError(.invalidFile, "config.json is not a JSON object") }
        let r = ConfigReader(json)
        if let (h, w) = try r.sampleSize() { sampleHeight = h; sampleWidth = w }
        inChannels = try r.int("in_channels", inChannels, min: 1)
        outChannels = try r.int("out_channels", outChannels, min: 1)
        centerInputSample = try r.bool("center_input_sample", centerInputSample)
        flipSinToCos = try r.bool("flip_sin_to_cos", flipSinToCos)
        freqShift = try r.int("freq_shift", freqShift, min: -65536)
        downBlockTypes = try r.strings("down_block_types", downBlockTypes)
        midBlockType = try r.optionalString("mid_block_type", midBlockType)
        upBlockTypes = try r.strings("up_block_types", upBlockTypes)
        blockOutChannels = try r.ints("block_out_channels", blockOutChannels)
        let levels = blockOutChannels.count
        layersPerBlock = try r.intOrList("layers_per_block", 2, count: levels, min: 1)
        downsamplePadding = try r.int("downsample_padding", downsamplePadding, min: 0)
        // Padding p makes a stride-2 3x3 conv give H/2 + p - 1 rows: only 0 (diffusers pads one
        // row and column instead) and 1 give the H/2 that the skip connections need.
        guard downsamplePadding <= 1 else {
            throw DiffusionError(.unsupported, "downsample_padding \(downsamplePadding) is not supported: only 0 and 1 halve the sample, as the skip connections need")
        }
        midBlockScaleFactor = try r.double("mid_block_scale_factor", midBlockScaleFactor)
        _ = try r.double("dropout", 0)
        let act = try r.string("act_fn", "silu")
        guard act == "silu" || act == "swish" else { throw r.unsupported("act_fn", act) }
        guard let groups = try r.optionalInt("norm_num_groups", min: 1, default: normNumGroups) else {
            throw DiffusionError(.unsupported, "norm_num_groups null is not supported")
        }
        normNumGroups = groups
        normEps = try r.double("norm_eps", normEps)
        let cross = try r.intOrList("cross_attention_dim", 1280, count: levels, min: 1)
        guard Set(cross).count == 1 else {
            throw DiffusionError(.unsupported, "cross_attention_dim \(cross) differs between blocks; not supported")
        }
        crossAttentionDim = cross[0]
        transformerLayersPerBlock = try r.intOrList("transformer_layers_per_block", 1, count: levels, min: 1)
        attentionHeads = try r.intOrList("attention_head_dim", 8, count: levels, min: 1)
        if let v = json["num_attention_heads"], !v.isNull {
            // diffusers itself raises for it (the naming issue of attention_head_dim).
            throw DiffusionError(.unsupported, "num_attention_heads \(v.serialized) is not supported (diffusers refuses it too; attention_head_dim gives the head count)")
        }
        useLinearProjection = try r.bool("use_linear_projection", useLinearProjection)
        upcastAttention = try r.bool("upcast_attention", upcastAttention)
        resnetTimeScaleShift = try r.string("resnet_time_scale_shift", resnetTimeScaleShift)
        guard ["default", "scale_shift"].contains(resnetTimeScaleShift) else {
            throw r.unsupported("resnet_time_scale_shift", resnetTimeScaleShift)
        }
        timeEmbeddingDim = try r.optionalInt("time_embedding_dim", min: 2)
        // Keys whose non-default values select machinery this version does not have.
        try r.requireDefault("time_embedding_type", "positional")
        try r.requireFalse("only_cross_attention")
        try r.requireFalse("dual_cross_attention")
        try r.requireFalse("class_embeddings_concat")
        try r.requireFalse("mid_block_only_cross_attention")
        try r.requireFalse("resnet_skip_time_act")
        try r.requireDefault("attention_type", "default")
        try r.requireDefault("conv_in_kernel", 3)
        try r.requireDefault("conv_out_kernel", 3)
        try r.requireDefault("resnet_out_scale_factor", 1)
        for key in ["encoder_hid_dim", "encoder_hid_dim_type", "class_embed_type", "addition_embed_type",
                    "addition_time_embed_dim", "num_class_embeds", "time_embedding_act_fn", "timestep_post_act",
                    "time_cond_proj_dim", "projection_class_embeddings_input_dim", "cross_attention_norm",
                    "reverse_transformer_layers_per_block"] {
            try r.requireNull(key)
        }
        try validate()
    }

    func validate() throws {
        let levels = blockOutChannels.count
        guard levels >= 1, levels <= 8, blockOutChannels.allSatisfy({ $0 >= 1 && $0 <= 65536 }) else {
            throw DiffusionError(.unsupported, "block_out_channels \(blockOutChannels) must be 1 to 8 positive channel counts")
        }
        guard downBlockTypes.count == levels, upBlockTypes.count == levels else {
            throw DiffusionError(.invalidFile, "down_block_types (\(downBlockTypes.count)) and up_block_types (\(upBlockTypes.count)) must have one entry per block_out_channels entry (\(levels))")
        }
        for t in downBlockTypes where !Self.downTypes.contains(t) {
            throw DiffusionError(.unsupported, "down_block_types: block type \"\(t)\" is not supported (supported: CrossAttnDownBlock2D, DownBlock2D)")
        }
        for t in upBlockTypes where !Self.upTypes.contains(t) {
            throw DiffusionError(.unsupported, "up_block_types: block type \"\(t)\" is not supported (supported: CrossAttnUpBlock2D, UpBlock2D)")
        }
        if let m = midBlockType, m != "UNetMidBlock2DCrossAttn" {
            throw DiffusionError(.unsupported, "mid_block_type \"\(m)\" is not supported (supported: UNetMidBlock2DCrossAttn or null)")
        }
        guard inChannels <= 4096, outChannels <= 4096, layersPerBlock.allSatisfy({ $0 <= 64 }),
              transformerLayersPerBlock.allSatisfy({ $0 <= 64 }), crossAttentionDim <= 65536,
              attentionHeads.allSatisfy({ $0 <= 4096 }) else {
            throw DiffusionError(.unsupported, "in_channels, out_channels, layers, heads or cross_attention_dim out of range")
        }
        for c in blockOutChannels where c % normNumGroups != 0 {
            throw DiffusionError(.unsupported, "norm_num_groups \(normNumGroups) does not divide block_out_channels entry \(c)")
        }
        // Every attention block splits its channels into heads evenly (down i, mid, up i reversed).
        let rc = Array(blockOutChannels.reversed()), rh = Array(attentionHeads.reversed())
        for i in 0..<levels {
            if downBlockTypes[i] == "CrossAttnDownBlock2D", blockOutChannels[i] % attentionHeads[i] != 0 {
                throw DiffusionError(.unsupported, "attention_head_dim (heads) \(attentionHeads[i]) does not divide block_out_channels[\(i)] = \(blockOutChannels[i])")
            }
            if upBlockTypes[i] == "CrossAttnUpBlock2D", rc[i] % rh[i] != 0 {
                throw DiffusionError(.unsupported, "attention_head_dim (heads) \(rh[i]) does not divide up block \(i)'s \(rc[i]) channels")
            }
        }
        if midBlockType != nil, blockOutChannels[levels - 1] % attentionHeads[levels - 1] != 0 {
            throw DiffusionError(.unsupported, "attention_head_dim (heads) \(attentionHeads[levels - 1]) does not divide the mid block's \(blockOutChannels[levels - 1]) channels")
        }
        if !(normEps > 0 && normEps < 1) { throw DiffusionError(.unsupported, "norm_eps \(normEps) is out of range") }
        guard midBlockScaleFactor.isFinite, midBlockScaleFactor != 0 else {
            throw DiffusionError(.unsupported, "mid_block_scale_factor \(midBlockScaleFactor) is out of range")
        }
        guard outChannels <= inChannels else {
            throw DiffusionError(.unsupported, "out_channels \(outChannels) exceeds in_channels \(inChannels): the extra input channels are conditioning (inpainting: 9 in, 4 out)")
        }
    }

    public var timeEmbedDim: Int { timeEmbeddingDim ?? blockOutChannels[0] * 4 }

    /// Input channels beyond x_t's (inpainting: mask + masked-image latents).
    public var extraChannels: Int { inChannels - outChannels }

    public var json: JSONValue {
        func n(_ v: Int) -> JSONValue { .number(Double(v)) }
        func list(_ a: [Int]) -> JSONValue { .array(a.map(n)) }
        let sample: JSONValue
        if let h = sampleHeight, let w = sampleWidth { sample = h == w ? n(h) : .array([n(h), n(w)]) } else { sample = .null }
        return .object([
            ("_class_name", .string("UNet2DConditionModel")),
            ("sample_size", sample),
            ("in_channels", n(inChannels)), ("out_channels", n(outChannels)),
            ("center_input_sample", .bool(centerInputSample)),
            ("flip_sin_to_cos", .bool(flipSinToCos)), ("freq_shift", n(freqShift)),
            ("down_block_types", .array(downBlockTypes.map { .string($0) })),
            ("mid_block_type", midBlockType.map { .string($0) } ?? .null),
            ("up_block_types", .array(upBlockTypes.map { .string($0) })),
            ("block_out_channels", list(blockOutChannels)),
            ("layers_per_block", list(layersPerBlock)),
            ("downsample_padding", n(downsamplePadding)),
            ("mid_block_scale_factor", .number(midBlockScaleFactor)),
            ("act_fn", .string("silu")),
            ("norm_num_groups", n(normNumGroups)), ("norm_eps", .number(normEps)),
            ("cross_attention_dim", n(crossAttentionDim)),
            ("transformer_layers_per_block", list(transformerLayersPerBlock)),
            ("attention_head_dim", list(attentionHeads)),
            ("use_linear_projection", .bool(useLinearProjection)),
            ("upcast_attention", .bool(upcastAttention)),
            ("resnet_time_scale_shift", .string(resnetTimeScaleShift)),
            ("time_embedding_dim", timeEmbeddingDim.map(n) ?? .null),
        ])
    }
}
