/// diffusers' `UNet2DModel` configuration (config.json), with the class's defaults for absent keys.
public struct UNet2DConfig {
    public var sampleHeight: Int? = nil
    public var sampleWidth: Int? = nil
    public var inChannels = 3
    public var outChannels = 3
    public var centerInputSample = false
    public var timeEmbeddingDim: Int? = nil
    public var freqShift = 0
    public var flipSinToCos = true
    public var downBlockTypes = ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]
    public var midBlockType: String? = "UNetMidBlock2D"
    public var upBlockTypes = ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    public var blockOutChannels = [224, 448, 672, 896]
    public var layersPerBlock = 2
    public var midBlockScaleFactor = 1.0
    public var downsamplePadding = 1
    public var attentionHeadDim: Int? = 8
    public var normNumGroups: Int? = 32
    public var attnNormNumGroups: Int? = nil
    public var normEps = 1e-5
    public var resnetTimeScaleShift = "default"
    public var addAttention = true
    public var classEmbedType: String? = nil
    public var numClassEmbeds: Int? = nil
    /// libdiffusion's extension key `_null_class_label`: the class label trained as "no class"
    /// (label dropout), which makes classifier-free guidance possible. diffusers ignores keys
    /// starting with "_".
    public var nullClassLabel: Int? = nil

    public static let downTypes: Set = ["DownBlock2D", "AttnDownBlock2D"]
    public static let upTypes: Set = ["UpBlock2D", "AttnUpBlock2D"]

    public init() {}

    /// Decodes and checks a config.json object; anything this version cannot run is refused with
    /// the key and value named.
    public init(json: JSONValue) throws {
        guard case .object = json else { throw DiffusionError(.invalidFile, "config.json is not a JSON object") }
        let r = ConfigReader(json)
        if let v = json["_class_name"], let name = v.stringValue, name != "UNet2DModel" {
            throw DiffusionError(.unsupported, "_class_name \"\(name)\" is not supported (expected \"UNet2DModel\")")
        }
        if let (h, w) = try r.sampleSize() { sampleHeight = h; sampleWidth = w }
        inChannels = try r.int("in_channels", inChannels, min: 1)
        outChannels = try r.int("out_channels", outChannels, min: 1)
        centerInputSample = try r.bool("center_input_sample", centerInputSample)
        let timeType = try r.string("time_embedding_type", "positional")
        guard timeType == "positional" else { throw r.unsupported("time_embedding_type", timeType) }
        timeEmbeddingDim = try r.optionalInt("time_embedding_dim", min: 1)
        freqShift = try r.int("freq_shift", freqShift, min: Int.min)
        flipSinToCos = try r.bool("flip_sin_to_cos", flipSinToCos)
        downBlockTypes = try r.strings("down_block_types", downBlockTypes)
        midBlockType = try r.optionalString("mid_block_type", midBlockType)
        upBlockTypes = try r.strings("up_block_types", upBlockTypes)
        blockOutChannels = try r.ints("block_out_channels", blockOutChannels)
        layersPerBlock = try r.int("layers_per_block", layersPerBlock, min: 1)
        midBlockScaleFactor = try r.double("mid_block_scale_factor", midBlockScaleFactor)
        downsamplePadding = try r.int("downsample_padding", downsamplePadding, min: 0)
        // Padding p makes a stride-2 3x3 conv give H/2 + p - 1 rows: only 0 (diffusers pads one
        // row and column instead) and 1 give the H/2 that the skip connections need.
        guard downsamplePadding <= 1 else {
            throw DiffusionError(.unsupported, "downsample_padding \(downsamplePadding) is not supported: only 0 and 1 halve the sample, as the skip connections need")
        }
        let downType = try r.string("downsample_type", "conv")
        guard downType == "conv" else { throw r.unsupported("downsample_type", downType) }
        let upType = try r.string("upsample_type", "conv")
        guard upType == "conv" else { throw r.unsupported("upsample_type", upType) }
        _ = try r.double("dropout", 0)
        let act = try r.string("act_fn", "silu")
        guard act == "silu" || act == "swish" else { throw r.unsupported("act_fn", act) }
        attentionHeadDim = try r.optionalInt("attention_head_dim", min: 1, default: attentionHeadDim)
        normNumGroups = try r.optionalInt("norm_num_groups", min: 1, default: normNumGroups)
        attnNormNumGroups = try r.optionalInt("attn_norm_num_groups", min: 1)
        normEps = try r.double("norm_eps", normEps)
        resnetTimeScaleShift = try r.string("resnet_time_scale_shift", resnetTimeScaleShift)
        guard ["default", "scale_shift"].contains(resnetTimeScaleShift) else {
            throw r.unsupported("resnet_time_scale_shift", resnetTimeScaleShift)
        }
        addAttention = try r.bool("add_attention", addAttention)
        classEmbedType = try r.optionalString("class_embed_type", nil)
        if let c = classEmbedType, c != "timestep" { throw r.unsupported("class_embed_type", c) }
        numClassEmbeds = try r.optionalInt("num_class_embeds", min: 1)
        nullClassLabel = try r.optionalInt("_null_class_label", min: 0)
        try validate()
    }

    func validate() throws {
        let levels = blockOutChannels.count
        guard levels >= 1, blockOutChannels.allSatisfy({ $0 >= 1 && $0 <= 65536 }) else {
            throw DiffusionError(.unsupported, "block_out_channels \(blockOutChannels) must be 1 or more positive channel counts")
        }
        guard downBlockTypes.count == levels else {
            throw DiffusionError(.invalidFile, "down_block_types has \(downBlockTypes.count) entries but block_out_channels has \(levels)")
        }
        guard upBlockTypes.count == levels else {
            throw DiffusionError(.invalidFile, "up_block_types has \(upBlockTypes.count) entries but block_out_channels has \(levels)")
        }
        for t in downBlockTypes where !Self.downTypes.contains(t) {
            throw DiffusionError(.unsupported, "down_block_types: block type \"\(t)\" is not supported (supported: DownBlock2D, AttnDownBlock2D)")
        }
        for t in upBlockTypes where !Self.upTypes.contains(t) {
            throw DiffusionError(.unsupported, "up_block_types: block type \"\(t)\" is not supported (supported: UpBlock2D, AttnUpBlock2D)")
        }
        if let m = midBlockType, m != "UNetMidBlock2D" {
            throw DiffusionError(.unsupported, "mid_block_type \"\(m)\" is not supported (supported: UNetMidBlock2D or null)")
        }
        guard inChannels <= 4096, outChannels <= 4096, layersPerBlock <= 64 else {
            throw DiffusionError(.unsupported, "in_channels/out_channels/layers_per_block out of range")
        }
        let groups = normNumGroups ?? min(blockOutChannels[0] / 4, 32)
        for c in blockOutChannels where groups < 1 || c % groups != 0 {
            throw DiffusionError(.unsupported, "norm_num_groups \(groups) does not divide block_out_channels entry \(c)")
        }
        // Every attention block splits its channels into heads: down and up blocks at their
        // level's width (up blocks run the levels in reverse), the mid block at the last.
        if let d = attentionHeadDim {
            var sites = downBlockTypes.indices.filter { downBlockTypes[$0].hasPrefix("Attn") }.map { ($0, "down_blocks.\($0)") }
            sites += upBlockTypes.indices.filter { upBlockTypes[$0].hasPrefix("Attn") }.map { (levels - 1 - $0, "up_blocks.\($0)") }
            if midBlockType != nil && addAttention { sites.append((levels - 1, "mid_block")) }
            for (level, block) in sites where blockOutChannels[level] % d != 0 {
                throw DiffusionError(.unsupported, "attention_head_dim \(d) does not divide \(block)'s \(blockOutChannels[level]) channels (block_out_channels[\(level)])")
            }
        }
        if let c = numClassEmbeds, c > 1_000_000 {
            throw DiffusionError(.unsupported, "num_class_embeds \(c) is out of range")
        }
        if let null = nullClassLabel {
            guard classEmbedType == nil, let k = numClassEmbeds, null < k else {
                throw DiffusionError(.invalidFile, "_null_class_label \(null) must be a label of the class embedding (num_class_embeds is \(numClassEmbeds.map(String.init) ?? "null"))")
            }
        }
        if !(normEps > 0 && normEps < 1) {
            throw DiffusionError(.unsupported, "norm_eps \(normEps) is out of range")
        }
    }

    /// Refuses labels outside the class embedding's table.
    public func checkClassLabels(_ labels: [Int]) throws {
        guard let k = numClassEmbeds, classEmbedType == nil else { return }
        for l in labels where l < 0 || l >= k {
            throw DiffusionError(.invalidArgument, "class label \(l) is out of range [0, \(k))")
        }
    }

    public var timeEmbedDim: Int { timeEmbeddingDim ?? blockOutChannels[0] * 4 }
    public var hasClassEmbedding: Bool { classEmbedType == "timestep" || numClassEmbeds != nil }

    /// The configuration with every default filled in, in diffusers' key names.
    public var json: JSONValue {
        func n(_ v: Int?) -> JSONValue { v.map { .number(Double($0)) } ?? .null }
        func s(_ v: String?) -> JSONValue { v.map { .string($0) } ?? .null }
        let sample: JSONValue
        if let h = sampleHeight, let w = sampleWidth {
            sample = h == w ? .number(Double(h)) : .array([.number(Double(h)), .number(Double(w))])
        } else { sample = .null }
        return .object([
            ("_class_name", .string("UNet2DModel")),
            ("sample_size", sample),
            ("in_channels", n(inChannels)),
            ("out_channels", n(outChannels)),
            ("center_input_sample", .bool(centerInputSample)),
            ("time_embedding_type", .string("positional")),
            ("time_embedding_dim", n(timeEmbeddingDim)),
            ("freq_shift", n(freqShift)),
            ("flip_sin_to_cos", .bool(flipSinToCos)),
            ("down_block_types", .array(downBlockTypes.map { .string($0) })),
            ("mid_block_type", s(midBlockType)),
            ("up_block_types", .array(upBlockTypes.map { .string($0) })),
            ("block_out_channels", .array(blockOutChannels.map { .number(Double($0)) })),
            ("layers_per_block", n(layersPerBlock)),
            ("mid_block_scale_factor", .number(midBlockScaleFactor)),
            ("downsample_padding", n(downsamplePadding)),
            ("downsample_type", .string("conv")),
            ("upsample_type", .string("conv")),
            ("act_fn", .string("silu")),
            ("attention_head_dim", n(attentionHeadDim)),
            ("norm_num_groups", n(normNumGroups)),
            ("attn_norm_num_groups", n(attnNormNumGroups)),
            ("norm_eps", .number(normEps)),
            ("resnet_time_scale_shift", .string(resnetTimeScaleShift)),
            ("add_attention", .bool(addAttention)),
            ("class_embed_type", s(classEmbedType)),
            ("num_class_embeds", n(numClassEmbeds)),
            ("_null_class_label", n(nullClassLabel)),
        ])
    }
}
