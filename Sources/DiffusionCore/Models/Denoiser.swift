/// What conditions one network evaluation, as data (DESIGN.md §1): nothing, class labels, text
/// states (cross-attention context), extra input channels (inpainting's mask and masked-image
/// latents, concatenated after x_t). Every field, when present, has one entry per sample.
public struct Conditioning {
    public var classLabels: [Int]? = nil
    /// Encoder hidden states [n, tokens, width].
    public var context: Tokens? = nil
    /// [n, k, h, w], appended to x_t's channels.
    public var extraChannels: Tensor? = nil

    public init(classLabels: [Int]? = nil, context: Tokens? = nil, extraChannels: Tensor? = nil) {
        self.classLabels = classLabels; self.context = context; self.extraChannels = extraChannels
    }

    public static let none = Conditioning()

    /// [a; b] along the batch: classifier-free guidance evaluates both halves as one batch.
    public static func batch(_ a: Conditioning, _ b: Conditioning) throws -> Conditioning {
        var c = Conditioning()
        if let x = a.classLabels, let y = b.classLabels { c.classLabels = x + y }
        if let x = a.context, let y = b.context { c.context = try Tokens.concatenated([x, y]) }
        if let x = a.extraChannels, let y = b.extraChannels { c.extraChannels = try Tensor.concatenatedBatch([x, y]) }
        return c
    }
}

/// A network that predicts from x_t (eps, v or x_0, as its scheduler config says): UNet2DModel,
/// UNet2DConditionModel, or a caller's callback. The Sampler drives any of them the same way.
public protocol Denoiser: AnyObject {
    /// Channels of x_t (without the conditioning's extra channels).
    var sampleChannels: Int { get }
    /// Channels of the prediction.
    var outChannels: Int { get }
    /// One evaluation on [n, sampleChannels, h, w] at one timestep per sample.
    func predict(_ x: Tensor, timesteps: [Float], conditioning: Conditioning, threads: Int) throws -> Tensor
}

/// A network supplied by the caller: fills `out` (shape's batch × out channels × h × w) for the
/// model input `x` of `shape` at `timestep`. Also the form of a classifier-gradient callback.
public typealias DenoiseFunction = (_ x: UnsafePointer<Float>, _ shape: SampleShape, _ timestep: Float,
                                    _ out: UnsafeMutablePointer<Float>) throws -> Void

/// The caller's network as a Denoiser (conditioning is the callback's own business).
public final class CallbackDenoiser: Denoiser {
    let function: DenoiseFunction
    public let sampleChannels: Int
    /// Set by the sampler from its scheduler (2 x channels for learned variances).
    public var outChannels: Int

    public init(_ function: @escaping DenoiseFunction, channels: Int) {
        self.function = function
        sampleChannels = channels
        outChannels = channels
    }

    public func predict(_ x: Tensor, timesteps: [Float], conditioning: Conditioning, threads: Int) throws -> Tensor {
        let out = try Tensor(n: x.n, c: outChannels, h: x.h, w: x.w)
        try function(x.data, SampleShape(batch: x.n, channels: x.c, height: x.h, width: x.w), timesteps[0], out.data)
        return out
    }
}
