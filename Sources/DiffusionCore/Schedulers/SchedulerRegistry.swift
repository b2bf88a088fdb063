/// The schedulers by name: what `diffusion_sampler_params.scheduler` accepts, with the diffusers
/// class each reproduces and the names other tools use for it.
public enum SchedulerRegistry {
    public struct Entry: Sendable {
        public let name: String
        public let diffusersClass: String
        /// Settings (diffusers keys) this scheduler reads beyond the shared beta schedule keys.
        public let settings: [String]
        /// Default number of inference steps when the caller gives 0.
        let defaultSteps: Int?
    }

    public static let shared = ["num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                         "prediction_type", "timestep_spacing", "steps_offset"]

    public static let entries: [Entry] = [
        Entry(name: "ddpm", diffusersClass: "DDPMScheduler",
              settings: ["variance_type", "clip_sample", "clip_sample_range", "thresholding",
                         "dynamic_thresholding_ratio", "sample_max_value"], defaultSteps: nil),
        Entry(name: "ddim", diffusersClass: "DDIMScheduler",
              settings: ["set_alpha_to_one", "clip_sample", "clip_sample_range", "thresholding",
                         "dynamic_thresholding_ratio", "sample_max_value"], defaultSteps: 50),
        Entry(name: "euler", diffusersClass: "EulerDiscreteScheduler",
              settings: ["use_karras_sigmas", "interpolation_type", "final_sigmas_type", "sigma_min", "sigma_max",
                         "timestep_type"], defaultSteps: 50),
        Entry(name: "euler_a", diffusersClass: "EulerAncestralDiscreteScheduler", settings: [], defaultSteps: 50),
        Entry(name: "heun", diffusersClass: "HeunDiscreteScheduler",
              settings: ["use_karras_sigmas", "clip_sample", "clip_sample_range"], defaultSteps: 50),
        Entry(name: "dpmpp_2m", diffusersClass: "DPMSolverMultistepScheduler",
              settings: ["algorithm_type", "solver_order", "solver_type", "use_karras_sigmas", "final_sigmas_type",
                         "lower_order_final", "euler_at_final", "lambda_min_clipped", "thresholding",
                         "dynamic_thresholding_ratio", "sample_max_value"], defaultSteps: 50),
        Entry(name: "pndm", diffusersClass: "PNDMScheduler", settings: ["skip_prk_steps", "set_alpha_to_one"], defaultSteps: 50),
        Entry(name: "lms", diffusersClass: "LMSDiscreteScheduler", settings: ["use_karras_sigmas"], defaultSteps: 50),
        Entry(name: "unipc", diffusersClass: "UniPCMultistepScheduler",
              settings: ["solver_order", "predict_x0", "solver_type", "lower_order_final", "disable_corrector",
                         "use_karras_sigmas", "sigma_min", "sigma_max", "final_sigmas_type", "thresholding", "dynamic_thresholding_ratio",
                         "sample_max_value"], defaultSteps: 50),
        Entry(name: "lcm", diffusersClass: "LCMScheduler",
              settings: ["original_inference_steps", "timestep_scaling", "set_alpha_to_one", "clip_sample",
                         "clip_sample_range", "thresholding", "dynamic_thresholding_ratio", "sample_max_value"],
              defaultSteps: 4),
    ]

    /// Other tools' names (ComfyUI, stable-diffusion.cpp, A1111) → our name + the settings they imply.
    public static let aliases: [(alias: String, name: String, settings: [(String, JSONValue)])] = [
        ("euler_ancestral", "euler_a", []),
        ("k_euler", "euler", []), ("k_euler_a", "euler_a", []), ("k_heun", "heun", []), ("k_lms", "lms", []),
        ("dpm++2m", "dpmpp_2m", []), ("dpmpp_2m_karras", "dpmpp_2m", [("use_karras_sigmas", .bool(true))]),
        ("dpmpp_2m_sde", "dpmpp_2m", [("algorithm_type", .string("sde-dpmsolver++"))]),
        ("dpmpp_2m_sde_karras", "dpmpp_2m", [("algorithm_type", .string("sde-dpmsolver++")), ("use_karras_sigmas", .bool(true))]),
        ("dpmpp_3m", "dpmpp_2m", [("solver_order", .number(3))]),
        ("uni_pc", "unipc", []), ("uni_pc_bh2", "unipc", [("solver_type", .string("bh2"))]),
        ("plms", "pndm", [("skip_prk_steps", .bool(true))]),
        ("euler_karras", "euler", [("use_karras_sigmas", .bool(true))]),
        ("lms_karras", "lms", [("use_karras_sigmas", .bool(true))]),
        ("ddim_trailing", "ddim", [("timestep_spacing", .string("trailing"))]),
    ]

    /// Our name and implied settings for a name, an alias or a diffusers class name; nil if unknown.
    public static func resolve(_ name: String) -> (name: String, settings: [(String, JSONValue)])? {
        if let e = entries.first(where: { $0.name == name || $0.diffusersClass == name }) { return (e.name, []) }
        if let a = aliases.first(where: { $0.alias == name }) { return (a.name, a.settings) }
        return nil
    }

    public static var knownNames: String { entries.map(\.name).joined(separator: ", ") }

    /// The inference steps used when a caller asks for 0: 50 (ddpm: num_train_timesteps, lcm: 4).
    public static func defaultSteps(_ name: String, config: SchedulerConfig) -> Int {
        entries.first { $0.name == name }?.defaultSteps ?? config.numTrainTimesteps
    }

    /// Builds scheduler `name` (already resolved) for `steps` inference steps (0 = its default).
    public static func make(_ name: String, config: SchedulerConfig, steps requested: Int, eta: Float) throws -> Scheduler {
        guard entries.contains(where: { $0.name == name }) else {
            throw DiffusionError(.invalidArgument, "unknown scheduler \"\(name)\" (known: \(knownNames))")
        }
        if eta != 0 && name != "ddim" {
            throw DiffusionError(.invalidArgument, "eta is a setting of ddim only (scheduler \(name))")
        }
        let steps = requested > 0 ? requested : defaultSteps(name, config: config)
        switch name {
        case "ddpm": return try DDPMScheduler(config: config, steps: steps)
        case "ddim": return try DDIMScheduler(config: config, steps: steps, eta: eta)
        case "euler": return try EulerDiscreteScheduler(config: config, steps: steps)
        case "euler_a": return try EulerAncestralDiscreteScheduler(config: config, steps: steps)
        case "heun": return try HeunDiscreteScheduler(config: config, steps: steps)
        case "dpmpp_2m": return try DPMSolverMultistepScheduler(config: config, steps: steps)
        case "pndm": return try PNDMScheduler(config: config, steps: steps)
        case "lms": return try LMSDiscreteScheduler(config: config, steps: steps)
        case "unipc": return try UniPCMultistepScheduler(config: config, steps: steps)
        case "lcm": return try LCMScheduler(config: config, steps: steps)
        default: throw DiffusionError(.internal, "scheduler \(name) has no constructor")
        }
    }
}
