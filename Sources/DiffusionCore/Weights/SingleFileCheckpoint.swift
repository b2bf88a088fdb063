/// A Stable Diffusion 1.x / 2.x checkpoint in the original single-file layout (CompVis / A1111 /
/// ComfyUI `.safetensors`), seen as the diffusers components the loaders read:
/// - `model.diffusion_model.*` → unet (LDM's input / middle / output blocks renamed to down / mid
///   / up blocks, as diffusers' `convert_ldm_unet_checkpoint`);
/// - `first_stage_model.*` → vae (`down.i.block.j` → `down_blocks.i.resnets.j`, decoder levels
///   reversed, the mid attention's 1×1 convolutions read as linear weights);
/// - `cond_stage_model.transformer.*` → text_encoder (SD1: transformers' CLIP names already);
/// - `cond_stage_model.model.*` → text_encoder (SD2: OpenCLIP, its fused in_proj split into q, k,
///   v — contiguous rows of one tensor — and blocks past the config's layers ignored, as SD2 files
///   carry one block more than the penultimate-layer encoder uses).
/// A standalone VAE file (vae-ft-mse layout) has the VAE's keys without a prefix.
///
/// Nothing is copied: each component is a view (`SafeTensorsFile(view:)`) over the one mapping.
/// Keys real checkpoints carry beside the weights (the DDPM schedule buffers, `model_ema.*`,
/// `position_ids`, `text_projection`, `logit_scale`) are ignored; any other key that has no place
/// — unknown, or mapped to a name the built model never read — is an error naming it, as is a
/// missing weight (named by its diffusers name and the file).
public final class SingleFileCheckpoint {
    public let file: SafeTensorsFile
    /// The file's keys by component ("unet", "vae", "text_encoder"), without their prefix, and
    /// whether the text encoder is OpenCLIP's.
    private var keys: [String: [String]] = [:]
    public private(set) var openCLIP = false
    private var views: [String: (view: SafeTensorsFile, origin: [String: String])] = [:]

    static let ignoredKeys: Set<String> = [
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
        "logvar", "model_ema.decay", "model_ema.num_updates",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
        "cond_stage_model.model.text_projection", "cond_stage_model.model.logit_scale",
    ]

    /// `vaeOnly`: a standalone VAE file (its keys need no prefix).
    public init(path: String, vaeOnly: Bool = false) throws {
        file = try SafeTensorsFile(path: path)
        let prefixes = vaeOnly ? [("", "vae")]
            : [("model.diffusion_model.", "unet"), ("first_stage_model.", "vae"),
               ("cond_stage_model.transformer.", "text_encoder"), ("cond_stage_model.model.", "text_encoder")]
        if vaeOnly, let whole = file.names.first(where: { $0.hasPrefix("first_stage_model.") || $0.hasPrefix("model.diffusion_model.") }) {
            throw DiffusionError(.modelMismatch, "\(path) is a whole Stable Diffusion checkpoint ('\(whole)'), not a standalone VAE file (its keys start with encoder., decoder., quant_conv., post_quant_conv.)")
        }
        for name in file.names {
            if Self.ignoredKeys.contains(name) || name.hasPrefix("model_ema.") { continue }
            guard let (prefix, component) = prefixes.first(where: { name.hasPrefix($0.0) }) else {
                throw DiffusionError(.modelMismatch, "\(path): key '\(name)' is not part of a Stable Diffusion 1.x / 2.x checkpoint" + (vaeOnly ? " VAE" : "") + " (expected model.diffusion_model.*, first_stage_model.*, cond_stage_model.*)")
            }
            if prefix == "cond_stage_model.model." { openCLIP = true }
            keys[component, default: []].append(String(name.dropFirst(prefix.count)))
        }
        if !vaeOnly, keys["unet"] == nil {
            throw DiffusionError(.modelMismatch, "\(path) holds no model.diffusion_model.* keys: not a Stable Diffusion checkpoint in the original layout")
        }
        if openCLIP, file.names.contains(where: { $0.hasPrefix("cond_stage_model.transformer.") && !Self.ignoredKeys.contains($0) }) {
            throw DiffusionError(.modelMismatch, "\(path) holds both a CLIP (cond_stage_model.transformer) and an OpenCLIP (cond_stage_model.model) text encoder")
        }
    }

    /// The component as a file of diffusers-named tensors, for the component's `config` (its
    /// layers_per_block, block_out_channels or num_hidden_layers place the keys).
    public func component(_ component: String, config: JSONValue, configPath: String, precision: Precision) throws -> SafeTensorsFile {
        guard let names = keys[component] else {
            throw DiffusionError(.modelMismatch, "\(file.path) holds no \(component) weights (\(Self.prefixDescription(component)))")
        }
        let prefix = Self.originalPrefix(component, openCLIP: openCLIP, standalone: keys["unet"] == nil)
        // The config's own reader (validated bounds) gives what places the keys.
        var layersPerBlock = 0, vaeLevels = 0, textLayers = 0
        do {
            switch component {
            case "unet":
                let layers = try UNet2DConditionConfig(json: config).layersPerBlock
                guard let first = layers.first, layers.allSatisfy({ $0 == first }) else {
                    throw DiffusionError(.unsupported, "\(file.path): the original layout numbers the UNet's blocks for one layers_per_block; the config gives \(layers)")
                }
                layersPerBlock = first
            case "vae": vaeLevels = try AutoencoderKLConfig(json: config).blockOutChannels.count
            default: textLayers = try CLIPTextConfig(json: config).numHiddenLayers
            }
        } catch let e as DiffusionError where !e.message.contains(file.path) {
            throw e.context(configPath)
        }
        var table: [String: TensorInfo] = [:], origin: [String: String] = [:]
        func add(_ name: String, _ info: TensorInfo, from key: String) throws {
            if let previous = origin[name] {
                throw DiffusionError(.modelMismatch, "\(file.path): keys '\(previous)' and '\(key)' both map to the \(component)'s '\(name)'")
            }
            table[name] = info
            origin[name] = key
        }
        for key in names {
            let full = prefix + key
            guard let info = file.info(full) else {
                throw DiffusionError(.unsupported, "\(file.path): tensor '\(full)' has dtype \(file.dtypeName(full) ?? "?"), which this library does not read")
            }
            switch component {
            case "unet":
                guard let name = Self.unetName(key, layersPerBlock: layersPerBlock) else { throw unknown(full, component) }
                try add(name, info, from: full)
            case "vae":
                guard let name = Self.vaeName(key, levels: vaeLevels) else { throw unknown(full, component) }
                // The mid attention's q, k, v, proj_out: 1×1 convolutions [C, C, 1, 1] read as [C, C].
                if name.contains(".attentions."), name.hasSuffix(".weight"), info.shape.count == 4, info.shape[2] == 1, info.shape[3] == 1 {
                    try add(name, TensorInfo(name: name, dtype: info.dtype, shape: Array(info.shape.prefix(2)), byteRange: info.byteRange), from: full)
                } else {
                    try add(name, info, from: full)
                }
            default:
                if !openCLIP {
                    try add(key, info, from: full)
                    continue
                }
                guard let mapped = Self.openCLIPName(key, layers: textLayers) else { throw unknown(full, component) }
                switch mapped {
                case .ignored: continue
                case .name(let name): try add(name, info, from: full)
                case .split(let stem, let suffix):
                    // in_proj [3C, C] / [3C]: q, k, v are its thirds along the first axis.
                    guard let rows = info.shape.first, rows % 3 == 0, rows > 0 else {
                        throw DiffusionError(.modelMismatch, "\(file.path): '\(full)' has shape \(info.shape); expected 3 × width rows")
                    }
                    let part = info.byteRange.count / 3
                    for (i, q) in ["q_proj", "k_proj", "v_proj"].enumerated() {
                        let name = "\(stem).\(q).\(suffix)"
                        let range = (info.byteRange.lowerBound + i * part)..<(info.byteRange.lowerBound + (i + 1) * part)
                        try add(name, TensorInfo(name: name, dtype: info.dtype, shape: [rows / 3] + info.shape.dropFirst(), byteRange: range), from: full)
                    }
                }
            }
        }
        let view = SafeTensorsFile(view: file, tensors: table, label: "\(file.path) (\(component))")
        view.precision = precision
        view.tracksReads = true
        views[component] = (view, origin)
        return view
    }

    /// Refuses keys of the components built so far that their models never read (a layer the
    /// config does not have: the checkpoint is for another model).
    public func checkEveryKeyRead() throws {
        for (component, v) in views.sorted(by: { $0.key < $1.key }) {
            let unread = v.view.unreadNames
            guard let first = unread.first else { continue }
            let key = v.origin[first] ?? first
            throw DiffusionError(.modelMismatch, "\(file.path): key '\(key)' (the \(component)'s '\(first)') is not used by the model its config describes" + (unread.count > 1 ? " (and \(unread.count - 1) more)" : ""))
        }
    }

    private func unknown(_ key: String, _ component: String) -> DiffusionError {
        DiffusionError(.modelMismatch, "\(file.path): key '\(key)' is not a \(component) weight of a Stable Diffusion 1.x / 2.x checkpoint")
    }

    static func originalPrefix(_ component: String, openCLIP: Bool, standalone: Bool) -> String {
        switch component {
        case "unet": return "model.diffusion_model."
        case "vae": return standalone ? "" : "first_stage_model."
        default: return openCLIP ? "cond_stage_model.model." : "cond_stage_model.transformer."
        }
    }

    static func prefixDescription(_ component: String) -> String {
        switch component {
        case "unet": return "model.diffusion_model.*"
        case "vae": return "first_stage_model.*"
        default: return "cond_stage_model.transformer.* or cond_stage_model.model.*"
        }
    }

    // MARK: - Key maps (original → diffusers)

    /// The key's first `count` dot-separated parts and the rest ("a.b.c.d", 2 → [a, b], "c.d").
    private static func split(_ key: String, _ count: Int) -> ([Substring], String)? {
        var parts = key.split(separator: ".", maxSplits: count, omittingEmptySubsequences: false)
        guard parts.count == count + 1 else { return nil }
        let rest = String(parts.removeLast())
        return (parts, rest)
    }

    /// LDM ResBlock names → diffusers ResnetBlock2D.
    static func resnetRest(_ rest: String) -> String? {
        let renames = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
                       ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut.")]
        for (from, to) in renames where rest.hasPrefix(from) { return to + rest.dropFirst(from.count) }
        return nil
    }

    static func unetName(_ key: String, layersPerBlock l: Int) -> String? {
        let direct = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
                      ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")]
        for (from, to) in direct where key.hasPrefix(from) { return to + key.dropFirst(from.count) }
        func index(_ part: Substring) -> Int? { Int(part).flatMap { $0 >= 0 && String($0) == part ? $0 : nil } }
        if key.hasPrefix("middle_block.") {
            guard let (parts, rest) = split(key, 2), let j = index(parts[1]) else { return nil }
            switch j {
            case 0, 2: return resnetRest(rest).map { "mid_block.resnets.\(j / 2).\($0)" }
            case 1: return "mid_block.attentions.0.\(rest)"
            default: return nil
            }
        }
        guard l >= 1, let (parts, rest) = split(key, 3), let i = index(parts[1]), let j = index(parts[2]) else { return nil }
        switch parts[0] {
        case "input_blocks" where i >= 1:
            let block = (i - 1) / (l + 1), layer = (i - 1) % (l + 1)
            if layer == l {
                guard j == 0, rest.hasPrefix("op.") else { return nil }
                return "down_blocks.\(block).downsamplers.0.conv.\(rest.dropFirst(3))"
            }
            if j == 0 { return resnetRest(rest).map { "down_blocks.\(block).resnets.\(layer).\($0)" } }
            return j == 1 ? "down_blocks.\(block).attentions.\(layer).\(rest)" : nil
        case "output_blocks":
            let block = i / (l + 1), layer = i % (l + 1)
            if j == 0 { return resnetRest(rest).map { "up_blocks.\(block).resnets.\(layer).\($0)" } }
            // A level's last layer ends with the upsampler, after the resnet (and the attention).
            if rest.hasPrefix("conv."), layer == l, j == 1 || j == 2 {
                return "up_blocks.\(block).upsamplers.0.conv.\(rest.dropFirst(5))"
            }
            return j == 1 ? "up_blocks.\(block).attentions.\(layer).\(rest)" : nil
        default:
            return nil
        }
    }

    static func vaeName(_ key: String, levels: Int) -> String? {
        for same in ["encoder.conv_in.", "encoder.conv_out.", "decoder.conv_in.", "decoder.conv_out.", "quant_conv.",
                     "post_quant_conv."] where key.hasPrefix(same) {
            return key
        }
        for coder in ["encoder.", "decoder."] where key.hasPrefix(coder + "norm_out.") {
            return coder + "conv_norm_out." + key.dropFirst(coder.count + "norm_out.".count)
        }
        func resnet(_ rest: String) -> String? {
            for part in ["norm1.", "conv1.", "norm2.", "conv2."] where rest.hasPrefix(part) { return rest }
            return rest.hasPrefix("nin_shortcut.") ? "conv_shortcut." + rest.dropFirst("nin_shortcut.".count) : nil
        }
        guard let (parts, rest) = split(key, 3) else { return nil }
        let coder = parts[0]
        guard coder == "encoder" || coder == "decoder" else { return nil }
        if parts[1] == "mid" {
            if parts[2] == "block_1" || parts[2] == "block_2" {
                return resnet(rest).map { "\(coder).mid_block.resnets.\(parts[2] == "block_1" ? 0 : 1).\($0)" }
            }
            guard parts[2] == "attn_1" else { return nil }
            let renames = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
            for (from, to) in renames where rest.hasPrefix(from) { return "\(coder).mid_block.attentions.0.\(to)\(rest.dropFirst(from.count))" }
            return nil
        }
        guard (coder == "encoder" && parts[1] == "down") || (coder == "decoder" && parts[1] == "up"),
              let i = Int(parts[2]), i >= 0, i < levels, String(i) == parts[2] else { return nil }
        // The decoder's up.i is diffusers' up_blocks[levels − 1 − i].
        let level = coder == "encoder" ? "down_blocks.\(i)" : "up_blocks.\(levels - 1 - i)"
        if let (inner, tail) = split(rest, 2), inner[0] == "block", let j = Int(inner[1]), j >= 0, String(j) == inner[1] {
            return resnet(tail).map { "\(coder).\(level).resnets.\(j).\($0)" }
        }
        let sampler = coder == "encoder" ? "downsample.conv." : "upsample.conv."
        if rest.hasPrefix(sampler) {
            return "\(coder).\(level).\(coder == "encoder" ? "downsamplers" : "upsamplers").0.conv.\(rest.dropFirst(sampler.count))"
        }
        return nil
    }

    enum OpenCLIPName: Equatable { case name(String), split(stem: String, suffix: String), ignored }

    static func openCLIPName(_ key: String, layers: Int) -> OpenCLIPName? {
        switch key {
        case "token_embedding.weight": return .name("text_model.embeddings.token_embedding.weight")
        case "positional_embedding": return .name("text_model.embeddings.position_embedding.weight")
        case "ln_final.weight": return .name("text_model.final_layer_norm.weight")
        case "ln_final.bias": return .name("text_model.final_layer_norm.bias")
        default: break
        }
        guard key.hasPrefix("transformer.resblocks."), let (parts, rest) = split(String(key.dropFirst("transformer.resblocks.".count)), 1),
              let i = Int(parts[0]), i >= 0, String(i) == parts[0] else { return nil }
        let layer = "text_model.encoder.layers.\(i)"
        var mapped: OpenCLIPName?
        switch rest {
        case "attn.in_proj_weight": mapped = .split(stem: "\(layer).self_attn", suffix: "weight")
        case "attn.in_proj_bias": mapped = .split(stem: "\(layer).self_attn", suffix: "bias")
        default:
            let renames = [("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
                           ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2.")]
            for (from, to) in renames where rest.hasPrefix(from) {
                let tail = rest.dropFirst(from.count)
                guard tail == "weight" || tail == "bias" else { return nil }
                mapped = .name("\(layer).\(to)\(tail)")
            }
        }
        guard let mapped else { return nil }
        // Blocks past the encoder's layers (SD2's last block: diffusers uses the penultimate layer).
        return i >= layers ? .ignored : mapped
    }
}
