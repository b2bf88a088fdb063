/// Builds layers from named tensors, checking each one's shape against the config.
struct WeightLoader {
    let file: SafeTensorsFile

    func has(_ name: String) -> Bool { file.info(name) != nil }

    func tensor(_ name: String, _ shape: [Int]) throws -> FloatBuffer {
        FloatBuffer(try file.floats(name, shape: shape))
    }

    /// A tensor that may be stored under a legacy name (diffusers converts old attention keys).
    func tensor(_ names: [String], _ shape: [Int]) throws -> FloatBuffer {
        for n in names.dropLast() where has(n) { return try tensor(n, shape) }
        return try tensor(names.last!, shape)
    }

    func conv(_ prefix: String, cin: Int, cout: Int, kernel: Int, stride: Int = 1,
              pad: (top: Int, left: Int, bottom: Int, right: Int)) throws -> Conv2d {
        Conv2d(weight: try tensor("\(prefix).weight", [cout, cin, kernel, kernel]),
               bias: try tensor("\(prefix).bias", [cout]),
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
        Conv2d(weight: try tensor(names.map { "\($0).weight" }, [cout, cin]),
               bias: try tensor(names.map { "\($0).bias" }, [cout]),
               cin: cin, cout: cout, kernel: 1, padTop: 0, padLeft: 0, padBottom: 0, padRight: 0)
    }

    func linear(_ prefix: String, inFeatures: Int, outFeatures: Int) throws -> Linear {
        Linear(weight: try tensor("\(prefix).weight", [outFeatures, inFeatures]),
               bias: try tensor("\(prefix).bias", [outFeatures]),
               inFeatures: inFeatures, outFeatures: outFeatures)
    }

    func groupNorm(_ prefix: String, groups: Int, channels: Int, eps: Double) throws -> GroupNorm {
        guard groups >= 1, channels % groups == 0 else {
            throw DiffusionError(.unsupported, "\(prefix): \(groups) groups do not divide \(channels) channels")
        }
        return GroupNorm(groups: groups, channels: channels, eps: Float(eps),
                         gamma: try tensor("\(prefix).weight", [channels]),
                         beta: try tensor("\(prefix).bias", [channels]))
    }
}
