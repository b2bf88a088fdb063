/// transformers' `CLIPTextModel`, Stable Diffusion's text encoder: token + position embeddings,
/// pre-LayerNorm transformer layers with causal self-attention (x += attn(ln1(x)); x += mlp(ln2(x)),
/// mlp = fc2(act(fc1(·)))), then the final LayerNorm. No attention mask beyond the causal one (SD
/// pipelines pass none). Weights stay in their stored dtype over the file's mapping; embedding rows
/// are widened as they are looked up.
public final class CLIPTextModel {
    public let config: CLIPTextConfig

    private let tokenEmbedding: StoredTensor      // [vocab, hidden]
    private let positionEmbedding: StoredTensor   // [max positions, hidden]
    private let layers: [CLIPEncoderLayer]
    public var layerCount: Int { layers.count }
    private let finalNorm: LayerNorm

    /// Keys with the `text_model.` prefix (transformers 4.x checkpoints, CLIPTextModelWithProjection)
    /// or without it (transformers 5's CLIPTextModel); which one is decided by the presence of
    /// `text_model.embeddings.token_embedding.weight`. Tensors the model does not use
    /// (`position_ids`, `text_projection.weight`, `logit_scale`, ...) are ignored, whatever their dtype.
    public init(config: CLIPTextConfig, weights file: SafeTensorsFile) throws {
        try config.validate()
        self.config = config
        let prefixed = file.dtypeName("text_model.embeddings.token_embedding.weight") != nil
        let w = WeightLoader(file: file, prefix: prefixed ? "text_model." : "")
        let d = config.hiddenSize, eps = config.layerNormEps
        tokenEmbedding = try w.stored("embeddings.token_embedding.weight", [config.vocabSize, d])
        positionEmbedding = try w.stored("embeddings.position_embedding.weight", [config.maxPositionEmbeddings, d])
        layers = try (0..<config.numHiddenLayers).map { i in
            let p = "encoder.layers.\(i)"
            return CLIPEncoderLayer(
                norm1: try w.layerNorm("\(p).layer_norm1", channels: d, eps: eps),
                attention: try MultiHeadAttention(w, "\(p).self_attn", dim: d, contextDim: d, heads: config.numAttentionHeads,
                                                  projectionBias: true, causal: true,
                                                  names: ("q_proj", "k_proj", "v_proj", "out_proj")),
                norm2: try w.layerNorm("\(p).layer_norm2", channels: d, eps: eps),
                fc1: try w.linear("\(p).mlp.fc1", inFeatures: d, outFeatures: config.intermediateSize),
                fc2: try w.linear("\(p).mlp.fc2", inFeatures: config.intermediateSize, outFeatures: d),
                activation: config.hiddenAct)
        }
        finalNorm = try w.layerNorm("final_layer_norm", channels: d, eps: eps)
    }

    /// Width of the text states (the UNet's cross_attention_dim).
    public var hiddenSize: Int { config.hiddenSize }

    /// The longest token sequence the model takes (max_position_embeddings; 77 for SD).
    public var maxLength: Int { config.maxPositionEmbeddings }

    /// Text states [n, L, hidden] of `n` token sequences of equal length L = ids.count / n
    /// (row-major: sequence 0's L ids first). `clipSkip` k ≥ 1 is diffusers' clip_skip: the hidden
    /// states of layer count − k (`hidden_states[-(k + 1)]`), then the final LayerNorm; nil or 0
    /// runs every layer. Any thread count gives the same bytes.
    public func encode(ids: [Int], count n: Int, clipSkip: Int?, threads: Int) throws -> Tokens {
        guard n >= 1, !ids.isEmpty, ids.count % n == 0 else {
            throw DiffusionError(.invalidArgument, "\(ids.count) token ids cannot be split into \(n) sequences of equal, non-zero length")
        }
        let length = ids.count / n
        guard length <= config.maxPositionEmbeddings else {
            throw DiffusionError(.invalidArgument, "token sequences of length \(length) exceed the text encoder's \(config.maxPositionEmbeddings) positions")
        }
        let vocab = config.vocabSize
        if let bad = ids.firstIndex(where: { $0 < 0 || $0 >= vocab }) {
            throw DiffusionError(.invalidArgument, "token id \(ids[bad]) (sequence \(bad / length), position \(bad % length)) is outside the vocabulary [0, \(vocab))")
        }
        let skip = clipSkip ?? 0
        // clip_skip = layers is diffusers' hidden_states[0]: the embeddings through the final LayerNorm.
        guard skip >= 0, skip <= layers.count else {
            throw DiffusionError(.invalidArgument, "clip_skip \(skip) is out of range: the text encoder has \(layers.count) layers (clip_skip 0...\(layers.count))")
        }

        let d = config.hiddenSize
        let x = try Tokens(n: n, length: length, width: d)
        let positions = try FloatBuffer(count: length * d)
        positionEmbedding.widenRows(0, length, into: positions.pointer)
        let table = tokenEmbedding, pos = positions.pointer, out = x.data
        ids.withUnsafeBufferPointer { idp in
            parallelFor(n * length, threads: threads) { r in
                let row = out + r * d, p = pos + (r % length) * d
                table.widenRows(idp[r], 1, into: row)
                for i in 0..<d { row[i] += p[i] }
            }
        }
        withExtendedLifetime(positions) {}

        for layer in layers[0..<(layers.count - skip)] { try layer(x, threads: threads) }
        finalNorm.apply(x.data, rows: x.rows, into: x.data, threads: threads)
        return x
    }
}

/// transformers' `CLIPEncoderLayer`.
struct CLIPEncoderLayer {
    let norm1: LayerNorm
    let attention: MultiHeadAttention
    let norm2: LayerNorm
    let fc1: Linear, fc2: Linear
    let activation: Activation

    /// Updates `x` [n, L, hidden] in place.
    func callAsFunction(_ x: Tokens, threads: Int) throws {
        let a = try attention(try norm1(x, threads: threads), context: nil, threads: threads)
        addInPlace(x.data, a.data, count: x.count)
        let h = try norm2(x, threads: threads)
        let inner = try Tokens(n: x.n, length: x.length, width: fc1.outFeatures)
        try fc1.apply(h.data, rows: h.rows, into: inner.data, threads: threads)
        activation.apply(inner.data, count: inner.count, threads: threads)
        let y = try Tokens(n: x.n, length: x.length, width: x.width)
        try fc2.apply(inner.data, rows: inner.rows, into: y.data, threads: threads)
        addInPlace(x.data, y.data, count: x.count)
    }
}
