import ArgumentParser
import DiffusionCore
#if canImport(Glibc)
import Glibc
#endif

/// The default model: $DIFFUSION_MODEL, the installed copy next to the executable
/// (PREFIX/bin/diffusion -> PREFIX/share/diffusion/models/digits), or this source tree's.
func defaultModelPath() -> String {
    if let env = getenv("DIFFUSION_MODEL") { return String(cString: env) }
    var exe = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &exe, exe.count - 1)
    if n > 0 {
        let bin = String(decoding: exe[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let prefix = bin.split(separator: "/", omittingEmptySubsequences: false).dropLast(2).joined(separator: "/")
        let installed = "\(prefix)/share/diffusion/models/digits"
        if access(installed + "/config.json", R_OK) == 0 { return installed }
    }
    let source = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false).dropLast(3).joined(separator: "/")
    return "\(source)/models/digits"
}

struct ModelOption: ParsableArguments {
    @Option(help: "Model folder (diffusers layout), or a single-file SD 1.x / 2.x checkpoint (.safetensors) with --config-from. Default: the shipped digits model.")
    var model: String?

    @Option(help: ArgumentHelp("For a single-file --model: the diffusers pipeline folder giving its configs, tokenizer and scheduler.", valueName: "dir"))
    var configFrom: String?

    @Option(help: ArgumentHelp("A standalone VAE file (original layout, e.g. vae-ft-mse-840000-ema-pruned.safetensors) replacing the pipeline's VAE.", valueName: "file"))
    var vae: String?

    @Option(help: "Threads for the network (default: the CPUs this process may run on).")
    var threads: Int = 0

    @Flag(help: "Read the fp16 variant weight files (*.fp16.safetensors) even when full-precision files exist.")
    var preferFP16 = false

    @Option(help: "f32 (default: float32) or bf16 (fast: bfloat16 products with float32 sums in the UNet and VAE; emulated, slower, on CPUs without AVX512-BF16).")
    var precision: Precision = .exact

    @Option(help: ArgumentHelp("Memory the model may plan for, in bytes, or with a K/M/G suffix (powers of 1024); default: physical memory and the process's limits.", valueName: "bytes"))
    var memoryLimit: MemorySize?

    func load() throws -> DiffusionModel {
        try DiffusionModel(path: model ?? defaultModelPath(), threads: threads, preferFP16: preferFP16,
                           memoryLimit: memoryLimit?.bytes ?? 0, precision: precision, configFrom: configFrom, vae: vae)
    }
}

extension Precision: ExpressibleByArgument {}

/// A byte count: digits with an optional K, M or G suffix (powers of 1024).
struct MemorySize: ExpressibleByArgument {
    let bytes: UInt64

    init?(argument: String) {
        var digits = Substring(argument)
        var scale: UInt64 = 1
        if let last = digits.last, let power = ["K": 1, "M": 2, "G": 3][last.uppercased()] {
            scale = 1 << (10 * UInt64(power))
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber), let n = UInt64(digits) else {
            return nil
        }
        let (product, overflow) = n.multipliedReportingOverflow(by: scale)
        guard !overflow, product > 0 else { return nil }
        bytes = product
    }
}

@main
struct DiffusionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diffusion",
        abstract: "Generate images with diffusion models on the CPU (libdiffusion).",
        subcommands: [Generate.self, Info.self, Schedulers.self],
        defaultSubcommand: Generate.self)

    /// One clear line on stderr and a non-zero exit for library errors.
    static func fail(_ e: DiffusionError) -> Never {
        fputs("diffusion: error: \(e.message)\n", stderr)
        Glibc.exit(1)
    }
}

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print what the library understood of a model.")
    @OptionGroup var modelOption: ModelOption

    func run() throws {
        do {
            let m = try modelOption.load()
            let c = m.info
            print("model:       \(modelOption.model ?? defaultModelPath())")
            if let u = m.pixelUNet {
                print("network:     UNet2DModel, \(c.inChannels) -> \(c.outChannels) channels, blocks \(u.config.blockOutChannels)")
            } else if let u = m.conditionUNet, let l = m.latent {
                print("pipeline:    Stable Diffusion (latent), images \(c.sampleWidth.map(String.init) ?? "?") x \(c.sampleHeight.map(String.init) ?? "?") by default")
                print("unet:        UNet2DConditionModel, \(c.inChannels) -> \(c.outChannels) channels, blocks \(u.config.blockOutChannels), heads \(u.config.attentionHeads), cross-attention \(u.config.crossAttentionDim)" + (c.inChannels > c.outChannels ? " (inpainting)" : ""))
                print("text:        CLIPTextModel, width \(l.textEncoder.hiddenSize), \(c.contextLength) tokens")
                print("tokenizer:   CLIP BPE, pad id \(l.tokenizer.padID)")
                print("vae:         AutoencoderKL, \(c.latentChannels) latent channels, scale factor \(c.vaeScaleFactor), scaling_factor \(l.scalingFactor)")
            }
            if m.pixelUNet != nil { print("sample size: \(c.sampleHeight.map(String.init) ?? "none") x \(c.sampleWidth.map(String.init) ?? "none")")
            print("classes:     \(c.numClassEmbeds.map(String.init) ?? "none")" +
                  (c.nullClassLabel.map { " (unconditional label \($0): guidance available)" } ?? "")) }
            print("scheduler:   \(m.defaultScheduler)")
            print("precision:   \(m.precision.rawValue)" + (m.precision == .bf16 && !Precision.bf16Native ? " (emulated: this CPU lacks AVX512-BF16)" : ""))
            print("threads:     \(m.threads)")
            print("config:      \(m.configJSON)")
        } catch let e as DiffusionError { DiffusionCommand.fail(e) }
    }
}

struct Schedulers: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the schedulers, their diffusers classes and aliases.")

    func run() throws {
        for e in SchedulerRegistry.entries {
            let aliases = SchedulerRegistry.aliases.filter { $0.name == e.name }.map(\.alias)
            let pad = String(repeating: " ", count: max(1, 10 - e.name.count))
            print("\(e.name)\(pad)\(e.diffusersClass)" + (aliases.isEmpty ? "" : "  (also: \(aliases.joined(separator: ", ")))"))
        }
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate a grid of images and write it as a PNG.")
    @OptionGroup var modelOption: ModelOption

    @Option(name: .customLong("class"),
            help: "Class label for a class-conditional model, or \"all\" for one row per class.")
    var classLabel: String?

    @Option(help: "Text pipelines: the prompt.")
    var prompt: String?

    @Option(help: "Text pipelines: the negative prompt (default: none).")
    var negativePrompt: String?

    @Option(help: "Text pipelines: CLIP layers to skip (diffusers' clip_skip).")
    var clipSkip: Int = 0

    @Option(help: "Image width and height in pixels (default: the model's sample size; multiples of 8 for Stable Diffusion).")
    var width: Int = 0
    @Option(help: "Image height in pixels (see --width).")
    var height: Int = 0

    @Option(help: "Classifier-free guidance scale (default: 7.5 for text pipelines, else 1 = none).")
    var guidance: Float?

    @Option(help: "diffusers' guidance_rescale in [0, 1] (text pipelines).")
    var guidanceRescale: Float = 0

    @Option(help: "Scheduler: ddpm, ddim, euler, euler_a, heun, dpmpp_2m, pndm, lms, unipc, lcm or an alias (`diffusion schedulers`; default: the model's).")
    var scheduler: String?

    @Option(help: ArgumentHelp("Scheduler settings as a JSON object of diffusers keys, e.g. '{\"use_karras_sigmas\": true}'.", valueName: "json"))
    var schedulerConfig: String?

    @Option(help: "Inference steps (default: ddpm all training steps, lcm 4, others 50).")
    var steps: Int = 0

    @Option(help: "Random seed (torch.manual_seed compatible).")
    var seed: UInt64 = 0

    @Option(help: "Images (per class with --class all; default 16, text pipelines 1).")
    var count: Int?

    @Option(help: "DDIM eta.")
    var eta: Float = 0

    @Option(help: "Pixel scale of the PNG (default: images at least 64 pixels tall).")
    var scale: Int = 0

    @Option(help: "Output PNG file.")
    var output: String = "out.png"

    @Option(name: .customLong("init"),
            help: ArgumentHelp("img2img: start from this PNG (8-bit, the model's height x width).", valueName: "png"))
    var initImage: String?

    @Option(help: "img2img / inpainting strength in (0, 1]: the share of the steps run from the noised --init image (default 0.8; inpainting 1).")
    var strength: Double?

    @Option(help: ArgumentHelp("Inpainting: a PNG mask of the image's size, white = repaint (needs --init).", valueName: "png"))
    var mask: String?

    func validate() throws {
        if let count { guard count >= 1 && count <= 4096 else { throw ValidationError("--count must be between 1 and 4096") } }
        guard width >= 0, height >= 0, width <= 16384, height <= 16384 else { throw ValidationError("--width and --height must be between 1 and 16384") }
        guard clipSkip >= 0 else { throw ValidationError("--clip-skip must be >= 0") }
        if mask != nil, initImage == nil { throw ValidationError("--mask needs --init (the image to inpaint)") }
        guard steps >= 0 else { throw ValidationError("--steps must be positive") }
        guard scale >= 0 && scale <= 64 else { throw ValidationError("--scale must be between 1 and 64") }
        if let strength {
            guard initImage != nil else { throw ValidationError("--strength needs --init") }
            guard strength > 0 && strength <= 1 else { throw ValidationError("--strength must be in (0, 1]") }
        }
    }

    func run() throws {
        do { try generate() } catch let e as DiffusionError { DiffusionCommand.fail(e) }
    }

    func generate() throws {
        let model = try modelOption.load()
        let info = model.info
        let text = model.latent != nil
        let count = self.count ?? (text ? 1 : 16)
        let guidance = self.guidance ?? (text ? 7.5 : 1)
        if !text, prompt != nil || negativePrompt != nil {
            throw DiffusionError(.invalidArgument, "--prompt: this model is not a text-to-image pipeline")
        }
        // Labels per image, and the number of grid rows.
        var labels: [Int]? = nil
        var rows = Int(Double(count).squareRoot().rounded(.up))
        var columns = (count + rows - 1) / rows
        var batch = count
        if let c = classLabel {
            guard let classes = info.numClassEmbeds else {
                throw DiffusionError(.invalidArgument, "--class: this model is not class-conditional")
            }
            let nullIsLast = info.nullClassLabel == classes - 1
            let real: Int = nullIsLast ? classes - 1 : classes
            if c == "all" {
                labels = (0..<real).flatMap { [Int](repeating: $0, count: count) }
                rows = real
                columns = count
                batch = real * count
            } else if let l = Int(c), l >= 0, l < classes {
                labels = [l]
            } else {
                throw DiffusionError(.invalidArgument, "--class \(c) is not a label in [0, \(classes)) or \"all\"")
            }
        } else if info.numClassEmbeds != nil, guidance != 1 {
            throw DiffusionError(.invalidArgument, "--guidance needs --class")
        }

        var p = SamplerParams()
        p.scheduler = scheduler
        if let json = schedulerConfig {
            do { p.schedulerOverrides = try JSONValue.parse(json, pythonConstants: true) } catch let e as DiffusionError {
                throw DiffusionError(.invalidArgument, "--scheduler-config: \(e.message)")
            }
        }
        p.steps = steps
        p.seed = seed
        p.batch = batch
        p.eta = eta
        p.height = height
        p.width = width
        p.prompt = prompt
        p.negativePrompt = negativePrompt
        p.clipSkip = clipSkip
        let progress = Progress(enabled: isatty(STDERR_FILENO) != 0)
        let sampler = try Sampler(model: model, params: p)
        sampler.stageCallback = { stage, done, total in
            switch stage {
            case .textEncoding: if done == 0 { progress.stage("encoding the prompt") }
            case .decoding: if done < total { progress.stage("decoding image \(done + 1) of \(total)") }
            case .denoising: break
            }
            return true
        }
        if let labels {
            let (conditional, unconditional) = try model.classConditioning(labels, batch: batch)
            sampler.setConditioning(conditional, unconditional: unconditional)
        }
        try sampler.setGuidanceScale(guidance)
        if guidanceRescale != 0 { try sampler.setGuidanceRescale(guidanceRescale) }
        let f = info.vaeScaleFactor
        let (imageHeight, imageWidth) = (sampler.height * f, sampler.width * f)
        let imageChannels = model.imageChannels
        if let initImage {
            if text { progress.stage("encoding the image") }
            let x0 = try initSample(initImage, channels: imageChannels, height: imageHeight, width: imageWidth)
            let image = try Tensor(n: 1, c: imageChannels, h: imageHeight, w: imageWidth)
            x0.withUnsafeBufferPointer { image.data.update(from: $0.baseAddress!, count: x0.count) }
            if let mask {
                let m = try maskValues(mask, height: imageHeight, width: imageWidth)
                try model.setInpainting(image: image, mask: m, strength: strength ?? 1, on: sampler)
            } else {
                try model.setInitImage(image, strength: strength ?? 0.8, on: sampler)
            }
        }

        let start = monotonicSeconds()
        try sampler.run { step, total, _ in
            progress.step(step, of: total)
            return true
        }
        let seconds = monotonicSeconds() - start
        let decoded = try sampler.decodedImages()
        progress.done()

        var pixels = [UInt8](repeating: 0, count: decoded.count)
        pixels.withUnsafeMutableBufferPointer { pixelBytes(decoded, into: $0.baseAddress!) }
        let channels = imageChannels == 1 || imageChannels == 3 ? imageChannels : 1
        let s = scale > 0 ? scale : max(1, (64 + imageHeight - 1) / imageHeight)
        let grid = Grid(rows: rows, columns: columns, height: imageHeight, width: imageWidth, channels: channels, scale: s)
        let image = grid.compose(pixels, batch: batch, sourceChannels: imageChannels)
        try write(PNG.encode(pixels: image, width: grid.pixelWidth, height: grid.pixelHeight, channels: channels),
                  to: output)
        let from = initImage.map { " from \($0) at strength \(strength ?? (mask == nil ? 0.8 : 1))" } ?? ""
        print("wrote \(output) (\(batch) images, \(rows)x\(columns) grid, \(sampler.totalSteps) steps\(from), " +
              "\(format2(seconds)) s)")
    }
}

/// The progress line on a terminal: stage, step, seconds per step and the time left.
final class Progress {
    let enabled: Bool
    private var stepStart = monotonicSeconds()
    private var firstStep: Double? = nil

    init(enabled: Bool) { self.enabled = enabled }

    func stage(_ name: String) {
        guard enabled else { return }
        fputs("\r\u{1B}[K\(name)...", stderr)
    }

    func step(_ step: Int, of total: Int) {
        guard enabled else { return }
        let now = monotonicSeconds()
        if firstStep == nil { firstStep = stepStart }
        let perStep = (now - (firstStep ?? now)) / Double(max(step, 1))
        let width = 30, filled = width * step / max(total, 1)
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        fputs("\r\u{1B}[Ksampling [\(bar)] \(step)/\(total)  \(format2(perStep)) s/it  ETA \(format2(perStep * Double(total - step))) s", stderr)
        stepStart = now
    }

    func done() {
        guard enabled else { return }
        fputs("\r\u{1B}[K", stderr)
    }
}
