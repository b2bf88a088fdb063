#if canImport(Glibc)
import Glibc
#endif

/// diffusers `AutoencoderKL`, Stable Diffusion's VAE: `encode` gives the diagonal Gaussian
/// posterior (mean, clamped logvar) of an image, `sample` draws from it with a torch-exact
/// generator, `decode` maps latents back to pixels. Tiled variants (AutoencoderKLTiling.swift)
/// bound the memory of large images the way diffusers' `enable_tiling` does.
///
/// Scaling is the caller's: the diffusion model's latents are `scaling_factor × z` (minus
/// `shift_factor` first, when the config has one), so decode `latents / scaling_factor`.
public final class AutoencoderKL {
    public let config: AutoencoderKLConfig

    private let encoder: VAEEncoder
    private let decoder: VAEDecoder
    private let quantConv: Conv2d?       // 1x1, 2·latent → 2·latent
    private let postQuantConv: Conv2d?   // 1x1, latent → latent

    /// Image sides (pixels) beyond this are refused (a 1<<16-pixel side is 8192 latents).
    public static let maxSide = 1 << 16

    public init(config: AutoencoderKLConfig, weights file: SafeTensorsFile) throws {
        try config.validate()
        self.config = config
        let w = WeightLoader(file: file)
        let lc = config.latentChannels
        encoder = try VAEEncoder(w, config: config)
        decoder = try VAEDecoder(w, config: config)
        quantConv = config.useQuantConv ? try w.conv1x1("quant_conv", cin: 2 * lc, cout: 2 * lc) : nil
        postQuantConv = config.usePostQuantConv ? try w.conv1x1("post_quant_conv", cin: lc, cout: lc) : nil
    }

    /// Loads the `component` folder of a pipeline (or the folder itself when it is a model folder):
    /// config.json, then diffusion_pytorch_model(.fp16).safetensors. Errors name the file.
    public convenience init(folder: PipelineFolder, component: String = "vae") throws {
        let (json, configPath) = try folder.config(component)
        let config: AutoencoderKLConfig
        do { config = try AutoencoderKLConfig(json: json) } catch let e as DiffusionError { throw e.context(configPath) }
        let weights = try folder.weights(component, stem: "diffusion_pytorch_model")
        do { try self.init(config: config, weights: weights) } catch let e as DiffusionError {
            throw e.message.hasPrefix(weights.path) ? e : e.context(e.code == .modelMismatch ? weights.path : configPath)
        }
    }

    /// Pixels per latent along each side.
    public var downsampleFactor: Int { config.downsampleFactor }

    // MARK: - Encode

    /// The posterior of `image` ([n, in_channels, h, w], values in [-1, 1]): mean and logvar
    /// [n, latent_channels, h / f, w / f] (f = downsampleFactor; odd sizes are floored at every
    /// level as torch does), logvar clamped to [-30, 20] as diffusers' DiagonalGaussianDistribution
    /// does. h and w must be at least f.
    public func encode(_ image: Tensor, threads: Int) throws -> (mean: Tensor, logvar: Tensor) {
        try checkImage(image)
        try checkMemory(encodeWorkingSetBytes(height: image.h, width: image.w, batch: image.n, threads: threads),
                        "encoding \(image.n) image(s) of \(image.h)x\(image.w)")
        return try posterior(moments(image, threads: threads))
    }

    /// encoder (+ quant_conv): [n, 2·latent, h', w'].
    func moments(_ image: Tensor, threads: Int) throws -> Tensor {
        let h = try encoder(image, threads: threads)
        return try quantConv.map { try $0(h, threads: threads) } ?? h
    }

    /// Splits moments into mean and clamped logvar (torch.chunk(2, dim=1), torch.clamp: NaN stays NaN).
    func posterior(_ m: Tensor) throws -> (mean: Tensor, logvar: Tensor) {
        let lc = m.c / 2, plane = lc * m.hw
        let mean = try Tensor(n: m.n, c: lc, h: m.h, w: m.w), logvar = try Tensor(n: m.n, c: lc, h: m.h, w: m.w)
        for i in 0..<m.n {
            (mean.data + i * plane).update(from: m.data + 2 * i * plane, count: plane)
            let src = m.data + (2 * i + 1) * plane, dst = logvar.data + i * plane
            for j in 0..<plane {
                let v = src[j]
                dst[j] = v < -30 ? -30 : (v > 20 ? 20 : v)
            }
        }
        return (mean, logvar)
    }

    /// `latent_dist.sample(generator)`: mean + exp(0.5 · logvar) · randn(mean.shape), the noise
    /// drawn from `generator` as one torch.randn of mean's shape.
    public func sample(mean: Tensor, logvar: Tensor, generator: inout TorchGenerator) throws -> Tensor {
        guard mean.n == logvar.n, mean.c == logvar.c, mean.h == logvar.h, mean.w == logvar.w else {
            throw DiffusionError(.invalidArgument, "mean [\(mean.n), \(mean.c), \(mean.h), \(mean.w)] and logvar [\(logvar.n), \(logvar.c), \(logvar.h), \(logvar.w)] differ in shape")
        }
        let out = try Tensor(n: mean.n, c: mean.c, h: mean.h, w: mean.w)
        generator.fillNormal(UnsafeMutableBufferPointer(start: out.data, count: out.count))
        let m = mean.data, l = logvar.data, o = out.data
        for j in 0..<out.count {
            let std = expf(0.5 * l[j])
            o[j] = m[j] + std * o[j]
        }
        return out
    }

    // MARK: - Decode

    /// The decoder on `z` ([n, latent_channels, h, w]; latents already divided by scaling_factor):
    /// post_quant_conv, then the decoder. Raw output [n, out_channels, h·f, w·f], not clamped.
    public func decode(_ z: Tensor, threads: Int) throws -> Tensor {
        try checkLatents(z)
        try checkMemory(decodeWorkingSetBytes(height: z.h, width: z.w, batch: z.n, threads: threads),
                        "decoding \(z.n) latent(s) of \(z.h)x\(z.w)")
        return try decodeUnchecked(z, threads: threads)
    }

    func decodeUnchecked(_ z: Tensor, threads: Int) throws -> Tensor {
        let h = try postQuantConv.map { try $0(z, threads: threads) } ?? z
        return try decoder(h, threads: threads)
    }

    // MARK: - Argument checks

    func checkImage(_ x: Tensor) throws {
        let f = downsampleFactor
        guard x.n >= 1, x.c == config.inChannels else {
            throw DiffusionError(.invalidArgument, "image is [\(x.n), \(x.c), \(x.h), \(x.w)]; the VAE encodes [n ≥ 1, \(config.inChannels), h, w]")
        }
        guard x.h >= f, x.w >= f, x.h <= Self.maxSide, x.w <= Self.maxSide else {
            throw DiffusionError(.invalidArgument, "image is \(x.h)x\(x.w); the VAE encodes sides of \(f) to \(Self.maxSide) pixels")
        }
    }

    func checkLatents(_ z: Tensor) throws {
        guard z.n >= 1, z.c == config.latentChannels else {
            throw DiffusionError(.invalidArgument, "latents are [\(z.n), \(z.c), \(z.h), \(z.w)]; the VAE decodes [n ≥ 1, \(config.latentChannels), h, w]")
        }
        let limit = Self.maxSide / downsampleFactor
        guard z.h >= 1, z.w >= 1, z.h <= limit, z.w <= limit else {
            throw DiffusionError(.invalidArgument, "latents are \(z.h)x\(z.w); the VAE decodes sides of 1 to \(limit) latents")
        }
    }

    /// What this VAE's work may plan for (the pipeline that loads it sets its limit and weights).
    public var budget = MemoryBudget()

    /// Refuses work whose estimated memory exceeds the budget (instead of failing an allocation
    /// mid-pass).
    func checkMemory(_ bytes: Double, _ what: String) throws {
        try budget.check(bytes, what, hint: " (the tiled encode / decode needs less)")
    }

    // MARK: - Memory

    /// A generous estimate of the peak working memory (bytes) of a whole-image decode of latents
    /// [batch, latent_channels, height, width]: the largest set of activations alive at once (a
    /// resnet holds its input, two normalised / convolved temporaries and the residual sum; an
    /// upsampler holds its input, the 2x copy and the conv output; the mid attention its input,
    /// normalised input, q, k, v and output), plus the gemm tiles' packed slabs, the widest
    /// layer's weight widened (kept as slack: only tile slabs are widened now) and attention's
    /// packed K and V^T, plus the freed temporaries the buffer pool keeps (see `VAEMemory.bytes`).
    public func decodeWorkingSetBytes(height: Int, width: Int, batch: Int, threads: Int = cpuCount()) -> Double {
        Self.decodeWorkingSetBytes(config: config, height: height, width: width, batch: batch, threads: threads)
    }

    /// The decode estimate for a config (no weights needed); infinite for a config that does not
    /// validate.
    public static func decodeWorkingSetBytes(config: AutoencoderKLConfig, height: Int, width: Int, batch: Int,
                                             threads: Int = cpuCount()) -> Double {
        guard (try? config.validate()) != nil else { return .infinity }
        let ch = config.blockOutChannels.map(Double.init), levels = ch.count
        let rc = Array(ch.reversed())
        let lc = Double(config.latentChannels), layers = config.layersPerBlock
        var s = Double(height) * Double(width)
        let tokens = s
        var peak = 2 * lc * s + rc[0] * s                               // z, post_quant_conv, conv_in
        peak = max(peak, lc * s + VAEMemory.resnet(rc[0], rc[0], s))
        if config.midBlockAddAttention { peak = max(peak, lc * s + 7 * rc[0] * s) }
        var c = rc[0]
        for i in 0..<levels {
            for j in 0...layers {
                peak = max(peak, VAEMemory.resnet(j == 0 ? c : rc[i], rc[i], s))
            }
            c = rc[i]
            if i != levels - 1 {
                peak = max(peak, 9 * c * s)                          // x, 2x copy, conv output
                s *= 4
            }
        }
        peak = max(peak, 2 * ch[0] * s + Double(config.outChannels) * s)  // conv_norm_out, conv_out
        return VAEMemory.bytes(activations: peak * Double(max(batch, 1)), channels: ch.max() ?? 0,
                               tokens: config.midBlockAddAttention ? tokens : 0, threads: threads)
    }

    /// The same estimate for a whole-image encode of images [batch, in_channels, height, width]
    /// (the image itself counted: it stays alive throughout).
    public func encodeWorkingSetBytes(height: Int, width: Int, batch: Int, threads: Int = cpuCount()) -> Double {
        Self.encodeWorkingSetBytes(config: config, height: height, width: width, batch: batch, threads: threads)
    }

    public static func encodeWorkingSetBytes(config: AutoencoderKLConfig, height: Int, width: Int, batch: Int,
                                             threads: Int = cpuCount()) -> Double {
        guard (try? config.validate()) != nil else { return .infinity }
        let ch = config.blockOutChannels.map(Double.init), levels = ch.count
        var s = Double(height) * Double(width)
        let image = Double(config.inChannels) * s
        var peak = ch[0] * s                                          // conv_in
        var c = ch[0]
        for i in 0..<levels {
            for j in 0..<config.layersPerBlock {
                peak = max(peak, VAEMemory.resnet(j == 0 ? c : ch[i], ch[i], s))
            }
            c = ch[i]
            if i != levels - 1 {
                peak = max(peak, 1.25 * c * s)                       // input and stride-2 output
                s /= 4
            }
        }
        peak = max(peak, VAEMemory.resnet(c, c, s))
        if config.midBlockAddAttention { peak = max(peak, 7 * c * s) }
        return VAEMemory.bytes(activations: (image + peak) * Double(max(batch, 1)), channels: ch.max() ?? 0,
                               tokens: config.midBlockAddAttention ? s : 0, threads: threads)
    }
}

enum VAEMemory {
    /// Floats alive in a resnet of cin → cout channels over s pixels: at conv1 its input, norm1's
    /// output and conv1's; at the end its input, conv2's output, the shortcut and the sum.
    static func resnet(_ cin: Double, _ cout: Double, _ s: Double) -> Double {
        s * max(2 * cin + cout, cin + 2 * cout, cin + (cin != cout ? 3 : 2) * cout)
    }

    /// Buffers freed during a pass stay in `BufferPool` for reuse by exact size, up to its limit,
    /// so the process holds about one more live set of dead temporaries at the peak.
    static let poolLimit = Double(BufferPool.limit)

    /// Live activations (floats) plus convolution scratch, attention's packed K and V^T and the
    /// pool's share. Measured on an SD-shaped random VAE (2 threads, f32 weights, before the own
    /// gemm): the peak RSS above the weights was 0.38 / 1.34 / 2.39 GB for 32² / 64² / 96² latents;
    /// this gives about 0.40 / 1.41 / 2.65.
    static func bytes(activations: Double, channels: Double, tokens: Double, threads: Int) -> Double {
        let im2col = Double(gemmScratchBytes(threads: threads)) + Double(16 << 20)
        let c = Int(channels)
        let winograd = Double(WinogradConv.scratchBytes(cin: c, cout: c, width: 0))  // its U made per call
        let packedKV = 2 * channels * tokens
        return 4 * (activations + packedKV) + winograd + im2col + min(4 * activations, poolLimit)
    }
}
