/*
 * libdiffusion — diffusion-model image generation on the CPU, embeddable.
 *
 * This header is the whole public contract: anything not declared here is not public.
 *
 * Usage (errors checked with `if (st != DIFFUSION_OK) puts(diffusion_last_error());`):
 *
 *     diffusion_model_params mp;
 *     diffusion_model_params_init(&mp, sizeof mp);
 *     diffusion_model *model;
 *     diffusion_status st = diffusion_model_load("models/digits", &mp, &model);
 *
 *     diffusion_sampler_params sp;
 *     diffusion_sampler_params_init(&sp, sizeof sp);
 *     sp.scheduler = "ddim"; sp.steps = 50; sp.seed = 1; sp.batch = 4;
 *     diffusion_sampler *s;
 *     st = diffusion_sampler_create(model, &sp, &s);
 *     st = diffusion_sampler_run(s, NULL, NULL);
 *
 *     int32_t shape[4];                        // N, C, H, W
 *     diffusion_sampler_shape(s, shape);
 *     size_t n = (size_t)shape[0] * shape[1] * shape[2] * shape[3];
 *     uint8_t *pixels = malloc(n);             // N x H x W x C, interleaved
 *     st = diffusion_sampler_get_images(s, pixels, n);
 *
 *     diffusion_sampler_free(s);
 *     diffusion_model_free(model);
 *
 * Threads: a diffusion_model is immutable after loading and may be shared by any number of
 * threads. A diffusion_sampler holds one generation's state; use it from one thread at a time
 * (diffusion_sampler_cancel is the exception: any thread, any time). Many samplers may run
 * concurrently on one model.
 *
 * Errors: every fallible function returns a diffusion_status. On failure,
 * diffusion_last_error() returns a message naming the problem; it is per thread (like dlerror)
 * and stays valid until that thread's next call into the library.
 *
 * Ownership: what the library allocates, the library frees. Every *_free accepts NULL.
 *
 * Memory: weights are mapped from their files and stay in their stored dtype. Activation buffers
 * of up to 32 MiB freed after a network evaluation are kept (process-wide, up to 256 MiB) and
 * reused by later evaluations of the same shapes; larger ones go back to the system. A latent
 * pipeline hands its UNet's and text encoder's mapped pages back to the page cache when it is done
 * with them (before decoding, after encoding a prompt), so they do not add to the peak.
 *
 * Parameter structs start with struct_size and are filled with defaults by their *_init
 * function; fields are only ever appended, so a program built against an older header keeps
 * working.
 */
#ifndef DIFFUSION_H
#define DIFFUSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DIFFUSION_VERSION_MAJOR 0
#define DIFFUSION_VERSION_MINOR 3
#define DIFFUSION_VERSION_PATCH 0

/* Result codes. Append-only: new codes are added last, none is ever removed or renumbered. */
typedef enum diffusion_status {
    DIFFUSION_OK = 0,
    /* A NULL pointer, a value out of range, a buffer of the wrong size. */
    DIFFUSION_ERROR_INVALID_ARGUMENT = 1,
    /* A file or folder could not be opened, read or mapped. */
    DIFFUSION_ERROR_IO = 2,
    /* A file is malformed: bad safetensors header, invalid JSON or UTF-8, bad offsets. */
    DIFFUSION_ERROR_INVALID_FILE = 3,
    /* A well-formed config asks for something this version cannot run (the message names the
       key and value). */
    DIFFUSION_ERROR_UNSUPPORTED = 4,
    /* The weights do not fit the config: a tensor is missing or has the wrong shape. */
    DIFFUSION_ERROR_MODEL_MISMATCH = 5,
    /* A run or step was cancelled by diffusion_sampler_cancel or by the progress callback. */
    DIFFUSION_ERROR_CANCELLED = 6,
    /* Guidance was asked of a model that has no unconditional input. */
    DIFFUSION_ERROR_NO_UNCONDITIONAL = 7,
    /* Memory could not be allocated. */
    DIFFUSION_ERROR_OUT_OF_MEMORY = 8,
    /* The call does not fit the object's state (e.g. a step after the last one). */
    DIFFUSION_ERROR_INVALID_STATE = 9,
    /* A bug in the library; please report it with the message. */
    DIFFUSION_ERROR_INTERNAL = 10,
    /* A caller's callback (denoiser, classifier gradient) returned false or non-finite values. */
    DIFFUSION_ERROR_CALLBACK = 11,
} diffusion_status;

typedef struct diffusion_model diffusion_model;
typedef struct diffusion_sampler diffusion_sampler;

/* ---- Version and errors ------------------------------------------------------------------ */

/* MAJOR * 10000 + MINOR * 100 + PATCH of the library actually loaded. */
uint32_t diffusion_version_number(void);
/* "MAJOR.MINOR.PATCH", static storage. */
const char *diffusion_version_string(void);
/* A static name for a status ("DIFFUSION_ERROR_IO"); "unknown status" for other values. */
const char *diffusion_status_string(diffusion_status status);
/* The message of the calling thread's last failed call, or "" if there is none. Valid until
   the thread's next call into the library. Never NULL. */
const char *diffusion_last_error(void);

/* ---- Models ------------------------------------------------------------------------------ */

/* How a model's UNet and VAE compute their convolutions and linear layers. */
typedef enum diffusion_precision {
    /* float32 throughout (default): results within 1e-4 of diffusers in float32. */
    DIFFUSION_PRECISION_F32 = 0,
    /* The fast mode: weights and activations rounded to bfloat16, products summed in float32
       (AVX512-BF16 vdpbf16ps; on a CPU without it, an exact emulation: the same bytes, slower).
       Norms, softmax, attention, activations, the text encoder and the scheduler stay float32.
       0.6-2.4e-2 relative error per network evaluation (OpenVINO's bf16: 1.6-2.5e-2). */
    DIFFUSION_PRECISION_BF16 = 1
} diffusion_precision;

typedef struct diffusion_model_params {
    uint32_t struct_size;
    /* Threads used by this model's network evaluations; 0 (default) = the CPUs this process may
       run on (its affinity mask: taskset, cpusets). */
    int32_t n_threads;
    /* Weight files: false (default) reads <name>.safetensors and falls back to the fp16 variant
       <name>.fp16.safetensors when the plain file is absent; true prefers the fp16 variant. */
    bool prefer_fp16;
    /* Memory the model may plan for, in bytes; 0 (default) = what the process can have: physical
       memory, lowered by RLIMIT_AS / RLIMIT_DATA and the cgroup's memory.max.
       Loading weights larger than it, and creating a sampler, predicting, encoding or decoding
       whose weights plus estimated working memory exceed it, return DIFFUSION_ERROR_OUT_OF_MEMORY
       with the numbers in the message (checked before anything is allocated). The weights
       count their packed copies beyond the stored tensors (F32 Winograd panels). An allocation
       the system refuses anyway (an estimate is not exact) also returns OUT_OF_MEMORY. */
    uint64_t memory_limit;
    /* DIFFUSION_PRECISION_F32 (default) or DIFFUSION_PRECISION_BF16. */
    int32_t precision;
    /* For a single-file checkpoint (path names a .safetensors file in the original Stable
       Diffusion 1.x / 2.x layout: model.diffusion_model.*, first_stage_model.*,
       cond_stage_model.*): a diffusers pipeline folder whose configs, tokenizer and scheduler
       describe it (its weight files, if any, are not read). NULL (default) for a folder path;
       a single file without it is DIFFUSION_ERROR_UNSUPPORTED. The file's extra keys (DDPM
       schedule buffers, model_ema.*, position_ids, text_projection, logit_scale, SD2's last
       text block) are ignored; any other key the model does not use, or a missing one, is
       DIFFUSION_ERROR_MODEL_MISMATCH naming it. */
    const char *config_from;
    /* A standalone VAE file (original layout without prefix, as
       vae-ft-mse-840000-ema-pruned.safetensors) whose weights replace a Stable Diffusion
       pipeline's VAE; its config stays the pipeline's. NULL (default): the pipeline's own. */
    const char *vae;
} diffusion_model_params;

/* Fills *params with defaults: the first struct_size bytes (pass sizeof(diffusion_model_params)
 * as compiled by the caller, so a program built against an older header is never written past
 * its struct) and sets params->struct_size. NULL is ignored. */
void diffusion_model_params_init(diffusion_model_params *params, size_t struct_size);

/* Loads a model from a local folder in the diffusers layout, either
 *   - a model folder: config.json + diffusion_pytorch_model.safetensors
 *     (+ optional scheduler_config.json), or
 *   - a pipeline folder: model_index.json with unet/ (as above) and optional scheduler/
 *     (scheduler_config.json); a Stable Diffusion 1.x / 2.x pipeline (UNet2DConditionModel) also
 *     needs text_encoder/ (config.json + model.safetensors), tokenizer/ (vocab.json, merges.txt,
 *     optional tokenizer_config.json / special_tokens_map.json) and vae/ (AutoencoderKL).
 *     Components the library does not run (safety_checker, feature_extractor, ...) are ignored.
 * Weights may be the fp16 variant files (see prefer_fp16); pickle .bin files are refused. Weights
 * stay in their stored dtype, mapped from the file.
 * Weights may be stored as F32, F16 or BF16. Every byte is validated before use.
 * path may also be a single-file checkpoint in the original SD 1.x / 2.x layout, with
 * params->config_from naming the pipeline folder that describes it (see config_from).
 * params may be NULL (defaults). On success *out_model owns the model; free it with
 * diffusion_model_free. On failure *out_model is set to NULL. */
diffusion_status diffusion_model_load(const char *path, const diffusion_model_params *params,
                                      diffusion_model **out_model);

/* Frees a model. NULL is a no-op, and so is a pointer that is not a live model (a double free
 * is caught, unless the address has been reused by a newer model). A model may be freed while
 * samplers made from it still exist: each sampler keeps the weights alive until it is freed. */
void diffusion_model_free(diffusion_model *model);

typedef struct diffusion_model_info {
    uint32_t struct_size;       /* set by the caller to sizeof(diffusion_model_info) */
    int32_t in_channels;        /* channels of x_t */
    int32_t out_channels;       /* channels the network predicts */
    int32_t sample_size;        /* default height (and width, unless sample_width differs); 0 = none */
    int32_t num_class_embeds;   /* 0 = not class-conditional */
    int32_t sample_width;       /* default width; 0 = none */
    int32_t null_class_label;   /* the unconditional class used for guidance; -1 = none */
    int32_t latent_channels;    /* channels of x_t (a sampler's channels); in_channels may add
                                   conditioning channels (inpainting: 9 = 4 + mask + 4) */
    int32_t vae_scale_factor;   /* pixels per latent along each side; 1 = a pixel-space model */
    int32_t context_length;     /* text tokens per prompt (77); 0 = no text conditioning */
    int32_t context_width;      /* width of each token's text state (SD1 768, SD2 1024) */
    int32_t precision;          /* the diffusion_precision the model was loaded with */
    bool precision_native;      /* true when this CPU runs it natively (bf16: AVX512-BF16);
                                   false when emulated. Always true for F32. */
} diffusion_model_info;

/* Fills *info (whose struct_size the caller has set) with the model's shape. Only the first
 * struct_size bytes are written, so callers built against an older header keep working. */
diffusion_status diffusion_model_get_info(const diffusion_model *model, diffusion_model_info *info);

/* The model's configuration as the library understood it: a JSON object
 * {"unet": {...every UNet2DModel key, defaults filled in...}, "scheduler": {...}}.
 * *out_json is owned by the model and valid until diffusion_model_free; NULL on failure. */
diffusion_status diffusion_model_config_json(const diffusion_model *model, const char **out_json);

/* One network evaluation on caller buffers.
 *   x:            float32 [batch, channels, height, width], NCHW contiguous; channels must be
 *                 the model's in_channels (it is passed so that a mismatch is an error, not a
 *                 read past the caller's buffer)
 *   timesteps:    batch float values
 *   class_labels: batch labels in [0, num_class_embeds), or NULL for a model without classes
 *   out:          float32 [batch, out_channels, height, width]; out_count is its element count
 * Thread-safe: many threads may call it on one model at once. */
diffusion_status diffusion_model_predict(const diffusion_model *model, const float *x,
                                         int32_t batch, int32_t channels, int32_t height, int32_t width,
                                         const float *timesteps, const int32_t *class_labels,
                                         float *out, size_t out_count);

/* ---- Samplers ---------------------------------------------------------------------------- */

typedef struct diffusion_sampler_params {
    uint32_t struct_size;
    /* A scheduler name (see diffusion_scheduler_names; also the ComfyUI / stable-diffusion.cpp
       aliases and diffusers class names listed in the README). NULL (default) = the model's
       scheduler_config.json _class_name, or "ddpm" if it has none (and for a caller's denoiser).
       Copied; need not outlive the call. */
    const char *scheduler;
    /* Number of inference steps; 0 (default) = the diffusers pipeline default (ddpm:
       num_train_timesteps, lcm: 4, others: 50). Heun and PNDM's Runge-Kutta warm-up evaluate the
       network more than once per step: the sampler's steps (progress, timesteps) count network
       evaluations ("iterations"), e.g. heun with 10 steps runs 19. */
    int32_t steps;
    /* Seed of the sampler's random generator. The default generator reproduces
       torch.randn(..., generator=torch.Generator().manual_seed(seed)) on CPU, and noise is
       drawn in the order of diffusers' pipelines, so a seed gives diffusers' images. */
    uint64_t seed;
    /* Images generated together (default 1). */
    int32_t batch;
    /* Image size; 0 (default) = the model's sample_size. */
    int32_t height;
    int32_t width;
    /* DDIM's eta (0 = deterministic DDIM, 1 = DDPM-like noise). Must be 0 for other schedulers. */
    float eta;
    /* Optional JSON object of scheduler settings with diffusers' keys (e.g.
       {"timestep_spacing": "trailing", "clip_sample": false}), applied over the model's
       scheduler_config.json. A key absent from both takes the diffusers class's default.
       NULL (default) = none. Copied; need not outlive the call. */
    const char *scheduler_config_json;
    /* Channels of the sample. 0 (default) = the model's in_channels; required (> 0) with
       diffusion_sampler_create_with_denoiser, as are height and width. */
    int32_t channels;
    /* Text pipelines (Stable Diffusion): the prompt and the negative prompt (NULL = ""), UTF-8,
       copied. The prompt is encoded when the sampler is created; every image of the batch gets it
       (use diffusion_sampler_set_prompt_embeddings for different prompts per image). */
    const char *prompt;
    const char *negative_prompt;
    /* CLIP layers to skip for the prompt, as diffusers' clip_skip (0 = none; 1 = the second-to-last
       layer's output, through the final LayerNorm). Not applied to the negative prompt. */
    int32_t clip_skip;
} diffusion_sampler_params;

/* Fills *params with defaults: the first struct_size bytes (pass sizeof(diffusion_sampler_params))
 * and sets params->struct_size. NULL is ignored. */
void diffusion_sampler_params_init(diffusion_sampler_params *params, size_t struct_size);

/* Creates a sampler and draws its start noise x_T. params may be NULL (defaults). The sampler
 * keeps the model alive (diffusion_model_free may come first). On failure *out_sampler is set to
 * NULL. */
diffusion_status diffusion_sampler_create(const diffusion_model *model,
                                          const diffusion_sampler_params *params,
                                          diffusion_sampler **out_sampler);

/* A network supplied by the caller ("bring your own denoiser"): fills out with the network's
 * output for the model input x at timestep, exactly what a diffusers pipeline passes to its
 * network: x = the scheduler's scaled model input (scale_model_input), shape = {batch, channels,
 * height, width} of x (float32 NCHW), timestep = the scheduler's timestep (fractional for some
 * schedulers). out has batch x out_channels x height x width values: out_channels = channels, or
 * 2 x channels for ddpm with variance_type learned / learned_range. Return false on failure: the
 * step returns DIFFUSION_ERROR_CALLBACK (the sample is unchanged; the step can be retried). */
typedef bool (*diffusion_denoise_fn)(const float *x, const int32_t shape[4], float timestep,
                                     float *out, int32_t out_channels, void *user_data);

/* Creates a sampler without a model: denoise is its network. params must give channels, height
 * and width (batch defaults to 1); the scheduler settings come from params->scheduler_config_json
 * over the scheduler's diffusers defaults. The start noise is randn(shape) x the scheduler's
 * init_noise_sigma, as the pipelines do. Guidance scale and class labels do not apply (the
 * callback does its own conditioning). user_data is passed through untouched. */
diffusion_status diffusion_sampler_create_with_denoiser(diffusion_denoise_fn denoise, void *user_data,
                                                        const diffusion_sampler_params *params,
                                                        diffusion_sampler **out_sampler);

/* Frees a sampler. NULL, or a pointer that is not a live sampler, is a no-op. */
void diffusion_sampler_free(diffusion_sampler *sampler);

/* Classifier-free guidance: eps = eps_uncond + scale * (eps_cond - eps_uncond); 1 (the default)
 * means no guidance. The conditional and unconditional inputs go through the network as one batch
 * of two.
 * The unconditional input: a class-conditional model has one when its config.json names the label
 * it was trained on as "no class" (label dropout) in the key "_null_class_label" (libdiffusion's
 * convention; diffusers ignores keys starting with "_"). The shipped digits model uses
 * num_class_embeds 11 with _null_class_label 10. diffusion_model_info.null_class_label reports it.
 * A scale other than 1 on a model without an unconditional input returns
 * DIFFUSION_ERROR_NO_UNCONDITIONAL. */
diffusion_status diffusion_sampler_set_guidance_scale(diffusion_sampler *sampler, float scale);

/* Class labels for a class-conditional model: count == 1 gives every image of the batch the
 * same label, count == batch gives one each. Labels must be in [0, num_class_embeds).
 * The default label is 0. */
diffusion_status diffusion_sampler_set_class_label(diffusion_sampler *sampler,
                                                   const int32_t *labels, int32_t count);

/* Classifier guidance (Dhariwal & Nichol): gradient fills grad (same shape as x) with
 * grad_x log p(y | x_t) for the model input x at timestep (the same x and timestep the network
 * gets; channels = the sample's). scale is the gradient scale s. ddpm applies it as the paper's
 * Algorithm 1 (the step's mean moves by s * variance * grad); every other scheduler through the
 * eps-form of Algorithm 2: eps' = eps - sqrt(1 - alpha_bar_t) * s * grad, with alpha_bar_t the
 * noise level of the step (for sigma schedulers 1 / (1 + sigma^2)), converted to the model's
 * prediction type. gradient NULL or scale 0 turns it off. A false return or a non-finite gradient
 * makes the step return DIFFUSION_ERROR_CALLBACK. */
typedef bool (*diffusion_gradient_fn)(const float *x, const int32_t shape[4], float timestep,
                                      float *grad, void *user_data);
diffusion_status diffusion_sampler_set_classifier_guidance(diffusion_sampler *sampler,
                                                           diffusion_gradient_fn gradient,
                                                           void *user_data, float scale);

/* img2img: start from an image instead of pure noise (a latent model encodes it with its VAE,
 * drawing the posterior sample before the start noise, as diffusers' img2img pipeline: the start
 * noise is drawn anew from the seed after it, replacing any diffusion_sampler_set_start_noise;
 * diffusion_sampler_set_mask does the same). strength in (0, 1] picks how much of the
 * schedule runs, as diffusers' img2img pipelines do: init = min(int(steps * strength), steps),
 * the first (steps - init) x order iterations are skipped, and the image is noised to the level of
 * the first remaining one with the sampler's start noise (add_noise). strength 1 starts from
 * (almost) pure noise. Call before the first step (else DIFFUSION_ERROR_INVALID_STATE).
 * set_init_latents takes x_0 as float32 NCHW: count = batch x channels x height x width, or
 * channels x height x width for one image used for the whole batch. set_init_image takes 8-bit
 * pixels (NHWC of diffusion_sampler_image_shape, as get_images gives them; size = batch x height x
 * width x channels, or one image) and maps them to pixel / 255 * 2 - 1 like diffusers' image
 * processor (then VAE-encodes them for a latent model). After it the
 * sampler's timesteps and progress cover only the remaining iterations. */
diffusion_status diffusion_sampler_set_init_latents(diffusion_sampler *sampler, const float *latents,
                                                    size_t count, double strength);
diffusion_status diffusion_sampler_set_init_image(diffusion_sampler *sampler, const uint8_t *pixels,
                                                  size_t size, double strength);

/* Replaces the sampler's unit start noise (before the first step) with noise, count = batch x
 * channels x height x width: x_T becomes noise x init_noise_sigma (or the init image noised with
 * it). With diffusion_noise and diffusion_slerp it renders smooth morphs between seeds. */
diffusion_status diffusion_sampler_set_start_noise(diffusion_sampler *sampler, const float *noise,
                                                   size_t count);

/* The sampler's shape: shape[0..3] = batch, channels, height, width. */
diffusion_status diffusion_sampler_shape(const diffusion_sampler *sampler, int32_t shape[4]);

/* The timesteps the sampler visits, in order. Writes min(capacity, total) values to out (out may
 * be NULL when capacity is 0) and the total to *count. */
diffusion_status diffusion_sampler_timesteps(const diffusion_sampler *sampler, float *out,
                                             size_t capacity, size_t *count);

/* Copies the current sample x_t (float32 NCHW) out of / into the sampler. count must be
 * batch * channels * height * width. set_latents replaces x_t before the next step; it does not
 * rewind the schedule. */
diffusion_status diffusion_sampler_get_latents(const diffusion_sampler *sampler, float *out,
                                               size_t count);
diffusion_status diffusion_sampler_set_latents(diffusion_sampler *sampler, const float *latents,
                                               size_t count);

/* Runs one step (one network evaluation, or two inputs batched for guidance). *remaining, if not
 * NULL, receives the number of steps left after this one. A step when none is left returns
 * DIFFUSION_ERROR_INVALID_STATE. A pending cancel is consumed and returns
 * DIFFUSION_ERROR_CANCELLED without stepping. Non-finite values never reach the images silently:
 * a non-finite x_t (set_latents, start noise, init image) is INVALID_ARGUMENT, a non-finite network
 * output INVALID_FILE (NaN or infinite weights), a scheduler that degenerates (settings whose noise
 * levels repeat or vanish) INVALID_ARGUMENT; x_t is left as it was. */
diffusion_status diffusion_sampler_step(diffusion_sampler *sampler, int32_t *remaining);

/* Called after each step of diffusion_sampler_run: step is 1-based, timestep the one just
 * done. Return false to cancel the run. */
typedef bool (*diffusion_progress_fn)(int32_t step, int32_t total_steps, float timestep,
                                      void *user_data);

/* Runs the remaining steps (none left: returns DIFFUSION_OK at once). progress may be NULL; its
 * step and total count the whole schedule, so a resumed run continues the count. If the callback
 * returns false or diffusion_sampler_cancel is called during the run, returns
 * DIFFUSION_ERROR_CANCELLED after the current step; a cancel requested before the call stops it
 * before the first step. The sampler keeps the last x_t and can continue with step or run. */
diffusion_status diffusion_sampler_run(diffusion_sampler *sampler, diffusion_progress_fn progress,
                                       void *user_data);

/* Where the sampler is: *done steps of *total (either may be NULL). */
diffusion_status diffusion_sampler_progress(const diffusion_sampler *sampler, int32_t *done,
                                            int32_t *total);

/* The stages of a generation. A text pipeline encodes its prompt (unless embeddings were given)
 * at the first step, denoises, and decodes its latents with the VAE in get_images. */
typedef enum diffusion_stage {
    DIFFUSION_STAGE_TEXT_ENCODING = 0,
    DIFFUSION_STAGE_DENOISING = 1,
    DIFFUSION_STAGE_DECODING = 2,
} diffusion_stage;

/* Called with (stage, done, total): text encoding 0 then 1 of 1; denoising after each step of
 * diffusion_sampler_run (done of the run's steps); decoding before each image and after the last
 * (done images of total). Return false to cancel: the call in progress returns
 * DIFFUSION_ERROR_CANCELLED (x_t kept; the sampler can go on). fn NULL removes it. Runs on the
 * thread of the call that does the work. */
typedef bool (*diffusion_stage_fn)(diffusion_stage stage, int32_t done, int32_t total, void *user_data);
diffusion_status diffusion_sampler_set_stage_callback(diffusion_sampler *sampler, diffusion_stage_fn fn,
                                                      void *user_data);

/* Asks a running diffusion_sampler_run (or the next step/run) to stop. Any thread may call it,
 * during any stage: before and after the prompt's encoding, between steps, and between the images
 * get_images decodes (the call then returns DIFFUSION_ERROR_CANCELLED). NULL is a no-op. */
void diffusion_sampler_cancel(diffusion_sampler *sampler);

/* The finished run's images as 8-bit pixels: image_shape's batch x height x width x channels,
 * interleaved, each value round(clamp(x / 2 + 0.5, 0, 1) * 255) of the decoded sample x_0 as
 * diffusers' pipelines do (a pixel-space model's x_0 is the image; a latent model's is decoded by
 * its VAE). size must be batch * height * width * channels of diffusion_sampler_image_shape.
 * Before the last step: DIFFUSION_ERROR_INVALID_STATE (use diffusion_sampler_get_preview_images). */
diffusion_status diffusion_sampler_get_images(const diffusion_sampler *sampler, uint8_t *out,
                                              size_t size);

/* The shape of the images get_images writes: shape[0..3] = batch, height, width, channels (for a
 * latent model the VAE's pixel size, not the latents'). */
diffusion_status diffusion_sampler_image_shape(const diffusion_sampler *sampler, int32_t shape[4]);

/* The current sample x_t decoded like get_images at any point of the run (a preview, e.g. from a
 * progress callback's thread between steps): the same size and mapping. */
diffusion_status diffusion_sampler_get_preview_images(const diffusion_sampler *sampler, uint8_t *out,
                                                      size_t size);

/* ---- Text and latent pipelines (Stable Diffusion) ----------------------------------------- */

/* The token ids of text as the pipeline's CLIP tokenizer gives them (padded with its pad token
 * and truncated to context_length, start and end tokens included). Writes min(capacity, total)
 * ids and the total (context_length) to *count. Invalid UTF-8 is INVALID_ARGUMENT. */
diffusion_status diffusion_model_tokenize(const diffusion_model *model, const char *text, int32_t *ids,
                                          size_t capacity, size_t *count);

/* The text states of prompt (diffusers' encode_prompt): out holds context_length x context_width
 * floats (count). clip_skip as in diffusion_sampler_params. */
diffusion_status diffusion_model_encode_prompt(const diffusion_model *model, const char *prompt,
                                               int32_t clip_skip, float *out, size_t count);

/* VAE encode: images float32 [batch, 3, height, width] in [-1, 1] (sizes multiples of
 * vae_scale_factor) -> latents [batch, latent_channels, height / f, width / f] =
 * z x scaling_factor, with z the posterior's mean (seed NULL) or a sample drawn from
 * torch.Generator().manual_seed(*seed), as diffusers' latent_dist.sample(generator). */
diffusion_status diffusion_model_vae_encode(const diffusion_model *model, const float *images, int32_t batch,
                                            int32_t height, int32_t width, const uint64_t *seed,
                                            float *latents, size_t count);

/* VAE decode: latents [batch, latent_channels, height, width] -> images float32
 * [batch, 3, height x f, width x f], the decoder's raw output for latents / scaling_factor
 * (unclamped; map with x / 2 + 0.5). Large images are decoded in tiles (diffusers' tiled decode). */
diffusion_status diffusion_model_vae_decode(const diffusion_model *model, const float *latents, int32_t batch,
                                            int32_t height, int32_t width, float *images, size_t count);

/* One network evaluation with any conditioning (a params struct, so it can grow). */
typedef struct diffusion_predict_params {
    uint32_t struct_size;
    /* float32 [batch, channels, height, width]: channels = in_channels (an inpainting UNet's x_t,
       mask and masked-image latents concatenated, as diffusers' UNet takes them). */
    const float *x;
    int32_t batch, channels, height, width;
    const float *timesteps;        /* batch values */
    const int32_t *class_labels;   /* batch labels, or NULL for a model without classes */
    /* Text states float32 [batch, context_tokens, context_width], or NULL for a model without text
       conditioning. */
    const float *context;
    int32_t context_tokens;
    int32_t context_width;
    float *out;                    /* float32 [batch, out_channels, height, width] */
    size_t out_count;
} diffusion_predict_params;

void diffusion_predict_params_init(diffusion_predict_params *params, size_t struct_size);
/* Thread-safe like diffusion_model_predict. */
diffusion_status diffusion_model_predict_ex(const diffusion_model *model, const diffusion_predict_params *params);

/* diffusers' guidance_rescale in [0, 1] (default 0): the guided prediction is mixed with itself
 * rescaled to the conditional prediction's standard deviation (per image). Text pipelines only
 * guide when the scale is above 1 (diffusers' rule): a scale <= 1 runs no unconditional pass. */
diffusion_status diffusion_sampler_set_guidance_rescale(diffusion_sampler *sampler, float rescale);

/* Caller-given text states instead of the prompts: embeddings (and negative_embeddings, or NULL
 * for the empty negative prompt's) hold batch x context_length x context_width floats each
 * (count), one prompt's states per image. Before or between steps. */
diffusion_status diffusion_sampler_set_prompt_embeddings(diffusion_sampler *sampler, const float *embeddings,
                                                         const float *negative_embeddings, size_t count);

/* Inpainting (StableDiffusionInpaintPipeline): image as for set_init_image (8-bit NHWC RGB of the
 * image shape, one image or batch), mask 8-bit (height x width, one or batch planes; white = repaint,
 * binarised at 128), strength in (0, 1] (1 = start from noise). A 9-channel inpainting UNet gets the
 * mask and the masked image's latents; a 4-channel UNet keeps the unmasked region after each step.
 * Before the first step. */
diffusion_status diffusion_sampler_set_mask(diffusion_sampler *sampler, const uint8_t *image, size_t image_size,
                                            const uint8_t *mask, size_t mask_size, double strength);

/* ---- Schedulers, noise and interpolation ------------------------------------------------- */

/* The scheduler names, a NULL-terminated static array: ddpm, ddim, euler, euler_a, heun,
 * dpmpp_2m, pndm, lms, unipc, lcm. */
const char *const *diffusion_scheduler_names(void);

/* What a scheduler name (or alias, or diffusers class name) means, as a static JSON object:
 * {"name", "diffusers_class", "implied": {settings the alias sets}, "settings": [diffusers keys it
 * reads], "defaults": {its diffusers defaults of the shared keys}, "default_steps"}. An unknown
 * name returns DIFFUSION_ERROR_INVALID_ARGUMENT listing the known ones. The string lives until
 * the library is unloaded. */
diffusion_status diffusion_scheduler_info_json(const char *name, const char **out_json);

/* The start noise of a seed: count (at most 2^32) values of torch.randn(count, generator=
 * torch.Generator().manual_seed(seed)), i.e. what a sampler with that seed and count =
 * batch x channels x height x width draws first. */
diffusion_status diffusion_noise(uint64_t seed, float *out, size_t count);

/* Spherical interpolation of a and b (count values each) at t in [0, 1]: with theta the angle
 * between them, (sin((1 - t) theta) a + sin(t theta) b) / sin(theta); linear when they are nearly
 * parallel. out may alias a or b. For a morph, interpolate the start noise of two seeds image by
 * image and pass it to diffusion_sampler_set_start_noise. */
diffusion_status diffusion_slerp(const float *a, const float *b, size_t count, float t, float *out);

#ifdef __cplusplus
}
#endif

#endif /* DIFFUSION_H */
