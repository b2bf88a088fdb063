// libFuzzer targets over the C API (issue 10). One file, one target per build: -DFUZZ_TARGET=N.
//
//   safetensors       the UNet weight file of a small model folder (header, tensor table, data)
//   unet_config       its config.json
//   scheduler_config  a sampler's scheduler_config_json (first byte picks the scheduler)
//   pipeline_config   a config of a tiny Stable Diffusion pipeline (first byte picks which:
//                     model_index, unet, vae, text encoder, tokenizer configs, scheduler)
//   tokenizer         its vocab.json or merges.txt (first byte picks)
//   prompt            any bytes as a prompt: tokenize and encode
//   single_file       a single-file SD checkpoint (original key layout) loaded with config_from
//                     the tiny SD pipeline: the key maps of the UNet, VAE, CLIP and OpenCLIP
//
// Each input is written into a private copy of a fixture folder (made once, under /dev/shm when it
// exists), then the library loads it and, when that works, runs a little of everything that reads
// what was loaded. Errors are expected; a crash, a sanitizer report, a timeout or an out-of-memory
// is a finding. Built by `make fuzz` with libFuzzer and ASan; built without them by `make test`
// with fuzz_main.c, which replays Tests/fuzz/regressions/<target>/* (every finding's input).
#define _GNU_SOURCE
#include "diffusion.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Helpers each target uses some of. */
#define HELPER __attribute__((unused)) static

#define TARGET_safetensors 1
#define TARGET_unet_config 2
#define TARGET_scheduler_config 3
#define TARGET_pipeline_config 4
#define TARGET_tokenizer 5
#define TARGET_prompt 6
#define TARGET_single_file 7

static char g_dir[4096];

HELPER const char *fixtures(void) {
    const char *f = getenv("FUZZ_FIXTURES");
    return f ? f : "Tests/Fixtures";
}

/* A private copy of fixture folder `name` (relative to the fixtures). */
HELPER void copy_fixture(const char *name) {
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(g_dir, sizeof g_dir, "%s/libdiffusion-fuzz-%d", base, (int)getpid());
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -rL '%s/%s' '%s'", g_dir, fixtures(), name, g_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "fuzz: cannot copy %s/%s\n", fixtures(), name);
        exit(2);
    }
}

HELPER void write_file(const char *relative, const uint8_t *data, size_t size) {
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", g_dir, relative);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        fprintf(stderr, "fuzz: cannot write %s\n", path);
        exit(2);
    }
}

/* Originals of files a target rewrites, put back before each input. */
typedef struct {
    const char *path;
    uint8_t *data;
    size_t size;
} original;

static original g_originals[8];
static int g_original_count;

HELPER void keep_original(const char *relative) {
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", g_dir, relative);
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "fuzz: cannot read %s\n", path); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    original *o = &g_originals[g_original_count++];
    o->path = relative;
    o->size = (size_t)n;
    o->data = malloc(o->size + 1);
    if (fread(o->data, 1, o->size, f) != o->size) { fprintf(stderr, "fuzz: cannot read %s\n", path); exit(2); }
    fclose(f);
}

HELPER void restore_originals(void) {
    for (int i = 0; i < g_original_count; i++) write_file(g_originals[i].path, g_originals[i].data, g_originals[i].size);
}

HELPER diffusion_model *load_dir(void) {
    diffusion_model_params mp;
    diffusion_model_params_init(&mp, sizeof mp);
    mp.n_threads = 1;
    mp.memory_limit = 4ull << 30; /* what libFuzzer's -rss_limit_mb allows, less the fuzzer's own */
    diffusion_model *m = NULL;
    if (diffusion_model_load(g_dir, &mp, &m) != DIFFUSION_OK) return NULL;
    return m;
}

/* A little of everything a loaded pixel model does. */
HELPER void exercise_pixel_model(diffusion_model *m) {
    diffusion_model_info info;
    info.struct_size = sizeof info;
    if (diffusion_model_get_info(m, &info) != DIFFUSION_OK) return;
    const char *json = NULL;
    (void)diffusion_model_config_json(m, &json);
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.steps = 2;
    sp.height = sp.width = 16;
    diffusion_sampler *s = NULL;
    if (diffusion_sampler_create(m, &sp, &s) == DIFFUSION_OK) {
        int32_t label = 0;
        (void)diffusion_sampler_set_class_label(s, &label, 1);
        (void)diffusion_sampler_run(s, NULL, NULL);
        diffusion_sampler_free(s);
    }
}

/* A little of everything a loaded text-to-image pipeline does. */
HELPER void exercise_pipeline(diffusion_model *m, const char *prompt) {
    int32_t ids[128];
    size_t count = 0;
    (void)diffusion_model_tokenize(m, prompt, ids, 128, &count);
    diffusion_model_info info;
    info.struct_size = sizeof info;
    if (diffusion_model_get_info(m, &info) != DIFFUSION_OK) return;
    size_t n = (size_t)info.context_length * (size_t)info.context_width;
    if (n > 0 && n < (1u << 24)) {
        float *states = malloc(n * sizeof(float));
        if (states) (void)diffusion_model_encode_prompt(m, prompt, 0, states, n);
        free(states);
    }
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.steps = 1;
    sp.prompt = prompt;
    diffusion_sampler *s = NULL;
    if (diffusion_sampler_create(m, &sp, &s) == DIFFUSION_OK) {
        (void)diffusion_sampler_set_guidance_scale(s, 2);
        if (diffusion_sampler_run(s, NULL, NULL) == DIFFUSION_OK) {
            int32_t shape[4];
            if (diffusion_sampler_image_shape(s, shape) == DIFFUSION_OK) {
                size_t bytes = (size_t)shape[0] * shape[1] * shape[2] * shape[3];
                uint8_t *pixels = bytes < (1u << 26) ? malloc(bytes) : NULL;
                if (pixels) (void)diffusion_sampler_get_images(s, pixels, bytes);
                free(pixels);
            }
        }
        diffusion_sampler_free(s);
    }
}

HELPER char *c_string(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = 0;
    return s;
}

HELPER const char *const pipeline_files[] = {
    "model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
    "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "scheduler/scheduler_config.json",
};
HELPER const char *const tokenizer_files[] = {"tokenizer/vocab.json", "tokenizer/merges.txt"};
enum { PIPELINE_FILES = sizeof pipeline_files / sizeof *pipeline_files };

HELPER diffusion_model *g_pipeline; /* prompt: loaded once */
HELPER float *g_states;
HELPER size_t g_state_count;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
#if FUZZ_TARGET == TARGET_safetensors
    copy_fixture("unet/attn_head_dim4");
    keep_original("diffusion_pytorch_model.safetensors");
#elif FUZZ_TARGET == TARGET_unet_config
    copy_fixture("unet/attn_head_dim4");
    keep_original("config.json");
#elif FUZZ_TARGET == TARGET_scheduler_config
    copy_fixture("unet/plain");
#elif FUZZ_TARGET == TARGET_pipeline_config
    copy_fixture("sd/sd1");
    for (int i = 0; i < PIPELINE_FILES; i++) keep_original(pipeline_files[i]);
#elif FUZZ_TARGET == TARGET_tokenizer
    copy_fixture("sd/sd1");
    keep_original(tokenizer_files[0]);
    keep_original(tokenizer_files[1]);
#elif FUZZ_TARGET == TARGET_prompt
    copy_fixture("sd/sd1");
    g_pipeline = load_dir();
    if (!g_pipeline) { fprintf(stderr, "fuzz: cannot load %s: %s\n", g_dir, diffusion_last_error()); exit(2); }
    diffusion_model_info info;
    info.struct_size = sizeof info;
    if (diffusion_model_get_info(g_pipeline, &info) != DIFFUSION_OK) exit(2);
    g_state_count = (size_t)info.context_length * (size_t)info.context_width;
    g_states = malloc(g_state_count * sizeof(float));
#elif FUZZ_TARGET == TARGET_single_file
    copy_fixture("sd/sd1");
#else
#error "define FUZZ_TARGET"
#endif
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
#if FUZZ_TARGET == TARGET_safetensors || FUZZ_TARGET == TARGET_unet_config
    restore_originals();
    write_file(g_originals[0].path, data, size);
    diffusion_model *m = load_dir();
    if (m) {
        exercise_pixel_model(m);
        diffusion_model_free(m);
    }
#elif FUZZ_TARGET == TARGET_scheduler_config
    static const char *const names[] = {"ddpm", "ddim", "euler", "euler_a", "heun", "dpmpp_2m", "pndm", "lms", "unipc", "lcm"};
    static diffusion_model *m;
    if (!m && !(m = load_dir())) { fprintf(stderr, "fuzz: cannot load %s\n", g_dir); exit(2); }
    if (size < 1) return 0;
    char *json = c_string(data + 1, size - 1);
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.scheduler = names[data[0] % 10];
    sp.steps = 1 + data[0] / 10 % 4;
    sp.eta = (float)(data[0] & 1);
    sp.scheduler_config_json = json;
    diffusion_sampler *s = NULL;
    if (diffusion_sampler_create(m, &sp, &s) == DIFFUSION_OK) {
        float ts[64];
        size_t total = 0;
        (void)diffusion_sampler_timesteps(s, ts, 64, &total);
        (void)diffusion_sampler_run(s, NULL, NULL);
        diffusion_sampler_free(s);
    }
    free(json);
#elif FUZZ_TARGET == TARGET_pipeline_config || FUZZ_TARGET == TARGET_tokenizer
    if (size < 1) return 0;
    restore_originals();
    write_file(g_originals[data[0] % g_original_count].path, data + 1, size - 1);
    diffusion_model *m = load_dir();
    if (m) {
        exercise_pipeline(m, "a photo of a cat, <|endoftext|> 123 don't");
        diffusion_model_free(m);
    }
#elif FUZZ_TARGET == TARGET_prompt
    char *prompt = c_string(data, size);
    int32_t ids[80];
    size_t count = 0;
    (void)diffusion_model_tokenize(g_pipeline, prompt, ids, 80, &count);
    if (size < 4096) (void)diffusion_model_encode_prompt(g_pipeline, prompt, (int32_t)(size % 3), g_states, g_state_count);
    free(prompt);
#elif FUZZ_TARGET == TARGET_single_file
    write_file("checkpoint.safetensors", data, size);
    char path[8192];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", g_dir);
    diffusion_model_params mp;
    diffusion_model_params_init(&mp, sizeof mp);
    mp.n_threads = 1;
    mp.memory_limit = 4ull << 30;
    mp.config_from = g_dir;
    diffusion_model *m = NULL;
    if (diffusion_model_load(path, &mp, &m) == DIFFUSION_OK) {
        exercise_pipeline(m, "a photo of a cat");
        diffusion_model_free(m);
    }
#endif
    return 0;
}
