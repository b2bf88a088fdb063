/*
 * C API tests of text and latent pipelines (Stable Diffusion) on the tiny fixture pipelines
 * (tools/make_sd_fixtures.py): loading, info, tokenize, encode_prompt, VAE encode/decode,
 * predict_ex, samplers with prompts, embeddings, guidance rescale, img2img, inpainting, images
 * only after the run, and every argument error. Numbers against diffusers are checked by the
 * Swift and Python fixture tests; here, the contract.
 *
 *     ./test_sd_api Tests/Fixtures
 */
#define _POSIX_C_SOURCE 200809L

#include "check.h"

#include <math.h>
#include <stdlib.h>

static char g_path[4096];
static const char *pipeline(const char *name) {
    snprintf(g_path, sizeof g_path, "%s/sd/%s", g_fixtures, name);
    return g_path;
}

static diffusion_model *load(const char *name) {
    diffusion_model *m = NULL;
    CHECK_OK(diffusion_model_load(pipeline(name), NULL, &m));
    return m;
}

static bool all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return false;
    return true;
}

static void test_info(void) {
    diffusion_model *m = load("sd1");
    if (!m) return;
    diffusion_model_info info = {.struct_size = sizeof info};
    CHECK_OK(diffusion_model_get_info(m, &info));
    CHECK(info.in_channels == 4 && info.out_channels == 4 && info.latent_channels == 4);
    CHECK(info.vae_scale_factor == 8 && info.sample_size == 64 && info.sample_width == 64);
    CHECK(info.context_length == 77 && info.context_width == 32);
    CHECK(info.num_class_embeds == 0 && info.null_class_label == -1);
    diffusion_model_free(m);
    m = load("sd1_inpaint");
    if (!m) return;
    CHECK_OK(diffusion_model_get_info(m, &info));
    CHECK(info.in_channels == 9 && info.latent_channels == 4);
    diffusion_model_free(m);
    /* The fp16-variant-only legacy folder loads; prefer_fp16 on a folder with both is accepted. */
    m = load("sd1_legacy");
    diffusion_model_free(m);
    diffusion_model_params mp;
    diffusion_model_params_init(&mp, sizeof mp);
    CHECK(mp.prefer_fp16 == false);
    mp.prefer_fp16 = true;
    CHECK_OK(diffusion_model_load(pipeline("sd1"), &mp, &m));
    diffusion_model_free(m);
}

static void test_text(void) {
    diffusion_model *m = load("sd1");
    if (!m) return;
    int32_t ids[80];
    size_t count = 0;
    CHECK_OK(diffusion_model_tokenize(m, "a photo of a cat", ids, 80, &count));
    CHECK(count == 77);
    CHECK(ids[0] == 49406 && ids[1] == 320 && ids[2] == 1125 && ids[3] == 539 && ids[4] == 320 && ids[5] == 2368);
    CHECK(ids[6] == 49407 && ids[76] == 49407);  /* SD1 pads with <|endoftext|> */
    CHECK_OK(diffusion_model_tokenize(m, "x", NULL, 0, &count));
    CHECK(count == 77);
    CHECK_ERROR(diffusion_model_tokenize(m, "x", NULL, 5, &count), DIFFUSION_ERROR_INVALID_ARGUMENT, "ids");
    CHECK_ERROR(diffusion_model_tokenize(m, "\xff\xfe", ids, 80, &count), DIFFUSION_ERROR_INVALID_ARGUMENT, "UTF-8");
    CHECK_ERROR(diffusion_model_tokenize(m, NULL, ids, 80, &count), DIFFUSION_ERROR_INVALID_ARGUMENT, "text");
    size_t n = 77 * 32;
    float *states = calloc(n, sizeof *states);
    CHECK_OK(diffusion_model_encode_prompt(m, "a photo of a cat", 0, states, n));
    CHECK(all_finite(states, n));
    CHECK_OK(diffusion_model_encode_prompt(m, "a photo of a cat", 2, states, n));
    CHECK_OK(diffusion_model_encode_prompt(m, "a", 3, states, n));  /* every layer skipped, as diffusers allows */
    CHECK_ERROR(diffusion_model_encode_prompt(m, "a", 4, states, n), DIFFUSION_ERROR_INVALID_ARGUMENT, "clip");
    CHECK_ERROR(diffusion_model_encode_prompt(m, "a", -1, states, n), DIFFUSION_ERROR_INVALID_ARGUMENT, "clip_skip");
    CHECK_ERROR(diffusion_model_encode_prompt(m, "a", 0, states, n - 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "count");
    free(states);
    diffusion_model_free(m);
    /* A pixel-space model has no text layer. */
    diffusion_model *pixel = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/unet/plain", g_fixtures);
    CHECK_OK(diffusion_model_load(path, NULL, &pixel));
    CHECK_ERROR(diffusion_model_tokenize(pixel, "a", ids, 80, &count), DIFFUSION_ERROR_UNSUPPORTED, "text");
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.prompt = "a cat";  /* a prompt would be silently ignored: refused */
    diffusion_sampler *s = NULL;
    CHECK_ERROR(diffusion_sampler_create(pixel, &sp, &s), DIFFUSION_ERROR_INVALID_ARGUMENT, "text encoder");
    diffusion_model_free(pixel);
}

static void test_vae(void) {
    diffusion_model *m = load("sd1");
    if (!m) return;
    enum { H = 64, W = 64, h = 8, w = 8 };
    float *image = malloc(sizeof(float) * 3 * H * W), *lat = malloc(sizeof(float) * 4 * h * w);
    float *back = malloc(sizeof(float) * 3 * H * W), *lat2 = malloc(sizeof(float) * 4 * h * w);
    for (int i = 0; i < 3 * H * W; i++) image[i] = sinf((float)i * 0.01f);
    CHECK_OK(diffusion_model_vae_encode(m, image, 1, H, W, NULL, lat, 4 * h * w));
    uint64_t seed = 3;
    CHECK_OK(diffusion_model_vae_encode(m, image, 1, H, W, &seed, lat2, 4 * h * w));
    CHECK(all_finite(lat, 4 * h * w) && memcmp(lat, lat2, sizeof(float) * 4 * h * w) != 0);  /* sample != mean */
    CHECK_OK(diffusion_model_vae_decode(m, lat, 1, h, w, back, 3 * H * W));
    CHECK(all_finite(back, 3 * H * W));
    CHECK_ERROR(diffusion_model_vae_encode(m, image, 1, H - 4, W, NULL, lat, 4 * h * w), DIFFUSION_ERROR_INVALID_ARGUMENT, "multiples");
    CHECK_ERROR(diffusion_model_vae_decode(m, lat, 1, h, w, back, 5), DIFFUSION_ERROR_INVALID_ARGUMENT, "count");
    image[7] = NAN;
    CHECK_ERROR(diffusion_model_vae_encode(m, image, 1, H, W, NULL, lat, 4 * h * w), DIFFUSION_ERROR_INVALID_ARGUMENT, "finite");
    free(image); free(lat); free(back); free(lat2);
    diffusion_model_free(m);
}

static void test_predict_ex(void) {
    diffusion_model *m = load("sd1_inpaint");
    if (!m) return;
    enum { N = 2, C = 9, h = 8, w = 8, T = 77, D = 32 };
    float *x = calloc(N * C * h * w, sizeof *x), *ctx = calloc(N * T * D, sizeof *ctx), *out = calloc(N * 4 * h * w, sizeof *out);
    float t[N] = {10, 500};
    diffusion_predict_params p;
    diffusion_predict_params_init(&p, sizeof p);
    CHECK(p.struct_size == sizeof p && p.batch == 1);
    p.x = x; p.batch = N; p.channels = C; p.height = h; p.width = w; p.timesteps = t;
    p.context = ctx; p.context_tokens = T; p.context_width = D; p.out = out; p.out_count = N * 4 * h * w;
    CHECK_OK(diffusion_model_predict_ex(m, &p));
    CHECK(all_finite(out, N * 4 * h * w));
    p.context = NULL;
    CHECK_ERROR(diffusion_model_predict_ex(m, &p), DIFFUSION_ERROR_INVALID_ARGUMENT, "text states");
    p.context = ctx; p.context_width = 31;
    CHECK_ERROR(diffusion_model_predict_ex(m, &p), DIFFUSION_ERROR_INVALID_ARGUMENT, "31");
    p.context_width = D; p.channels = 4;
    CHECK_ERROR(diffusion_model_predict_ex(m, &p), DIFFUSION_ERROR_INVALID_ARGUMENT, "channels");
    p.channels = C; p.out_count = 3;
    CHECK_ERROR(diffusion_model_predict_ex(m, &p), DIFFUSION_ERROR_INVALID_ARGUMENT, "out_count");
    CHECK_ERROR(diffusion_model_predict_ex(m, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "params");
    free(x); free(ctx); free(out);
    diffusion_model_free(m);
}

static void test_text_to_image(void) {
    diffusion_model *m = load("sd1");
    if (!m) return;
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    CHECK(sp.prompt == NULL && sp.negative_prompt == NULL && sp.clip_skip == 0);
    sp.scheduler = "ddim"; sp.steps = 3; sp.batch = 2; sp.prompt = "a photo of a cat"; sp.negative_prompt = "blurry";
    diffusion_sampler *s = NULL;
    CHECK_OK(diffusion_sampler_create(m, &sp, &s));
    if (!s) { diffusion_model_free(m); return; }
    /* The sampler keeps the model alive after diffusion_model_free. */
    diffusion_model_free(m);
    int32_t shape[4], ishape[4];
    CHECK_OK(diffusion_sampler_shape(s, shape));
    CHECK(shape[0] == 2 && shape[1] == 4 && shape[2] == 8 && shape[3] == 8);
    CHECK_OK(diffusion_sampler_image_shape(s, ishape));
    CHECK(ishape[0] == 2 && ishape[1] == 64 && ishape[2] == 64 && ishape[3] == 3);
    CHECK_OK(diffusion_sampler_set_guidance_scale(s, 7.5f));
    CHECK_OK(diffusion_sampler_set_guidance_rescale(s, 0.7f));
    CHECK_ERROR(diffusion_sampler_set_guidance_rescale(s, 1.5f), DIFFUSION_ERROR_INVALID_ARGUMENT, "rescale");
    size_t n = 2 * 64 * 64 * 3;
    uint8_t *px = malloc(n);
    CHECK_ERROR(diffusion_sampler_get_images(s, px, n), DIFFUSION_ERROR_INVALID_STATE, "preview");
    CHECK_OK(diffusion_sampler_get_preview_images(s, px, n));
    CHECK_OK(diffusion_sampler_run(s, NULL, NULL));
    CHECK_ERROR(diffusion_sampler_get_images(s, px, n - 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "size");
    CHECK_OK(diffusion_sampler_get_images(s, px, n));
    /* The two images share the prompt but not the noise. */
    CHECK(memcmp(px, px + n / 2, n / 2) != 0);
    free(px);
    diffusion_sampler_free(s);
}

static void test_embeddings_and_errors(void) {
    diffusion_model *m = load("sd1");
    if (!m) return;
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.scheduler = "euler_a"; sp.steps = 2; sp.width = 60;
    diffusion_sampler *s = NULL;
    CHECK_ERROR(diffusion_sampler_create(m, &sp, &s), DIFFUSION_ERROR_INVALID_ARGUMENT, "multiples of 8");
    sp.width = 0; sp.prompt = "\xc3\x28";
    CHECK_ERROR(diffusion_sampler_create(m, &sp, &s), DIFFUSION_ERROR_INVALID_ARGUMENT, "prompt");
    sp.prompt = "a cat"; sp.clip_skip = 9;
    CHECK_ERROR(diffusion_sampler_create(m, &sp, &s), DIFFUSION_ERROR_INVALID_ARGUMENT, "clip");
    sp.clip_skip = 0; sp.height = 32; sp.width = 48;
    CHECK_OK(diffusion_sampler_create(m, &sp, &s));
    if (!s) { diffusion_model_free(m); return; }
    size_t count = 77 * 32;
    float *e = calloc(count, sizeof *e);
    CHECK_OK(diffusion_model_encode_prompt(m, "a dog", 0, e, count));
    CHECK_OK(diffusion_sampler_set_prompt_embeddings(s, e, NULL, count));
    CHECK_OK(diffusion_sampler_set_prompt_embeddings(s, e, e, count));
    CHECK_ERROR(diffusion_sampler_set_prompt_embeddings(s, e, NULL, count - 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "count");
    e[3] = INFINITY;
    CHECK_ERROR(diffusion_sampler_set_prompt_embeddings(s, e, NULL, count), DIFFUSION_ERROR_INVALID_ARGUMENT, "finite");
    CHECK_OK(diffusion_sampler_set_guidance_scale(s, 5));
    CHECK_OK(diffusion_sampler_run(s, NULL, NULL));
    /* Inpainting needs a mask of the image's size; after the run it is too late. */
    uint8_t image[32 * 48 * 3] = {0}, mask[32 * 48] = {0};
    CHECK_ERROR(diffusion_sampler_set_mask(s, image, sizeof image, mask, sizeof mask - 1, 1.0), DIFFUSION_ERROR_INVALID_ARGUMENT, "mask_size");
    CHECK_ERROR(diffusion_sampler_set_mask(s, image, sizeof image, mask, sizeof mask, 1.0), DIFFUSION_ERROR_INVALID_STATE, NULL);
    diffusion_sampler_free(s);
    free(e);
    diffusion_model_free(m);
}

static void test_img2img_and_inpaint(void) {
    const char *names[] = {"sd1", "sd1_inpaint"};
    for (int k = 0; k < 2; k++) {
        diffusion_model *m = load(names[k]);
        if (!m) continue;
        diffusion_sampler_params sp;
        diffusion_sampler_params_init(&sp, sizeof sp);
        sp.scheduler = "ddim"; sp.steps = 4; sp.prompt = "a cat";
        uint8_t *image = malloc(64 * 64 * 3), mask[64 * 64], px[64 * 64 * 3];
        for (int i = 0; i < 64 * 64 * 3; i++) image[i] = (uint8_t)(i * 7);
        for (int i = 0; i < 64 * 64; i++) mask[i] = (i % 64) >= 32 ? 255 : 0;
        diffusion_sampler *s = NULL;
        CHECK_OK(diffusion_sampler_create(m, &sp, &s));
        if (s) {
            CHECK_OK(diffusion_sampler_set_mask(s, image, 64 * 64 * 3, mask, sizeof mask, 1.0));
            CHECK_OK(diffusion_sampler_run(s, NULL, NULL));
            CHECK_OK(diffusion_sampler_get_images(s, px, sizeof px));
            diffusion_sampler_free(s);
        }
        CHECK_OK(diffusion_sampler_create(m, &sp, &s));
        if (s) {
            CHECK_ERROR(diffusion_sampler_set_init_image(s, image, 5, 0.5), DIFFUSION_ERROR_INVALID_ARGUMENT, "size");
            CHECK_ERROR(diffusion_sampler_set_init_image(s, image, 64 * 64 * 3, 1.5), DIFFUSION_ERROR_INVALID_ARGUMENT, "strength");
            if (k == 0) {
                int32_t done, total;
                CHECK_OK(diffusion_sampler_set_init_image(s, image, 64 * 64 * 3, 0.5));
                CHECK_OK(diffusion_sampler_progress(s, &done, &total));
                CHECK(done == 0 && total == 2);
                CHECK_OK(diffusion_sampler_run(s, NULL, NULL));
                CHECK_OK(diffusion_sampler_get_images(s, px, sizeof px));
            }
            diffusion_sampler_free(s);
        }
        free(image);
        diffusion_model_free(m);
    }
}

typedef struct {
    int events[64][3];
    int count;
    int cancel_stage;  /* -1: never cancel */
} stage_log;

static bool record_stage(diffusion_stage stage, int32_t done, int32_t total, void *user) {
    stage_log *log = user;
    if (log->count < 64) {
        log->events[log->count][0] = (int)stage;
        log->events[log->count][1] = done;
        log->events[log->count][2] = total;
        log->count++;
    }
    return (int)stage != log->cancel_stage;
}

static void test_stages_and_cancel(void) {
    diffusion_model *m = load("sd1");
    if (!m) return;
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.scheduler = "ddim"; sp.steps = 2; sp.batch = 2; sp.prompt = "a cat";
    diffusion_sampler *s = NULL;
    CHECK_OK(diffusion_sampler_create(m, &sp, &s));
    if (!s) { diffusion_model_free(m); return; }
    stage_log log = {.cancel_stage = DIFFUSION_STAGE_TEXT_ENCODING};
    CHECK_OK(diffusion_sampler_set_stage_callback(s, record_stage, &log));
    /* Cancelled while encoding the prompt: nothing stepped, and it can go on. */
    CHECK_ERROR(diffusion_sampler_run(s, NULL, NULL), DIFFUSION_ERROR_CANCELLED, "progress callback");
    int32_t done = -1;
    CHECK_OK(diffusion_sampler_progress(s, &done, NULL));
    CHECK(done == 0 && log.count == 1 && log.events[0][0] == DIFFUSION_STAGE_TEXT_ENCODING);
    log.count = 0; log.cancel_stage = -1;
    CHECK_OK(diffusion_sampler_run(s, NULL, NULL));
    /* text 0/1, 1/1; denoising 1/2, 2/2 */
    CHECK(log.count == 4);
    CHECK(log.events[0][0] == 0 && log.events[0][1] == 0 && log.events[1][0] == 0 && log.events[1][1] == 1);
    CHECK(log.events[2][0] == 1 && log.events[2][1] == 1 && log.events[3][0] == 1 && log.events[3][1] == 2 && log.events[3][2] == 2);
    size_t n = 2 * 64 * 64 * 3;
    uint8_t *px = malloc(n);
    /* A cancel from any thread stops the decode between images; the next call decodes. */
    diffusion_sampler_cancel(s);
    CHECK_ERROR(diffusion_sampler_get_images(s, px, n), DIFFUSION_ERROR_CANCELLED, "decoding");
    log.count = 0;
    CHECK_OK(diffusion_sampler_get_images(s, px, n));
    CHECK(log.count == 3 && log.events[0][0] == 2 && log.events[0][1] == 0 && log.events[2][1] == 2 && log.events[2][2] == 2);
    log.count = 0; log.cancel_stage = DIFFUSION_STAGE_DECODING;
    CHECK_ERROR(diffusion_sampler_get_images(s, px, n), DIFFUSION_ERROR_CANCELLED, NULL);
    CHECK_OK(diffusion_sampler_set_stage_callback(s, NULL, NULL));
    CHECK_OK(diffusion_sampler_get_images(s, px, n));
    free(px);
    diffusion_sampler_free(s);
    diffusion_model_free(m);
}

static void test_broken_pipelines(void) {
    /* A pipeline folder without one of the components SD needs, or with a broken tokenizer. */
    char tmp[] = "/tmp/sdtestXXXXXX";
    if (!mkdtemp(tmp)) { CHECK(false); return; }
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "cp -RL %s/sd/sd1/. %s/ && rm -rf %s/vae", g_fixtures, tmp, tmp);
    CHECK(system(cmd) == 0);
    diffusion_model *m = NULL;
    CHECK_ERROR(diffusion_model_load(tmp, NULL, &m), DIFFUSION_ERROR_IO, "vae");
    snprintf(cmd, sizeof cmd, "cp -RL %s/sd/sd1/vae %s/vae && echo '{\"a\": ' > %s/tokenizer/vocab.json", g_fixtures, tmp, tmp);
    CHECK(system(cmd) == 0);
    CHECK_ERROR(diffusion_model_load(tmp, NULL, &m), DIFFUSION_ERROR_INVALID_FILE, "vocab.json");
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    CHECK(system(cmd) == 0);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FIXTURES_DIR (e.g. Tests/Fixtures)\n", argv[0]);
        return 2;
    }
    g_fixtures = argv[1];
    static const test_case tests[] = {
        {"info", test_info},
        {"text", test_text},
        {"vae", test_vae},
        {"predict_ex", test_predict_ex},
        {"text_to_image", test_text_to_image},
        {"embeddings_and_errors", test_embeddings_and_errors},
        {"img2img_and_inpaint", test_img2img_and_inpaint},
        {"stages_and_cancel", test_stages_and_cancel},
        {"broken_pipelines", test_broken_pipelines},
    };
    return run_tests("test_sd_api", tests, sizeof tests / sizeof tests[0]);
}
