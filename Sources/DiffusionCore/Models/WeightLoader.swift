/// Builds layers from named tensors, checking each one's shape against the config. Matrices
/// (convolution and linear weights, embedding tables) stay in their stored dtype over the file's
/// mapping; vectors (biases, norm parameters: a tiny fraction of a model) are widened at load.
struct WeightLoader {
    let file: SafeTensorsFile
    /// Prepended to every name (e.g. "text_model." for transformers checkpoints that have it).
    var prefix = ""

    func has(_ name: String) -> Bool { file.info(prefix + name) != nil }

    func stored(_ name: String, _ shape: [Int]) throws -> StoredTensor {
        try file.stored(prefix + name, shape: shape)
    }

    func vector(_ name: String, _ count: Int) throws -> [Float] {
        try stored(name, [count]).floats()
    }

    /// The first of `names` the file has (diffusers renamed some keys over the years; the last
    /// name is the current one and is reported when none is present).
    func name(_ names: [String]) -> String {
        names.dropLast().first(where: has) ?? names.last!
    }

    func conv(_ prefix: String, cin: Int, cout: Int, kernel: Int, stride: Int = 1,
              pad: (top: Int, left: Int, bottom: Int, right: Int)) throws -> Conv2d {
        Conv2d(weight: try stored("\(prefix).weight", [cout, cin, kernel, kernel]),
               bias: try vector("\(prefix).bias", cout),
               cin: cin, cout: cout, kernel: kernel, stride: stride,
               padTop: pad.top, padLeft: pad.left, padBottom: pad.bottom, padRight: pad.right)
    }

    func conv3x3(_ prefix: String, cin: Int, cout: Int) throws -> Conv2d {
        try conv(prefix, cin: cin, cout: cout, kernel: 3, pad: (1, 1, 1, 1))
    }

    func conv1x1(_ prefix: String, cin: Int, cout: Int) throws -> Conv2d {
        try conv(prefix, cin: cin, cout: cout, kernel: 1, pad: (0, 0, 0, 0))
    }

    /// A Linear layer [cout, cin] used as a 1x1 convolution over NCHW activations.
    func linearAsConv(_ names: [String], cin: Int, cout: Int) throws -> Conv2d {
        let n = name(names.map { "\($0).weight" }).dropLast(".weight".count)
        return Conv2d(weight: try stored("\(n).weight", [cout, cin]), bias: try vector("\(n).bias", cout),
                      cin: cin, cout: cout, kernel: 1, padTop: 0, padLeft: 0, padBottom: 0, padRight: 0)
    }

    func linear(_ prefix: String, inFeatures: Int, outFeatures: Int, bias: Bool = true) throws -> Linear {
        Linear(weight: try stored("\(prefix).weight", [outFeatures, inFeatures]),
               bias: bias ? try vector("\(prefix).bias", outFeatures) : nil,
               inFeatures: inFeatures, outFeatures: outFeatures)
    }

    /// A projection stored either as nn.Linear [out, in] or as a 1x1 nn.Conv2d [out, in, 1, 1]
    /// (Transformer2DModel's proj_in / proj_out, by use_linear_projection), applied as a Linear.
    func linearOrPointwise(_ prefix: String, inFeatures: Int, outFeatures: Int, pointwise: Bool) throws -> Linear {
        let shape = pointwise ? [outFeatures, inFeatures, 1, 1] : [outFeatures, inFeatures]
        return Linear(weight: try stored("\(prefix).weight", shape), bias: try vector("\(prefix).bias", outFeatures),
                      inFeatures: inFeatures, outFeatures: outFeatures)
    }

    func groupNorm(_ prefix: String, groups: Int, channels: Int, eps: Double) throws -> GroupNorm {
        guard groups >= 1, channels % groups == 0 else {
            throw DiffusionError(.unsupported, "\(prefix): \(groups) groups do not divide \(channels) channels")
        }
        return GroupNorm(groups: groups, channels: channels, eps: Float(eps),
                         gamma: try FloatBuffer(try vector("\(prefix).weight", channels)),
                         beta: try FloatBuffer(try vector("\(prefix).bias", channels)))
    }

    func layerNorm(_ prefix: String, channels: Int, eps: Double) throws -> LayerNorm {
        LayerNorm(channels: channels, eps: Float(eps), gamma: try vector("\(prefix).weight", channels),
                  beta: try vector("\(prefix).bias", channels))
    }
}
