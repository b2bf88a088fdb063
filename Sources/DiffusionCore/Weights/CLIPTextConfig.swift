/// transformers' `CLIPTextConfig` (text_encoder/config.json), with the class's defaults for absent
/// keys. Only the keys that shape the network are read; the rest (architectures aside: see below)
/// are ignored, in particular the token ids (bos / eos / pad), which 2022 configs state wrongly:
/// the tokenizer's files are the authority on them.
public struct CLIPTextConfig: Sendable {
    public var vocabSize = 49408
    public var hiddenSize = 512
    public var intermediateSize = 2048
    public var numHiddenLayers = 12
    public var numAttentionHeads = 8
    public var maxPositionEmbeddings = 77
    public var hiddenAct = Activation.quickGelu
    public var layerNormEps = 1e-5

    /// Classes whose weights hold a CLIPTextModel (the projection head of the second is ignored).
    static let architectures: Set = ["CLIPTextModel", "CLIPTextModelWithProjection"]

    public init() {}

    public init(json: JSONValue) throws {
        guard case .object = json else { throw DiffusionError(.invalidFile, "config.json is not a JSON object") }
        let r = ConfigReader(json)
        for name in try r.strings("architectures", []) where !Self.architectures.contains(name) {
            throw DiffusionError(.unsupported, "architectures \"\(name)\" is not supported (supported: CLIPTextModel, CLIPTextModelWithProjection)")
        }
        vocabSize = try r.int("vocab_size", vocabSize, min: 1)
        hiddenSize = try r.int("hidden_size", hiddenSize, min: 1)
        intermediateSize = try r.int("intermediate_size", intermediateSize, min: 1)
        numHiddenLayers = try r.int("num_hidden_layers", numHiddenLayers, min: 1)
        numAttentionHeads = try r.int("num_attention_heads", numAttentionHeads, min: 1)
        maxPositionEmbeddings = try r.int("max_position_embeddings", maxPositionEmbeddings, min: 1)
        let act = try r.string("hidden_act", hiddenAct.rawValue)
        switch act {
        case "quick_gelu": hiddenAct = .quickGelu
        case "gelu": hiddenAct = .gelu   // transformers' GELUActivation: the exact (erf) form
        default: throw DiffusionError(.unsupported, "hidden_act \"\(act)\" is not supported (supported: quick_gelu, gelu)")
        }
        layerNormEps = try r.double("layer_norm_eps", layerNormEps)
        try validate()
    }

    func validate() throws {
        func bound(_ key: String, _ value: Int, _ limit: Int) throws {
            guard value >= 1, value <= limit else {
                throw DiffusionError(.unsupported, "\(key) \(value) is out of range (1...\(limit))")
            }
        }
        try bound("vocab_size", vocabSize, 1 << 20)
        try bound("hidden_size", hiddenSize, 16384)
        try bound("intermediate_size", intermediateSize, 65536)
        try bound("num_hidden_layers", numHiddenLayers, 256)
        try bound("max_position_embeddings", maxPositionEmbeddings, 8192)
        guard numAttentionHeads >= 1, hiddenSize % numAttentionHeads == 0 else {
            throw DiffusionError(.unsupported, "num_attention_heads \(numAttentionHeads) does not divide hidden_size \(hiddenSize)")
        }
        guard layerNormEps > 0, layerNormEps < 1 else {
            throw DiffusionError(.unsupported, "layer_norm_eps \(layerNormEps) is out of range (0, 1)")
        }
        guard hiddenAct == .quickGelu || hiddenAct == .gelu else {
            throw DiffusionError(.unsupported, "hidden_act \"\(hiddenAct.rawValue)\" is not supported (supported: quick_gelu, gelu)")
        }
    }
}
