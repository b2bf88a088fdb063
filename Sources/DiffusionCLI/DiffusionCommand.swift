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
    @Option(help: "Model folder (diffusers layout). Default: the shipped digits model.")
    var model: String?

    @Option(help: "Threads for the network (default: all cores).")
    var threads: Int = 0

    func load() throws -> DiffusionModel {
        try DiffusionModel(path: model ?? defaultModelPath(), threads: threads)
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
            } else if let u = m.conditionUNet {
                print("network:     UNet2DConditionModel, \(c.inChannels) -> \(c.outChannels) channels, blocks \(u.config.blockOutChannels), text width \(c.contextWidth)")
            }
            print("sample size: \(c.sampleHeight.map(String.init) ?? "none") x \(c.sampleWidth.map(String.init) ?? "none")")
            print("classes:     \(c.numClassEmbeds.map(String.init) ?? "none")" +
                  (c.nullClassLabel.map { " (unconditional label \($0): guidance available)" } ?? ""))
            print("scheduler:   \(m.defaultScheduler)")
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

    @Option(help: "Classifier-free guidance scale (1 = none).")
    var guidance: Float = 1

    @Option(help: "Scheduler: ddpm, ddim, euler, euler_a, heun, dpmpp_2m, pndm, lms, unipc, lcm or an alias (`diffusion schedulers`; default: the model's).")
    var scheduler: String?

    @Option(help: ArgumentHelp("Scheduler settings as a JSON object of diffusers keys, e.g. '{\"use_karras_sigmas\": true}'.", valueName: "json"))
    var schedulerConfig: String?

    @Option(help: "Inference steps (default: ddpm all training steps, lcm 4, others 50).")
    var steps: Int = 0

    @Option(help: "Random seed (torch.manual_seed compatible).")
    var seed: UInt64 = 0

    @Option(help: "Images (per class with --class all).")
    var count: Int = 16

    @Option(help: "DDIM eta.")
    var eta: Float = 0

    @Option(help: "Pixel scale of the PNG (default: images at least 64 pixels tall).")
    var scale: Int = 0

    @Option(help: "Output PNG file.")
    var output: String = "out.png"

    @Option(name: .customLong("init"),
            help: ArgumentHelp("img2img: start from this PNG (8-bit, the model's height x width).", valueName: "png"))
    var initImage: String?

    @Option(help: "img2img strength in (0, 1]: the share of the steps run from the noised --init image (default 0.8).")
    var strength: Double?

    func validate() throws {
        guard count >= 1 && count <= 4096 else { throw ValidationError("--count must be between 1 and 4096") }
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
        let config = model.info
        // Labels per image, and the number of grid rows.
        var labels: [Int]? = nil
        var rows = Int(Double(count).squareRoot().rounded(.up))
        var columns = (count + rows - 1) / rows
        var batch = count
        if let c = classLabel {
            guard let classes = config.numClassEmbeds else {
                throw DiffusionError(.invalidArgument, "--class: this model is not class-conditional")
            }
            let nullIsLast = config.nullClassLabel == classes - 1
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
        } else if config.numClassEmbeds != nil, guidance != 1 {
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
        let sampler = try Sampler(model: model, params: p)
        if let labels {
            let (conditional, unconditional) = try model.classConditioning(labels, batch: batch)
            sampler.setConditioning(conditional, unconditional: unconditional)
        }
        try sampler.setGuidanceScale(guidance)
        if let initImage {
            let x0 = try initSample(initImage, channels: sampler.channels, height: sampler.height, width: sampler.width)
            try sampler.setInitImage(x0, count: x0.count, strength: strength ?? 0.8)
        }

        let tty = isatty(STDERR_FILENO) != 0
        let start = monotonicSeconds()
        try sampler.run { step, total, _ in
            if tty {
                let width = 30, filled = width * step / total
                let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
                fputs("\r[\(bar)] \(step)/\(total)", stderr)
                if step == total { fputs("\n", stderr) }
            }
            return true
        }
        let seconds = monotonicSeconds() - start

        var pixels = [UInt8](repeating: 0, count: sampler.count)
        let decoded = try model.decode(sampler.sample)
        pixels.withUnsafeMutableBufferPointer { pixelBytes(decoded, into: $0.baseAddress!) }
        let channels = sampler.channels == 1 || sampler.channels == 3 ? sampler.channels : 1
        let s = scale > 0 ? scale : max(1, (64 + sampler.height - 1) / sampler.height)
        let grid = Grid(rows: rows, columns: columns, height: sampler.height, width: sampler.width,
                        channels: channels, scale: s)
        let image = grid.compose(pixels, batch: batch, sourceChannels: sampler.channels)
        try write(PNG.encode(pixels: image, width: grid.pixelWidth, height: grid.pixelHeight, channels: channels),
                  to: output)
        let from = initImage.map { " from \($0) at strength \(strength ?? 0.8)" } ?? ""
        print("wrote \(output) (\(batch) images, \(rows)x\(columns) grid, \(sampler.totalSteps) steps\(from), " +
              "\(format2(seconds)) s)")
    }
}

/// img2img's x_0 from a PNG: one NCHW image for the whole batch, in the model's channels
/// (gray replicated to RGB; RGB to gray as PIL's convert("L")), x_0 = 2 * (p / 255) - 1 as diffusers.
func initSample(_ path: String, channels: Int, height: Int, width: Int) throws -> [Float] {
    guard channels == 1 || channels == 3 else {
        throw DiffusionError(.unsupported, "--init: the model has \(channels) channels; an image can start only 1- or 3-channel models")
    }
    let image = try PNGDecoder.read(path) { w, h in
        guard w == width && h == height else {
            throw DiffusionError(.invalidArgument, "--init \(path): the image is \(w)x\(h) but the model makes \(width)x\(height) images (width x height; no resizing)")
        }
    }
    let hw = height * width, p = image.pixels
    var x = [Float](repeating: 0, count: channels * hw)
    for i in 0..<hw {
        for ch in 0..<channels {
            let value: UInt8
            if image.channels == channels {
                value = p[i * channels + ch]
            } else if channels == 3 {
                value = p[i]  // gray -> RGB
            } else {
                // PIL's rgb2l: ITU-R 601-2 weights in 16-bit fixed point, rounded (L24(rgb) >> 16)
                let r = Int(p[i * 3]), g = Int(p[i * 3 + 1]), b = Int(p[i * 3 + 2])
                value = UInt8((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)
            }
            x[ch * hw + i] = 2 * (Float(value) / 255) - 1
        }
    }
    return x
}

/// Images laid out row by row with a 2-pixel gap, each scaled up by nearest neighbour.
struct Grid {
    let rows: Int, columns: Int, height: Int, width: Int, channels: Int, scale: Int
    let gap = 2
    var pixelWidth: Int { columns * width * scale + (columns + 1) * gap }
    var pixelHeight: Int { rows * height * scale + (rows + 1) * gap }

    func compose(_ nhwc: [UInt8], batch: Int, sourceChannels: Int) -> [UInt8] {
        var out = [UInt8](repeating: 255, count: pixelWidth * pixelHeight * channels)
        for i in 0..<min(batch, rows * columns) {
            let r = i / columns, c = i % columns
            let x0 = gap + c * (width * scale + gap), y0 = gap + r * (height * scale + gap)
            for y in 0..<(height * scale) {
                for x in 0..<(width * scale) {
                    let src = ((i * height + y / scale) * width + x / scale) * sourceChannels
                    let dst = ((y0 + y) * pixelWidth + x0 + x) * channels
                    for ch in 0..<channels { out[dst + ch] = nhwc[src + ch] }
                }
            }
        }
        return out
    }
}

func write(_ bytes: [UInt8], to path: String) throws {
    guard let f = fopen(path, "wb") else {
        throw DiffusionError(.io, "cannot write \(path): \(String(cString: strerror(errno)))")
    }
    defer { fclose(f) }
    guard bytes.withUnsafeBytes({ fwrite($0.baseAddress, 1, $0.count, f) }) == bytes.count else {
        throw DiffusionError(.io, "cannot write \(path): \(String(cString: strerror(errno)))")
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func format2(_ x: Double) -> String {
    let hundredths = Int((x * 100).rounded())
    let frac = hundredths % 100
    return "\(hundredths / 100).\(frac < 10 ? "0" : "")\(frac)"
}
