/*
 * C API tests for libdiffusion: the contract of include/diffusion.h as seen by a C caller.
 *
 *     cc -std=c11 -Wall -Wextra -Werror -Iinclude Tests/c/test_api.c -L.build/release -ldiffusion
 *     ./test_api Tests/Fixtures
 *
 * Argument checking, handle validation, struct versioning, load errors, sampler state, cancel,
 * threads and determinism. Numerical agreement with diffusers is tested elsewhere (fixtures).
 * Prints one line per failed check (file:line, the check, the library's last error) and exits 1
 * if any failed.
 */
#define _POSIX_C_SOURCE 200809L

#include "diffusion.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

/* ---- Files and folders ------------------------------------------------------------------- */

/* max |x[i] - scale * y[i]|, or INFINITY when any value is NaN (fmax would skip it). */
static double max_abs_diff(const float *x, const float *y, double scale, size_t n) {
    double err = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)x[i] - scale * y[i]);
        if (isnan(d)) return INFINITY;
        if (d > err) err = d;
    }
    return err;
}

static const char *fixture(const char *name) {
    static char buf[4][4096];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, sizeof buf[0], "%s/unet/%s", g_fixtures, name);
    return p;
}

static char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)n + 1);
    if (data && fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
    }
    fclose(f);
    if (data) {
        data[n] = '\0';
        *size = (size_t)n;
    }
    return data;
}

static bool write_file(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(data, 1, size, f) == size;
    return fclose(f) == 0 && ok;
}

/* Copies at most max_bytes of src to dst (SIZE_MAX: all of it). */
static bool copy_file(const char *src, const char *dst, size_t max_bytes) {
    size_t n;
    char *data = read_file(src, &n);
    if (!data) return false;
    bool ok = write_file(dst, data, n < max_bytes ? n : max_bytes);
    free(data);
    return ok;
}

static bool make_temp_dir(char *out, size_t size) {
    const char *tmp = getenv("TMPDIR");
    snprintf(out, size, "%s/diffusion_test_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(out) != NULL;
}

static void remove_tree(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            char child[4096];
            snprintf(child, sizeof child, "%s/%s", path, e->d_name);
            remove_tree(child);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* A model folder in `dir` from one fixture's config.json and another's weights. */
static bool make_model_dir(const char *dir, const char *config_from, const char *weights_from) {
    char src[4096], dst[4096];
    snprintf(src, sizeof src, "%s/config.json", fixture(config_from));
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    if (!copy_file(src, dst, SIZE_MAX)) return false;
    snprintf(src, sizeof src, "%s/diffusion_pytorch_model.safetensors", fixture(weights_from));
    snprintf(dst, sizeof dst, "%s/diffusion_pytorch_model.safetensors", dir);
    return copy_file(src, dst, SIZE_MAX);
}

/* Writes a safetensors file by hand: 8-byte little-endian header length, header, data_size zeros. */
static bool write_safetensors(const char *path, const char *header, size_t data_size) {
    size_t hlen = strlen(header);
    size_t total = 8 + hlen + data_size;
    unsigned char *buf = calloc(1, total);
    if (!buf) return false;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(buf + 8, header, hlen);
    bool ok = write_file(path, buf, total);
    free(buf);
    return ok;
}

/* Replaces the first `from` in `text` by `to`; returns a new string. */
static char *replace_first(const char *text, const char *from, const char *to) {
    const char *at = strstr(text, from);
    if (!at) return NULL;
    size_t head = (size_t)(at - text), fl = strlen(from), tl = strlen(to), rest = strlen(at + fl);
    char *out = malloc(head + tl + rest + 1);
    memcpy(out, text, head);
    memcpy(out + head, to, tl);
    memcpy(out + head + tl, at + fl, rest + 1);
    return out;
}

/* ---- Helpers for models and samplers ----------------------------------------------------- */

static diffusion_model *load(const char *name, int32_t n_threads) {
    diffusion_model_params mp;
    diffusion_model_params_init(&mp, sizeof mp);
    mp.n_threads = n_threads;
    diffusion_model *m = NULL;
    if (!CHECK_OK(diffusion_model_load(fixture(name), &mp, &m))) {
        fprintf(stderr, "cannot load fixture %s; stopping\n", fixture(name));
        exit(1);
    }
    return m;
}

static diffusion_sampler *sampler(const diffusion_model *m, const char *scheduler, int32_t steps, uint64_t seed,
                                  int32_t batch, const char *json) {
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.scheduler = scheduler;
    sp.steps = steps;
    sp.seed = seed;
    sp.batch = batch;
    sp.scheduler_config_json = json;
    diffusion_sampler *s = NULL;
    CHECK_OK(diffusion_sampler_create(m, &sp, &s));
    return s;
}

static size_t latent_count(const diffusion_sampler *s) {
    int32_t shape[4] = {0, 0, 0, 0};
    if (diffusion_sampler_shape(s, shape) != DIFFUSION_OK) return 0;
    return (size_t)shape[0] * (size_t)shape[1] * (size_t)shape[2] * (size_t)shape[3];
}

/* A malloc'ed copy of the sampler's x_t. */
static float *latents_of(const diffusion_sampler *s) {
    size_t n = latent_count(s);
    float *x = malloc((n ? n : 1) * sizeof *x);
    CHECK_OK(diffusion_sampler_get_latents(s, x, n));
    return x;
}

static bool all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return false;
    return true;
}

/* ---- Tests ------------------------------------------------------------------------------- */

static void test_version_and_status(void) {
    CHECK(diffusion_version_number() ==
          (uint32_t)(DIFFUSION_VERSION_MAJOR * 10000 + DIFFUSION_VERSION_MINOR * 100 + DIFFUSION_VERSION_PATCH));
    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", DIFFUSION_VERSION_MAJOR, DIFFUSION_VERSION_MINOR,
             DIFFUSION_VERSION_PATCH);
    CHECK(diffusion_version_string() != NULL && strcmp(diffusion_version_string(), expected) == 0);

    static const char *const names[] = {
        "DIFFUSION_OK", "DIFFUSION_ERROR_INVALID_ARGUMENT", "DIFFUSION_ERROR_IO",
        "DIFFUSION_ERROR_INVALID_FILE", "DIFFUSION_ERROR_UNSUPPORTED", "DIFFUSION_ERROR_MODEL_MISMATCH",
        "DIFFUSION_ERROR_CANCELLED", "DIFFUSION_ERROR_NO_UNCONDITIONAL", "DIFFUSION_ERROR_OUT_OF_MEMORY",
        "DIFFUSION_ERROR_INVALID_STATE", "DIFFUSION_ERROR_INTERNAL", "DIFFUSION_ERROR_CALLBACK",
    };
    CHECK(DIFFUSION_ERROR_INTERNAL == 10 && DIFFUSION_ERROR_CALLBACK == 11);
    for (int i = 0; i <= (int)DIFFUSION_ERROR_CALLBACK; i++) {
        const char *s = diffusion_status_string((diffusion_status)i);
        CHECK(s != NULL && strcmp(s, names[i]) == 0);
    }
    CHECK(strcmp(diffusion_status_string((diffusion_status)12), "unknown status") == 0);
    CHECK(strcmp(diffusion_status_string((diffusion_status)12345), "unknown status") == 0);
    CHECK(strcmp(diffusion_status_string((diffusion_status)-1), "unknown status") == 0);
    CHECK(diffusion_last_error() != NULL);
}

/* The last error is per thread: a new thread starts with "", and its errors stay its own. */
static void *last_error_thread(void *arg) {
    (void)arg;
    bool ok = diffusion_last_error() != NULL && diffusion_last_error()[0] == '\0';
    diffusion_model *m;
    ok = ok && diffusion_model_load("/other-thread-missing", NULL, &m) == DIFFUSION_ERROR_IO;
    ok = ok && strstr(diffusion_last_error(), "other-thread-missing") != NULL;
    return ok ? arg : NULL;
}

static void test_last_error_per_thread(void) {
    diffusion_model *m;
    CHECK_ERROR(diffusion_model_load("/main-thread-missing", NULL, &m), DIFFUSION_ERROR_IO, "main-thread-missing");
    pthread_t t;
    void *result = NULL;
    static int token;
    CHECK(pthread_create(&t, NULL, last_error_thread, &token) == 0);
    CHECK(pthread_join(t, &result) == 0);
    CHECK(result == &token);
    CHECK(strstr(diffusion_last_error(), "main-thread-missing") != NULL);
}

static void test_null_arguments(void) {
    diffusion_model_params_init(NULL, sizeof(diffusion_model_params));  /* ignored */
    diffusion_sampler_params_init(NULL, sizeof(diffusion_sampler_params));
    diffusion_model_free(NULL);         /* no-ops */
    diffusion_sampler_free(NULL);
    diffusion_sampler_cancel(NULL);

    diffusion_model *const poison_m = (diffusion_model *)(uintptr_t)0x10;
    diffusion_sampler *const poison_s = (diffusion_sampler *)(uintptr_t)0x10;
    diffusion_model *m = poison_m;
    CHECK_ERROR(diffusion_model_load(NULL, NULL, &m), DIFFUSION_ERROR_INVALID_ARGUMENT, "path");
    CHECK(m == NULL);
    CHECK_ERROR(diffusion_model_load(fixture("plain"), NULL, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "out_model");

    m = load("plain", 1);
    diffusion_model_info info = {.struct_size = sizeof info};
    CHECK_ERROR(diffusion_model_get_info(NULL, &info), DIFFUSION_ERROR_INVALID_ARGUMENT, "model");
    CHECK_ERROR(diffusion_model_get_info(m, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "info");
    const char *json = "x";
    CHECK_ERROR(diffusion_model_config_json(NULL, &json), DIFFUSION_ERROR_INVALID_ARGUMENT, "model");
    CHECK_ERROR(diffusion_model_config_json(m, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "out_json");

    enum { N = 3 * 16 * 16 };
    static float x[N], out[N];
    float t = 10;
    CHECK_ERROR(diffusion_model_predict(NULL, x, 1, 3, 16, 16, &t, NULL, out, N), DIFFUSION_ERROR_INVALID_ARGUMENT, "model");
    CHECK_ERROR(diffusion_model_predict(m, NULL, 1, 3, 16, 16, &t, NULL, out, N), DIFFUSION_ERROR_INVALID_ARGUMENT, "x");
    CHECK_ERROR(diffusion_model_predict(m, x, 1, 3, 16, 16, NULL, NULL, out, N), DIFFUSION_ERROR_INVALID_ARGUMENT, "timesteps");
    CHECK_ERROR(diffusion_model_predict(m, x, 1, 3, 16, 16, &t, NULL, NULL, N), DIFFUSION_ERROR_INVALID_ARGUMENT, "out");

    diffusion_sampler *s = poison_s;
    CHECK_ERROR(diffusion_sampler_create(NULL, NULL, &s), DIFFUSION_ERROR_INVALID_ARGUMENT, "model");
    CHECK(s == NULL);
    CHECK_ERROR(diffusion_sampler_create(m, NULL, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "out_sampler");
    s = sampler(m, "ddim", 2, 0, 1, NULL);  /* params NULL is allowed: see test_params_versions */

    int32_t label = 0, shape[4], remaining;
    size_t count;
    float ts[4];
    uint8_t pixels[N];
    CHECK_ERROR(diffusion_sampler_set_guidance_scale(NULL, 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    CHECK_ERROR(diffusion_sampler_set_class_label(NULL, &label, 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    CHECK_ERROR(diffusion_sampler_set_class_label(s, NULL, 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "labels");
    CHECK_ERROR(diffusion_sampler_shape(NULL, shape), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    CHECK_ERROR(diffusion_sampler_shape(s, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "shape");
    CHECK_ERROR(diffusion_sampler_timesteps(NULL, ts, 4, &count), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    CHECK_ERROR(diffusion_sampler_timesteps(s, NULL, 4, &count), DIFFUSION_ERROR_INVALID_ARGUMENT, "out");
    CHECK_ERROR(diffusion_sampler_timesteps(s, ts, 4, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "count");
    CHECK_ERROR(diffusion_sampler_get_latents(NULL, x, N), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    CHECK_ERROR(diffusion_sampler_get_latents(s, NULL, N), DIFFUSION_ERROR_INVALID_ARGUMENT, "out");
    CHECK_ERROR(diffusion_sampler_set_latents(NULL, x, N), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    CHECK_ERROR(diffusion_sampler_set_latents(s, NULL, N), DIFFUSION_ERROR_INVALID_ARGUMENT, "latents");
    CHECK_ERROR(diffusion_sampler_step(NULL, &remaining), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    CHECK_ERROR(diffusion_sampler_run(NULL, NULL, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    CHECK_ERROR(diffusion_sampler_get_images(NULL, pixels, N), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    CHECK_ERROR(diffusion_sampler_get_images(s, NULL, N), DIFFUSION_ERROR_INVALID_ARGUMENT, "out");

    /* The optional pointers really are optional. */
    CHECK_OK(diffusion_sampler_step(s, NULL));
    CHECK_OK(diffusion_sampler_timesteps(s, NULL, 0, &count));
    CHECK(count == 2);

    diffusion_sampler_free(s);
    diffusion_model_free(m);
}

static void test_handles(void) {
    diffusion_model *m = load("plain", 1);
    diffusion_model *m2 = load("plain", 1);
    diffusion_sampler *s = sampler(m, "ddim", 2, 0, 1, NULL);
    diffusion_model_info info = {.struct_size = sizeof info};
    int32_t shape[4];

    /* A handle of the wrong kind, or a pointer that is no handle at all. */
    CHECK_ERROR(diffusion_model_get_info((const diffusion_model *)s, &info), DIFFUSION_ERROR_INVALID_ARGUMENT, "model");
    diffusion_sampler *s2 = (diffusion_sampler *)(uintptr_t)0x10;
    CHECK_ERROR(diffusion_sampler_create((const diffusion_model *)s, NULL, &s2), DIFFUSION_ERROR_INVALID_ARGUMENT, "model");
    CHECK(s2 == NULL);
    CHECK_ERROR(diffusion_sampler_shape((const diffusion_sampler *)m, shape), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    CHECK_ERROR(diffusion_sampler_step((diffusion_sampler *)m, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    int on_stack = 0;
    CHECK_ERROR(diffusion_model_get_info((const diffusion_model *)&on_stack, &info), DIFFUSION_ERROR_INVALID_ARGUMENT, "model");
    CHECK_ERROR(diffusion_sampler_run((diffusion_sampler *)&on_stack, NULL, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    /* Freeing through the wrong kind of free, or a foreign pointer, is a no-op. */
    diffusion_model_free((diffusion_model *)s);
    diffusion_sampler_free((diffusion_sampler *)m);
    diffusion_model_free((diffusion_model *)&on_stack);
    diffusion_sampler_cancel((diffusion_sampler *)m);
    CHECK_OK(diffusion_model_get_info(m, &info));
    CHECK_OK(diffusion_sampler_shape(s, shape));

    /* Freed handles: use and double free are refused, not crashes. */
    diffusion_sampler_free(s);
    CHECK_ERROR(diffusion_sampler_shape(s, shape), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    CHECK_ERROR(diffusion_sampler_step(s, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    diffusion_sampler_cancel(s);
    diffusion_sampler_free(s);
    diffusion_model_free(m);
    CHECK_ERROR(diffusion_model_get_info(m, &info), DIFFUSION_ERROR_INVALID_ARGUMENT, "model");
    s2 = (diffusion_sampler *)(uintptr_t)0x10;
    CHECK_ERROR(diffusion_sampler_create(m, NULL, &s2), DIFFUSION_ERROR_INVALID_ARGUMENT, "model");
    CHECK(s2 == NULL);
    diffusion_model_free(m);
    /* Other handles are unaffected. */
    CHECK_OK(diffusion_model_get_info(m2, &info));
    diffusion_model_free(m2);
}

static void test_info_and_config(void) {
    diffusion_model *m = load("plain", 1);
    diffusion_model_info info;
    memset(&info, 0xff, sizeof info);
    info.struct_size = sizeof info;
    CHECK_OK(diffusion_model_get_info(m, &info));
    CHECK(info.struct_size == sizeof info);
    CHECK(info.in_channels == 3 && info.out_channels == 3 && info.sample_size == 16 && info.num_class_embeds == 0);

    /* An older caller's smaller struct: fields beyond struct_size are not written. */
    memset(&info, 0xff, sizeof info);
    info.struct_size = offsetof(diffusion_model_info, num_class_embeds);
    CHECK_OK(diffusion_model_get_info(m, &info));
    CHECK(info.in_channels == 3 && info.sample_size == 16 && info.num_class_embeds == -1);
    info.struct_size = 0;
    CHECK_ERROR(diffusion_model_get_info(m, &info), DIFFUSION_ERROR_INVALID_ARGUMENT, "struct_size");
    info.struct_size = UINT32_MAX;
    CHECK_ERROR(diffusion_model_get_info(m, &info), DIFFUSION_ERROR_INVALID_ARGUMENT, "struct_size");

    const char *json = NULL, *again = NULL;
    CHECK_OK(diffusion_model_config_json(m, &json));
    CHECK_OK(diffusion_model_config_json(m, &again));
    CHECK(json != NULL && json == again);
    CHECK(json && json[0] == '{' && strstr(json, "\"unet\"") && strstr(json, "\"scheduler\"") &&
          strstr(json, "\"DownBlock2D\""));
    diffusion_model_free(m);

    m = load("class_cond", 1);
    info.struct_size = sizeof info;
    CHECK_OK(diffusion_model_get_info(m, &info));
    CHECK(info.num_class_embeds == 10);
    diffusion_model_free(m);

    /* A non-square sample_size [8, 16]: samplers default to 8 x 16. */
    m = load("attn_one_head", 1);
    diffusion_sampler *s = sampler(m, "ddim", 1, 0, 1, NULL);
    int32_t shape[4] = {0};
    CHECK_OK(diffusion_sampler_shape(s, shape));
    CHECK(shape[0] == 1 && shape[1] == 3 && shape[2] == 8 && shape[3] == 16);
    diffusion_sampler_free(s);
    diffusion_model_free(m);
}

static void test_params_versions(void) {
    diffusion_model_params mp;
    diffusion_model_params_init(&mp, sizeof mp);
    CHECK(mp.struct_size == sizeof mp && mp.n_threads == 0);
    diffusion_model *m = (diffusion_model *)(uintptr_t)0x10;
    mp.struct_size = 0;
    CHECK_ERROR(diffusion_model_load(fixture("plain"), &mp, &m), DIFFUSION_ERROR_INVALID_ARGUMENT, "struct_size");
    CHECK(m == NULL);
    mp.struct_size = UINT32_MAX;
    CHECK_ERROR(diffusion_model_load(fixture("plain"), &mp, &m), DIFFUSION_ERROR_INVALID_ARGUMENT, "struct_size");
    diffusion_model_params_init(&mp, sizeof mp);
    mp.n_threads = -1;
    CHECK_ERROR(diffusion_model_load(fixture("plain"), &mp, &m), DIFFUSION_ERROR_INVALID_ARGUMENT, "n_threads");
    CHECK_OK(diffusion_model_load(fixture("plain"), NULL, &m));  /* NULL params = defaults */

    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    CHECK(sp.struct_size == sizeof sp && sp.scheduler == NULL && sp.steps == 0 && sp.seed == 0 && sp.batch == 1 &&
          sp.height == 0 && sp.width == 0 && sp.eta == 0 && sp.scheduler_config_json == NULL && sp.channels == 0);
    /* An older caller's smaller struct: init writes only the bytes it was given. */
    {
        unsigned char older[sizeof(diffusion_sampler_params) + 16];
        memset(older, 0xAB, sizeof older);
        size_t old_size = offsetof(diffusion_sampler_params, eta);
        diffusion_sampler_params_init((diffusion_sampler_params *)(void *)older, old_size);
        uint32_t written;
        memcpy(&written, older, sizeof written);
        CHECK(written == old_size);
        int untouched = 1;
        for (size_t i = old_size; i < sizeof older; i++) untouched &= older[i] == 0xAB;
        CHECK(untouched);
    }
    diffusion_sampler *s = (diffusion_sampler *)(uintptr_t)0x10;
    sp.struct_size = 0;
    CHECK_ERROR(diffusion_sampler_create(m, &sp, &s), DIFFUSION_ERROR_INVALID_ARGUMENT, "struct_size");
    CHECK(s == NULL);
    sp.struct_size = UINT32_MAX;
    CHECK_ERROR(diffusion_sampler_create(m, &sp, &s), DIFFUSION_ERROR_INVALID_ARGUMENT, "struct_size");

    /* NULL params: ddpm (no scheduler_config.json) with num_train_timesteps (1000) steps. */
    CHECK_OK(diffusion_sampler_create(m, NULL, &s));
    size_t count = 0;
    int32_t shape[4];
    CHECK_OK(diffusion_sampler_timesteps(s, NULL, 0, &count));
    CHECK(count == 1000);
    CHECK_OK(diffusion_sampler_shape(s, shape));
    CHECK(shape[0] == 1 && shape[1] == 3 && shape[2] == 16 && shape[3] == 16);
    diffusion_sampler_free(s);

    /* A caller built against a header that ended before eta: the fields past struct_size hold
       values the library would refuse, so they must not be read. */
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.scheduler = "ddim";
    sp.steps = 3;
    sp.seed = 7;
    sp.eta = NAN;
    sp.scheduler_config_json = "{ this is not json";
    sp.struct_size = offsetof(diffusion_sampler_params, eta);
    diffusion_sampler *old = NULL;
    CHECK_OK(diffusion_sampler_create(m, &sp, &old));
    diffusion_sampler *cur = sampler(m, "ddim", 3, 7, 1, NULL);
    if (old && cur) {
        CHECK_OK(diffusion_sampler_run(old, NULL, NULL));
        CHECK_OK(diffusion_sampler_run(cur, NULL, NULL));
        float *a = latents_of(old), *b = latents_of(cur);
        CHECK(memcmp(a, b, latent_count(cur) * sizeof(float)) == 0);
        free(a);
        free(b);
    }
    diffusion_sampler_free(old);
    diffusion_sampler_free(cur);
    diffusion_model_free(m);
}

static void test_load_errors(void) {
    diffusion_model *m = (diffusion_model *)(uintptr_t)0x10;
    CHECK_ERROR(diffusion_model_load("/no/such/model/folder", NULL, &m), DIFFUSION_ERROR_IO, "/no/such/model/folder");
    CHECK(m == NULL);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", fixture("plain"));
    CHECK_ERROR(diffusion_model_load(path, NULL, &m), DIFFUSION_ERROR_IO, "config.json");  /* a file */
    const char bad_utf8[] = {'/', 't', 'm', 'p', '/', (char)0xff, 0};
    CHECK_ERROR(diffusion_model_load(bad_utf8, NULL, &m), DIFFUSION_ERROR_INVALID_ARGUMENT, "UTF-8");

    char dir[1024], file[4096];
    if (!make_temp_dir(dir, sizeof dir)) {
        g_failures++;
        perror("mkdtemp");
        return;
    }
    char cfg_src[4096], weights_src[4096];
    snprintf(cfg_src, sizeof cfg_src, "%s/config.json", fixture("plain"));
    snprintf(weights_src, sizeof weights_src, "%s/diffusion_pytorch_model.safetensors", fixture("plain"));
    char weights[4096], config[4096];
    snprintf(weights, sizeof weights, "%s/diffusion_pytorch_model.safetensors", dir);
    snprintf(config, sizeof config, "%s/config.json", dir);

    /* Empty folder: no config.json. */
    CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_IO, "config.json");
    /* Config but no weights. */
    CHECK(copy_file(cfg_src, config, SIZE_MAX));
    CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_IO, "safetensors");

    /* Corrupt weights: truncated, tiny, garbage header, bad offsets. */
    CHECK(copy_file(weights_src, weights, 4000));
    CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_INVALID_FILE, "diffusion_pytorch_model.safetensors");
    CHECK(m == NULL);
    CHECK(write_file(weights, "abc", 3));
    CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_INVALID_FILE, NULL);
    CHECK(write_safetensors(weights, "{\"a\": [1, 2", 0));
    CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_INVALID_FILE, NULL);
    CHECK(write_safetensors(weights, "{\"conv_in.bias\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,64]}}", 16));
    CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_INVALID_FILE, NULL);

    /* Well-formed weights lacking tensors: a hand-made file with one correct tensor... */
    CHECK(write_safetensors(weights, "{\"conv_in.bias\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]}}", 32));
    CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_MODEL_MISMATCH, "missing tensor");
    /* ...another fixture's weights: fewer layers per block (tensors missing)... */
    CHECK(make_model_dir(dir, "plain", "layers1"));
    CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_MODEL_MISMATCH, "missing tensor");
    /* ...or the wrong number of input channels (wrong shape). */
    CHECK(make_model_dir(dir, "in1_out1", "plain"));
    CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_MODEL_MISMATCH, "shape");
    CHECK(m == NULL);

    /* Configs: invalid JSON, and well-formed but unsupported. */
    CHECK(make_model_dir(dir, "plain", "plain"));
    CHECK(write_file(config, "{\"_class_name\": \"UNet2DModel\",", 30));
    CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_INVALID_FILE, "config.json");
    size_t n;
    char *text = read_file(cfg_src, &n);
    char *bad = text ? replace_first(text, "\"DownBlock2D\"", "\"FancyDownBlock2D\"") : NULL;
    CHECK(bad != NULL);
    if (bad) {
        CHECK(write_file(config, bad, strlen(bad)));
        CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_UNSUPPORTED, "FancyDownBlock2D");
        CHECK(m == NULL);
    }
    free(bad);
    bad = text ? replace_first(text, "\"silu\"", "\"gelu\"") : NULL;
    if (bad) {
        CHECK(write_file(config, bad, strlen(bad)));
        CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_UNSUPPORTED, "gelu");
    }
    free(bad);
    free(text);

    /* _null_class_label must be one of the model's labels. */
    CHECK(make_model_dir(dir, "class_cond_null", "class_cond_null"));
    text = read_file(config, &n);
    bad = text ? replace_first(text, "\"_null_class_label\": 10", "\"_null_class_label\": 11") : NULL;
    CHECK(bad != NULL);
    if (bad) {
        CHECK(write_file(config, bad, strlen(bad)));
        CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_INVALID_FILE, "_null_class_label");
    }
    free(bad);
    free(text);

    /* Scheduler config: an unknown scheduler class is unsupported. */
    CHECK(make_model_dir(dir, "plain", "plain"));
    snprintf(file, sizeof file, "%s/scheduler_config.json", dir);
    const char *sched = "{\"_class_name\": \"KDPM2DiscreteScheduler\"}";
    CHECK(write_file(file, sched, strlen(sched)));
    CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_UNSUPPORTED, "KDPM2DiscreteScheduler");
    /* A DDIM scheduler_config.json makes ddim the default scheduler (50 steps). */
    sched = "{\"_class_name\": \"DDIMScheduler\", \"num_train_timesteps\": 1000}";
    CHECK(write_file(file, sched, strlen(sched)));
    if (CHECK_OK(diffusion_model_load(dir, NULL, &m))) {
        diffusion_sampler *s = NULL;
        size_t count = 0;
        CHECK_OK(diffusion_sampler_create(m, NULL, &s));
        CHECK_OK(diffusion_sampler_timesteps(s, NULL, 0, &count));
        CHECK(count == 50);
        diffusion_sampler_free(s);
        diffusion_model_free(m);
    }
    remove_tree(dir);

    /* A pipeline folder: model_index.json + unet/. */
    CHECK(make_temp_dir(dir, sizeof dir));
    snprintf(file, sizeof file, "%s/model_index.json", dir);
    CHECK(write_file(file, "{\"_class_name\": \"DDPMPipeline\"}", 31));
    CHECK_ERROR(diffusion_model_load(dir, NULL, &m), DIFFUSION_ERROR_IO, "unet");
    snprintf(file, sizeof file, "%s/unet", dir);
    CHECK(mkdir(file, 0700) == 0);
    CHECK(make_model_dir(file, "plain", "plain"));
    if (CHECK_OK(diffusion_model_load(dir, NULL, &m))) diffusion_model_free(m);
    remove_tree(dir);
}

static void test_predict(void) {
    diffusion_model *m = load("plain", 1);
    enum { C = 3, H = 16, W = 16, N1 = C * H * W };
    static float x[2 * N1], out[2 * N1], out1[N1];
    uint32_t r = 12345;
    for (int i = 0; i < 2 * N1; i++) {
        r = r * 1664525u + 1013904223u;
        x[i] = (float)(r >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
    }
    float ts[2] = {10, 500};
    for (int i = 0; i < 2 * N1; i++) out[i] = NAN;
    CHECK_OK(diffusion_model_predict(m, x, 2, 3, H, W, ts, NULL, out, 2 * N1));
    /* The caller's channel count must be the model's: a mismatch is refused, not read past. */
    CHECK_ERROR(diffusion_model_predict(m, x, 2, 1, H, W, ts, NULL, out, 2 * N1 / 3), DIFFUSION_ERROR_INVALID_ARGUMENT, "channels");
    CHECK(all_finite(out, 2 * N1));
    bool varies = false;
    for (int i = 1; i < N1; i++) varies = varies || out[i] != out[0];
    CHECK(varies);
    /* Item 0 of a batch of 2 is (nearly) item 0 alone. */
    CHECK_OK(diffusion_model_predict(m, x, 1, 3, H, W, ts, NULL, out1, N1));
    double max_diff = 0;
    for (int i = 0; i < N1; i++) {
        double d = (double)out1[i] - out[i];
        if (d < 0) d = -d;
        if (d > max_diff) max_diff = d;
    }
    CHECK(max_diff < 1e-4);
    /* Another size that fits the model's downsampling (factor 2 here). */
    CHECK_OK(diffusion_model_predict(m, x, 1, 3, 8, 32, ts, NULL, out1, 3 * 8 * 32));
    CHECK(all_finite(out1, 3 * 8 * 32));

    CHECK_ERROR(diffusion_model_predict(m, x, 1, 3, H, W, ts, NULL, out, N1 - 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "out_count");
    CHECK_ERROR(diffusion_model_predict(m, x, 1, 3, H, W, ts, NULL, out, N1 + 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "out_count");
    CHECK_ERROR(diffusion_model_predict(m, x, 0, 3, H, W, ts, NULL, out, 0), DIFFUSION_ERROR_INVALID_ARGUMENT, NULL);
    CHECK_ERROR(diffusion_model_predict(m, x, -1, 3, H, W, ts, NULL, out, N1), DIFFUSION_ERROR_INVALID_ARGUMENT, NULL);
    CHECK_ERROR(diffusion_model_predict(m, x, 1, 3, 15, W, ts, NULL, out, 3 * 15 * W), DIFFUSION_ERROR_INVALID_ARGUMENT, "multiple");
    CHECK_ERROR(diffusion_model_predict(m, x, 1, 3, H, 0, ts, NULL, out, 0), DIFFUSION_ERROR_INVALID_ARGUMENT, NULL);
    float bad_t = NAN;
    CHECK_ERROR(diffusion_model_predict(m, x, 1, 3, H, W, &bad_t, NULL, out, N1), DIFFUSION_ERROR_INVALID_ARGUMENT, "timestep");
    /* A non-finite input is refused, as a sampler step refuses a non-finite x_t. */
    float keep = x[N1 - 1];
    x[N1 - 1] = INFINITY;
    CHECK_ERROR(diffusion_model_predict(m, x, 1, 3, H, W, ts, NULL, out, N1), DIFFUSION_ERROR_INVALID_ARGUMENT, "non-finite");
    x[N1 - 1] = keep;
    int32_t labels[2] = {0, 0};
    CHECK_ERROR(diffusion_model_predict(m, x, 1, 3, H, W, ts, labels, out, N1), DIFFUSION_ERROR_INVALID_ARGUMENT, "class");
    diffusion_model_free(m);

    /* A model with 4 levels downsamples by 8. */
    m = load("cifar_small", 1);
    CHECK_ERROR(diffusion_model_predict(m, x, 1, 3, 12, 16, ts, NULL, out, 3 * 12 * 16), DIFFUSION_ERROR_INVALID_ARGUMENT, "8");
    diffusion_model_free(m);

    /* A class-conditional model needs labels in range. */
    m = load("class_cond", 1);
    CHECK_ERROR(diffusion_model_predict(m, x, 1, 3, H, W, ts, NULL, out, N1), DIFFUSION_ERROR_INVALID_ARGUMENT, "class");
    labels[0] = 10;
    CHECK_ERROR(diffusion_model_predict(m, x, 1, 3, H, W, ts, labels, out, N1), DIFFUSION_ERROR_INVALID_ARGUMENT, "10");
    labels[0] = -1;
    CHECK_ERROR(diffusion_model_predict(m, x, 1, 3, H, W, ts, labels, out, N1), DIFFUSION_ERROR_INVALID_ARGUMENT, "-1");
    labels[0] = 9;
    CHECK_OK(diffusion_model_predict(m, x, 1, 3, H, W, ts, labels, out, N1));
    CHECK(all_finite(out, N1));
    diffusion_model_free(m);

    /* out_channels != in_channels: predict works, sampling is not possible. */
    m = load("in3_out6", 1);
    static float out6[6 * H * W];
    CHECK_OK(diffusion_model_predict(m, x, 1, 3, H, W, ts, NULL, out6, 6 * H * W));
    CHECK(all_finite(out6, 6 * H * W));
    diffusion_sampler *s = (diffusion_sampler *)(uintptr_t)0x10;
    CHECK_ERROR(diffusion_sampler_create(m, NULL, &s), DIFFUSION_ERROR_UNSUPPORTED, "out_channels");
    CHECK(s == NULL);
    diffusion_model_free(m);
}

static diffusion_status create_with(const diffusion_model *m, const char *scheduler, int32_t steps, int32_t batch,
                                    int32_t height, float eta, const char *json) {
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.scheduler = scheduler;
    sp.steps = steps;
    sp.batch = batch;
    sp.height = height;
    sp.eta = eta;
    sp.scheduler_config_json = json;
    diffusion_sampler *s = (diffusion_sampler *)(uintptr_t)0x10;
    diffusion_status st = diffusion_sampler_create(m, &sp, &s);
    if (st != DIFFUSION_OK) {
        g_checks++;
        if (s != NULL) fail_at(__FILE__, __LINE__, "out_sampler not set to NULL on failure");
    }
    diffusion_sampler_free(s);
    return st;
}

static void test_sampler_create_errors(void) {
    diffusion_model *m = load("plain", 1);
    CHECK_OK(create_with(m, "ddpm", 10, 2, 0, 0, NULL));
    CHECK_OK(create_with(m, "ddim", 10, 1, 32, 0.5f, "{\"timestep_spacing\": \"trailing\", \"clip_sample\": false}"));
    CHECK_ERROR(create_with(m, "k_dpm_2", 10, 1, 0, 0, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "k_dpm_2");
    CHECK_ERROR(create_with(m, "", 10, 1, 0, 0, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "scheduler");
    CHECK_ERROR(create_with(m, "ddim", 10, 1, 0, 0, "{\"clip_sample\": "), DIFFUSION_ERROR_INVALID_ARGUMENT, "scheduler_config_json");
    CHECK_ERROR(create_with(m, "ddim", 10, 1, 0, 0, "[1, 2]"), DIFFUSION_ERROR_INVALID_ARGUMENT, NULL);
    CHECK_ERROR(create_with(m, "ddim", 10, 1, 0, 0, "{\"clip_sample\": false} trailing"), DIFFUSION_ERROR_INVALID_ARGUMENT, NULL);
    CHECK_ERROR(create_with(m, "ddpm", 1001, 1, 0, 0, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "1001");
    CHECK_ERROR(create_with(m, "ddim", 101, 1, 0, 0, "{\"num_train_timesteps\": 100}"), DIFFUSION_ERROR_INVALID_ARGUMENT, "101");
    CHECK_ERROR(create_with(m, "ddpm", -1, 1, 0, 0, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "steps");
    CHECK_ERROR(create_with(m, "ddpm", 10, -1, 0, 0, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "batch");
    CHECK_ERROR(create_with(m, "ddpm", 10, 0, 0, 0, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "batch");
    CHECK_ERROR(create_with(m, "ddpm", 10, 1, 15, 0, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "multiple");
    CHECK_ERROR(create_with(m, "ddpm", 10, 1, -16, 0, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, NULL);
    CHECK_ERROR(create_with(m, "ddim", 10, 1, 0, -1, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "eta");
    CHECK_ERROR(create_with(m, "ddim", 10, 1, 0, NAN, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "eta");
    char invalid_utf8[] = {'d', 'd', (char)0xff, 'm', 0};
    CHECK_ERROR(create_with(m, invalid_utf8, 10, 1, 0, 0, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "UTF-8");
    diffusion_model_free(m);
}

static void test_guidance_and_labels(void) {
    diffusion_model *m = load("plain", 1);
    diffusion_sampler *s = sampler(m, "ddim", 2, 0, 2, NULL);
    CHECK_OK(diffusion_sampler_set_guidance_scale(s, 1.0f));
    CHECK_ERROR(diffusion_sampler_set_guidance_scale(s, 2.0f), DIFFUSION_ERROR_NO_UNCONDITIONAL, NULL);
    CHECK_ERROR(diffusion_sampler_set_guidance_scale(s, NAN), DIFFUSION_ERROR_INVALID_ARGUMENT, NULL);
    int32_t labels[3] = {0, 1, 2};
    CHECK_ERROR(diffusion_sampler_set_class_label(s, labels, 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "class");
    diffusion_sampler_free(s);
    diffusion_model_free(m);

    m = load("class_cond", 1);
    s = sampler(m, "ddim", 2, 0, 2, NULL);
    CHECK_ERROR(diffusion_sampler_set_guidance_scale(s, 2.0f), DIFFUSION_ERROR_NO_UNCONDITIONAL, NULL);
    CHECK_OK(diffusion_sampler_set_class_label(s, labels, 1));
    CHECK_OK(diffusion_sampler_set_class_label(s, labels, 2));
    CHECK_ERROR(diffusion_sampler_set_class_label(s, labels, 3), DIFFUSION_ERROR_INVALID_ARGUMENT, NULL);
    CHECK_ERROR(diffusion_sampler_set_class_label(s, labels, 0), DIFFUSION_ERROR_INVALID_ARGUMENT, "count");
    CHECK_ERROR(diffusion_sampler_set_class_label(s, labels, -1), DIFFUSION_ERROR_INVALID_ARGUMENT, "count");
    int32_t bad[2] = {3, 10};
    CHECK_ERROR(diffusion_sampler_set_class_label(s, bad, 2), DIFFUSION_ERROR_INVALID_ARGUMENT, "10");
    bad[1] = -1;
    CHECK_ERROR(diffusion_sampler_set_class_label(s, bad, 2), DIFFUSION_ERROR_INVALID_ARGUMENT, "-1");
    /* Labels change the result: the same seed with labels 0 and 9 gives different images. */
    diffusion_sampler *s9 = sampler(m, "ddim", 2, 0, 2, NULL);
    int32_t nine = 9;
    CHECK_OK(diffusion_sampler_set_class_label(s9, &nine, 1));
    CHECK_OK(diffusion_sampler_run(s, NULL, NULL));
    CHECK_OK(diffusion_sampler_run(s9, NULL, NULL));
    float *a = latents_of(s), *b = latents_of(s9);
    CHECK(memcmp(a, b, latent_count(s) * sizeof(float)) != 0);
    free(a);
    free(b);
    diffusion_sampler_free(s9);
    diffusion_sampler_free(s);
    diffusion_model_free(m);

    /* A model whose config.json names a _null_class_label has an unconditional input: guidance
       works, and changes the result (scale 1 is no guidance). */
    m = load("class_cond_null", 1);
    diffusion_sampler *g[3];
    const float scales[3] = {1.0f, 3.0f, 1.0f};
    float *out[3];
    for (int i = 0; i < 3; i++) {
        g[i] = sampler(m, "ddim", 3, 4, 2, NULL);
        int32_t two = 2;
        CHECK_OK(diffusion_sampler_set_class_label(g[i], &two, 1));
        if (i < 2) CHECK_OK(diffusion_sampler_set_guidance_scale(g[i], scales[i]));
        CHECK_OK(diffusion_sampler_run(g[i], NULL, NULL));
        out[i] = latents_of(g[i]);
    }
    size_t gn = latent_count(g[0]);
    CHECK(all_finite(out[1], gn));
    CHECK(memcmp(out[0], out[2], gn * sizeof(float)) == 0);
    CHECK(memcmp(out[0], out[1], gn * sizeof(float)) != 0);
    CHECK_ERROR(diffusion_sampler_set_guidance_scale(g[0], INFINITY), DIFFUSION_ERROR_INVALID_ARGUMENT, NULL);
    for (int i = 0; i < 3; i++) {
        free(out[i]);
        diffusion_sampler_free(g[i]);
    }
    diffusion_model_free(m);
}

static void test_buffers_and_steps(void) {
    diffusion_model *m = load("plain", 1);
    diffusion_sampler *s = sampler(m, "ddim", 3, 5, 2, NULL);
    int32_t shape[4];
    CHECK_OK(diffusion_sampler_shape(s, shape));
    CHECK(shape[0] == 2 && shape[1] == 3 && shape[2] == 16 && shape[3] == 16);
    size_t n = latent_count(s);
    CHECK(n == 2 * 3 * 16 * 16);
    float *x = malloc((n + 1) * sizeof *x);
    uint8_t *px = malloc(n + 1);
    CHECK_ERROR(diffusion_sampler_get_latents(s, x, n - 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "count");
    CHECK_ERROR(diffusion_sampler_get_latents(s, x, n + 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "count");
    CHECK_ERROR(diffusion_sampler_get_latents(s, x, 0), DIFFUSION_ERROR_INVALID_ARGUMENT, "count");
    CHECK_ERROR(diffusion_sampler_set_latents(s, x, n - 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "count");
    CHECK_ERROR(diffusion_sampler_get_images(s, px, n - 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "size");
    CHECK_ERROR(diffusion_sampler_get_images(s, px, n + 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "size");

    /* x_T is standard normal noise. */
    CHECK_OK(diffusion_sampler_get_latents(s, x, n));
    double mean = 0, var = 0;
    for (size_t i = 0; i < n; i++) mean += x[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= (double)n;
    CHECK(mean > -0.15 && mean < 0.15 && var > 0.85 && var < 1.15);

    /* Timesteps: capacity 0 gives the count, a short buffer gets a prefix, a long one the rest untouched. */
    size_t count = 99;
    CHECK_OK(diffusion_sampler_timesteps(s, NULL, 0, &count));
    CHECK(count == 3);
    float ts[5] = {-1, -1, -1, -1, -1};
    count = 0;
    CHECK_OK(diffusion_sampler_timesteps(s, ts, 2, &count));
    CHECK(count == 3 && ts[0] >= 0 && ts[1] >= 0 && ts[2] == -1);
    CHECK_OK(diffusion_sampler_timesteps(s, ts, 5, &count));
    CHECK(count == 3 && ts[0] > ts[1] && ts[1] > ts[2] && ts[2] >= 0 && ts[3] == -1 && ts[4] == -1);

    /* Steps: remaining counts down, then a further step is an invalid state. */
    int32_t remaining = -1, done = -1, total = -1;
    CHECK_OK(diffusion_sampler_progress(s, &done, &total));
    CHECK(done == 0 && total == 3);
    CHECK_ERROR(diffusion_sampler_progress(NULL, &done, &total), DIFFUSION_ERROR_INVALID_ARGUMENT, "sampler");
    CHECK_OK(diffusion_sampler_step(s, &remaining));
    CHECK(remaining == 2);
    CHECK_OK(diffusion_sampler_progress(s, &done, NULL));
    CHECK(done == 1);
    CHECK_OK(diffusion_sampler_step(s, &remaining));
    CHECK(remaining == 1);
    CHECK_OK(diffusion_sampler_step(s, &remaining));
    CHECK(remaining == 0);
    CHECK_ERROR(diffusion_sampler_step(s, &remaining), DIFFUSION_ERROR_INVALID_STATE, NULL);
    CHECK_OK(diffusion_sampler_run(s, NULL, NULL));  /* nothing left to run */
    CHECK_OK(diffusion_sampler_get_latents(s, x, n));
    CHECK(all_finite(x, n));
    CHECK_OK(diffusion_sampler_get_images(s, px, n));
    {
        int32_t ishape[4];  /* a pixel model's images have x_t's size, channels last */
        CHECK_OK(diffusion_sampler_image_shape(s, ishape));
        CHECK((size_t)ishape[0] * ishape[1] * ishape[2] * ishape[3] == (size_t)n);
        CHECK_ERROR(diffusion_sampler_image_shape(s, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "shape");
    }
    free(x);
    free(px);
    diffusion_sampler_free(s);

    /* Seeds: the same seed gives the same x_T, another seed another. */
    diffusion_sampler *a = sampler(m, "ddpm", 5, 1, 1, NULL), *b = sampler(m, "ddpm", 5, 1, 1, NULL),
                      *c = sampler(m, "ddpm", 5, 2, 1, NULL);
    float *la = latents_of(a), *lb = latents_of(b), *lc = latents_of(c);
    size_t nn = latent_count(a);
    CHECK(memcmp(la, lb, nn * sizeof(float)) == 0);
    CHECK(memcmp(la, lc, nn * sizeof(float)) != 0);
    free(la);
    free(lb);
    free(lc);
    diffusion_sampler_free(a);
    diffusion_sampler_free(b);
    diffusion_sampler_free(c);
    diffusion_model_free(m);
}

static uint8_t expected_pixel(float x) {
    if (isnan(x)) return 0;
    float v = x / 2 + 0.5f;
    v = v < 0 ? 0 : v > 1 ? 1 : v;
    v *= 255;
    int i = (int)v;  /* v >= 0: truncation is floor */
    float frac = v - (float)i;
    return (uint8_t)(frac > 0.5f || (frac == 0.5f && (i & 1)) ? i + 1 : i);  /* round half to even */
}

static void test_images(void) {
    diffusion_model *m = load("plain", 1);
    diffusion_sampler *s = sampler(m, "ddim", 1, 0, 2, NULL);
    enum { B = 2, C = 3, HW = 16 * 16, N = B * C * HW };
    static float x[N];
    static uint8_t px[N];
    /* Every value: image n, channel c, pixel i → a distinct byte, to check the NHWC layout. */
    for (int n = 0; n < B; n++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < HW; i++) {
                int byte = (n * 97 + c * 61 + i) % 256;
                x[(n * C + c) * HW + i] = ((float)byte / 255.0f - 0.5f) * 2.0f;
            }
    /* The special values from the header's formula. */
    const float special[] = {-1, 0, 1, 3, NAN, -3, INFINITY, -INFINITY, 0.5f};
    const uint8_t want[] = {0, 128, 255, 255, 0, 0, 255, 0, 191};
    enum { NS = sizeof special / sizeof special[0] };
    for (int k = 0; k < NS; k++) x[k] = special[k];  /* image 0, channel 0, pixels 0..NS-1 */
    CHECK_OK(diffusion_sampler_set_latents(s, x, N));
    /* Before the run has finished only the preview call gives images. */
    CHECK_ERROR(diffusion_sampler_get_images(s, px, N), DIFFUSION_ERROR_INVALID_STATE, "preview");
    CHECK_OK(diffusion_sampler_get_preview_images(s, px, N));
    for (int k = 0; k < NS; k++) {
        if (px[k * C] != want[k]) {
            char what[128];
            snprintf(what, sizeof what, "latent %g → pixel %d, expected %d", (double)special[k], px[k * C], want[k]);
            g_checks++;
            fail_at(__FILE__, __LINE__, what);
        }
        CHECK(expected_pixel(special[k]) == want[k]);  /* the reference formula agrees */
    }
    int wrong = 0;
    for (int n = 0; n < B; n++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < HW; i++) {
                float v = x[(n * C + c) * HW + i];
                wrong += px[(n * HW + i) * C + c] != expected_pixel(v);
                if (!(n == 0 && c == 0 && i < NS)) wrong += px[(n * HW + i) * C + c] != (n * 97 + c * 61 + i) % 256;
            }
    CHECK(wrong == 0);
    /* get_latents returns exactly what set_latents stored (NaN included). */
    static float back[N];
    CHECK_OK(diffusion_sampler_get_latents(s, back, N));
    CHECK(memcmp(back, x, sizeof x) == 0);
    diffusion_sampler_free(s);
    diffusion_model_free(m);
}

/* A sampler too large for memory (the largest batch and size the library accepts: 13 TB of
   latents) must fail with a status, not abort the process. Run in a child process so that an
   abort is reported as a failure instead of ending the test run. */
/* Runs child() in a forked process (so an abort is a reported failure, not the end of the run)
   and checks that it exits 0; otherwise fails with `what`, the signal or the exit code. */
static void expect_child_ok(int (*child)(void), const char *what, int line) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); g_failures++; return; }
    if (pid == 0) _exit(child());
    int wstatus = 0;
    CHECK(waitpid(pid, &wstatus, 0) == pid);
    g_checks++;
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
        char message[400];
        snprintf(message, sizeof message, "%s: %s %d", what, WIFSIGNALED(wstatus) ? "killed by signal" : "child exit",
                 WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : WEXITSTATUS(wstatus));
        fail_at(__FILE__, line, message);
    }
}

static int out_of_memory_child(void) {
    alarm(20);
    diffusion_model *m = NULL;
    if (diffusion_model_load(fixture("plain"), NULL, &m) != DIFFUSION_OK) return 100;
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.batch = 4096;
    sp.height = 16384;
    sp.width = 16384;
    diffusion_sampler *s = NULL;
    diffusion_status st = diffusion_sampler_create(m, &sp, &s);
    if (st != DIFFUSION_OK) fprintf(stderr, "    (child: %s: %s)\n", diffusion_status_string(st), diffusion_last_error());
    return st == DIFFUSION_ERROR_OUT_OF_MEMORY || st == DIFFUSION_ERROR_INVALID_ARGUMENT ? 0 : 101;
}

static void test_out_of_memory(void) {
    expect_child_ok(out_of_memory_child, "diffusion_sampler_create(batch 4096, 16384x16384) "
                    "(expected OUT_OF_MEMORY or INVALID_ARGUMENT, never an abort)", __LINE__);
}

/* Without memory_limit the budget is what the process can have: under an address-space rlimit
   (ulimit -v) a sampler too large for it is refused with OUT_OF_MEMORY at creation instead of
   an allocation failing (which aborts) while it runs. In a forked child. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif

static int rlimit_budget_child(void) {
    alarm(60);
    struct rlimit r = {.rlim_cur = 3ull << 30, .rlim_max = RLIM_INFINITY};
    if (setrlimit(RLIMIT_AS, &r) != 0) return 102;
    diffusion_model *m = NULL;
    if (diffusion_model_load(fixture("plain"), NULL, &m) != DIFFUSION_OK) return 100;
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.batch = 64; /* estimated 3.8 GB: less than the machine's memory, more than the rlimit */
    sp.height = sp.width = 256;
    sp.steps = 1;
    diffusion_sampler *s = NULL;
    diffusion_status st = diffusion_sampler_create(m, &sp, &s);
    fprintf(stderr, "    (child: %s: %s)\n", diffusion_status_string(st), diffusion_last_error());
    if (st == DIFFUSION_OK) st = diffusion_sampler_run(s, NULL, NULL); /* aborted here before */
    return st == DIFFUSION_ERROR_OUT_OF_MEMORY && strstr(diffusion_last_error(), "3.22 GB") ? 0 : 101;
}

static void test_rlimit_budget(void) {
#ifdef UNDER_SANITIZER
    /* ASan and TSan map terabytes of shadow memory: under an RLIMIT_AS their own allocator fails
       before the library runs (the plain build of make test runs this case). */
    printf("    (rlimit_budget not run under a sanitizer: it cannot live within an RLIMIT_AS)\n");
    return;
#endif
    expect_child_ok(rlimit_budget_child, "a sampler over RLIMIT_AS (expected OUT_OF_MEMORY naming the 3.22 GB limit)", __LINE__);
}

/* An allocation the system refuses is an error, never an abort. With a caller's memory_limit far
   above an RLIMIT_AS of 6 GB, the budget lets work through that the rlimit cannot hold:
   - a predict at 8192² meets the rlimit inside the network (a 2.15 GB activation) and returns
     OUT_OF_MEMORY naming the refused allocation;
   - a sampler at 16384², whose latent-sized state lives in arrays, is refused at creation;
   then the same model predicts and runs a small sampler. In a forked child. */
static int allocation_failure_child(void) {
    alarm(120);
    struct rlimit r = {.rlim_cur = 6ull << 30, .rlim_max = RLIM_INFINITY};
    if (setrlimit(RLIMIT_AS, &r) != 0) return 102;
    diffusion_model_params mp;
    diffusion_model_params_init(&mp, sizeof mp);
    mp.memory_limit = 1ull << 40;
    diffusion_model *m = NULL;
    if (diffusion_model_load(fixture("plain"), &mp, &m) != DIFFUSION_OK) return 100;
    const size_t side = 8192, count = 3 * side * side;
    float *x = calloc(count, sizeof *x), *out = calloc(count, sizeof *out);
    if (!x || !out) return 103;
    float t = 10;
    diffusion_status st = diffusion_model_predict(m, x, 1, 3, (int32_t)side, (int32_t)side, &t, NULL, out, count);
    fprintf(stderr, "    (child: predict at 8192²: %s: %s)\n", diffusion_status_string(st), diffusion_last_error());
    if (st != DIFFUSION_ERROR_OUT_OF_MEMORY || !strstr(diffusion_last_error(), "refused an allocation")) return 101;
    free(x);
    free(out);
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.height = sp.width = 16384;
    sp.steps = 1;
    diffusion_sampler *s = NULL;
    st = diffusion_sampler_create(m, &sp, &s);
    fprintf(stderr, "    (child: sampler at 16384²: %s: %s)\n", diffusion_status_string(st), diffusion_last_error());
    if (st != DIFFUSION_ERROR_OUT_OF_MEMORY || !strstr(diffusion_last_error(), "sampler's state") || s) return 104;
    float small[3 * 32 * 32] = {0}, small_out[3 * 32 * 32];
    if (diffusion_model_predict(m, small, 1, 3, 32, 32, &t, NULL, small_out, 3 * 32 * 32) != DIFFUSION_OK) return 105;
    sp.height = sp.width = 32;
    if (diffusion_sampler_create(m, &sp, &s) != DIFFUSION_OK || diffusion_sampler_run(s, NULL, NULL) != DIFFUSION_OK) return 106;
    diffusion_sampler_free(s);
    diffusion_model_free(m);
    return 0;
}

static void test_allocation_failure(void) {
#ifdef UNDER_SANITIZER
    printf("    (allocation_failure not run under a sanitizer: it cannot live within an RLIMIT_AS)\n");
    return;
#endif
    expect_child_ok(allocation_failure_child, "allocations refused by RLIMIT_AS (expected OUT_OF_MEMORY twice, then small work)", __LINE__);
}

/* memory_limit: weights larger than the limit fail the load; work whose weights plus working
   memory exceed it fails with the numbers, and smaller work under the same limit runs. */
static void test_memory_limit(void) {
    char weights[4096];
    snprintf(weights, sizeof weights, "%s/diffusion_pytorch_model.safetensors", fixture("plain"));
    struct stat st;
    CHECK(stat(weights, &st) == 0);
    diffusion_model_params mp;
    diffusion_model_params_init(&mp, sizeof mp);
    CHECK(mp.memory_limit == 0);
    mp.memory_limit = (uint64_t)st.st_size / 2;
    diffusion_model *m = (diffusion_model *)(uintptr_t)0x10;
    CHECK_ERROR(diffusion_model_load(fixture("plain"), &mp, &m), DIFFUSION_ERROR_OUT_OF_MEMORY, "memory_limit");
    CHECK(m == NULL);
    CHECK(strstr(diffusion_last_error(), "weights") != NULL);
    /* Room for the weights and a few MB of work. */
    mp.memory_limit = (uint64_t)st.st_size + (8u << 20);
    CHECK_OK(diffusion_model_load(fixture("plain"), &mp, &m));
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.steps = 1;
    diffusion_sampler *s = NULL;
    CHECK_OK(diffusion_sampler_create(m, &sp, &s));
    CHECK_OK(diffusion_sampler_run(s, NULL, NULL));
    diffusion_sampler_free(s);
    sp.batch = 64;
    sp.height = sp.width = 256;
    s = (diffusion_sampler *)(uintptr_t)0x10;
    CHECK_ERROR(diffusion_sampler_create(m, &sp, &s), DIFFUSION_ERROR_OUT_OF_MEMORY, "memory_limit");
    CHECK(s == NULL);
    CHECK(strstr(diffusion_last_error(), "batch of 64 at 256x256") != NULL);
    static float x[4 * 3 * 256 * 256], out[4 * 3 * 256 * 256];
    float ts[4] = {1, 2, 3, 4};
    CHECK_ERROR(diffusion_model_predict(m, x, 4, 3, 256, 256, ts, NULL, out, 4 * 3 * 256 * 256),
                DIFFUSION_ERROR_OUT_OF_MEMORY, "memory_limit");
    diffusion_model_free(m);
}

/* precision: F32 by default, BF16 loads and reports itself, anything else is refused by name. The
   bf16 output is close to the f32 one but not equal (the bf16 kernels ran). */
static void test_precision(void) {
    diffusion_model_params mp;
    diffusion_model_params_init(&mp, sizeof mp);
    CHECK(mp.precision == DIFFUSION_PRECISION_F32);
    diffusion_model *m32 = NULL, *m16 = (diffusion_model *)(uintptr_t)0x10;
    mp.precision = 2;
    CHECK_ERROR(diffusion_model_load(fixture("plain"), &mp, &m16), DIFFUSION_ERROR_INVALID_ARGUMENT, "precision 2");
    CHECK(m16 == NULL);
    mp.precision = -1;
    CHECK_ERROR(diffusion_model_load(fixture("plain"), &mp, &m16), DIFFUSION_ERROR_INVALID_ARGUMENT, "precision -1");
    mp.precision = DIFFUSION_PRECISION_BF16;
    CHECK_OK(diffusion_model_load(fixture("plain"), &mp, &m16));
    CHECK_OK(diffusion_model_load(fixture("plain"), NULL, &m32));
    diffusion_model_info info = {.struct_size = sizeof info};
    CHECK_OK(diffusion_model_get_info(m16, &info));
    CHECK(info.precision == DIFFUSION_PRECISION_BF16);
    CHECK_OK(diffusion_model_get_info(m32, &info));
    CHECK(info.precision == DIFFUSION_PRECISION_F32 && info.precision_native);
    enum { N = 2 * 3 * 32 * 32 };
    static float x[N], a[N], b[N];
    for (int i = 0; i < N; i++) x[i] = (float)((i * 7919) % 2001 - 1000) / 1000.0f;
    float ts[2] = {10, 900};
    CHECK_OK(diffusion_model_predict(m32, x, 2, 3, 32, 32, ts, NULL, a, N));
    CHECK_OK(diffusion_model_predict(m16, x, 2, 3, 32, 32, ts, NULL, b, N));
    float scale = 0;
    for (int i = 0; i < N; i++) scale = fabsf(a[i]) > scale ? fabsf(a[i]) : scale;
    double error = max_abs_diff(a, b, 1, N) / scale;  /* INFINITY for NaN: fails the bound */
    CHECK(error > 1e-4 && error <= 3e-2);
    diffusion_model_free(m16);
    diffusion_model_free(m32);
}

/* ---- Cancel and progress ----------------------------------------------------------------- */

typedef struct {
    int calls, stop_after;
    int32_t last_step, total;
    float last_t;
    bool in_order;
} progress_log;

static bool log_progress(int32_t step, int32_t total, float timestep, void *user) {
    progress_log *p = user;
    p->calls++;
    if (step != p->last_step + 1) p->in_order = false;
    p->last_step = step;
    p->total = total;
    p->last_t = timestep;
    return p->stop_after == 0 || p->calls < p->stop_after;
}

static void test_progress_cancel(void) {
    diffusion_model *m = load("plain", 1);
    diffusion_sampler *ref = sampler(m, "ddim", 6, 3, 1, NULL);
    progress_log all = {.in_order = true};
    CHECK_OK(diffusion_sampler_run(ref, log_progress, &all));
    CHECK(all.calls == 6 && all.total == 6 && all.last_step == 6 && all.in_order);
    float ts[6];
    size_t count;
    CHECK_OK(diffusion_sampler_timesteps(ref, ts, 6, &count));
    CHECK(all.last_t == ts[5]);

    /* The callback stops the run after step 2; the sampler keeps x_t and can resume. */
    diffusion_sampler *s = sampler(m, "ddim", 6, 3, 1, NULL);
    progress_log p = {.stop_after = 2, .in_order = true};
    CHECK_ERROR(diffusion_sampler_run(s, log_progress, &p), DIFFUSION_ERROR_CANCELLED, NULL);
    CHECK(p.calls == 2 && p.last_step == 2 && p.last_t == ts[1]);
    size_t n = latent_count(s);
    float *mid = malloc(n * sizeof *mid);
    CHECK_OK(diffusion_sampler_get_latents(s, mid, n));
    CHECK(all_finite(mid, n));
    int32_t remaining = -1;
    CHECK_OK(diffusion_sampler_step(s, &remaining));  /* step 3 */
    CHECK(remaining == 3);
    p.stop_after = 0;
    p.last_step = 3;
    CHECK_OK(diffusion_sampler_run(s, log_progress, &p));  /* steps 4..6 */
    CHECK(p.calls == 5 && p.last_step == 6 && p.in_order);
    float *a = latents_of(ref), *b = latents_of(s);
    CHECK(memcmp(a, b, n * sizeof(float)) == 0);  /* interrupted = uninterrupted */
    free(a);
    free(b);
    free(mid);
    diffusion_sampler_free(s);
    diffusion_sampler_free(ref);

    /* A pending cancel is consumed by the next step or run, once. */
    s = sampler(m, "ddim", 3, 3, 1, NULL);
    diffusion_sampler_cancel(s);
    CHECK_ERROR(diffusion_sampler_step(s, &remaining), DIFFUSION_ERROR_CANCELLED, NULL);
    remaining = -1;
    CHECK_OK(diffusion_sampler_step(s, &remaining));
    CHECK(remaining == 2);
    diffusion_sampler_cancel(s);
    diffusion_sampler_cancel(s);  /* twice is still one cancel */
    p = (progress_log){.in_order = true, .last_step = 1};
    CHECK_ERROR(diffusion_sampler_run(s, log_progress, &p), DIFFUSION_ERROR_CANCELLED, NULL);
    CHECK(p.calls == 0);
    CHECK_OK(diffusion_sampler_run(s, log_progress, &p));
    CHECK(p.calls == 2 && p.last_step == 3 && p.in_order);
    diffusion_sampler_free(s);
    diffusion_model_free(m);
}

typedef struct {
    diffusion_sampler *sampler;
    atomic_int steps_done;
    atomic_bool cancel_sent;
    int32_t total;
} cancel_ctx;

static bool count_steps(int32_t step, int32_t total, float timestep, void *user) {
    (void)timestep;
    cancel_ctx *c = user;
    c->total = total;
    atomic_store(&c->steps_done, step);
    return true;
}

static void *cancel_thread(void *arg) {
    cancel_ctx *c = arg;
    while (atomic_load(&c->steps_done) < 2) {
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    diffusion_sampler_cancel(c->sampler);
    atomic_store(&c->cancel_sent, true);
    return NULL;
}

static void test_cancel_from_thread(void) {
    diffusion_model *m = load("cifar_small", 1);
    /* ddpm over 1000 train timesteps = 1000 steps: seconds of work, cancelled after step 2. */
    cancel_ctx c = {.sampler = sampler(m, "ddpm", 0, 1, 1, "{\"num_train_timesteps\": 1000}")};
    atomic_init(&c.steps_done, 0);
    atomic_init(&c.cancel_sent, false);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, cancel_thread, &c) == 0);
    CHECK_ERROR(diffusion_sampler_run(c.sampler, count_steps, &c), DIFFUSION_ERROR_CANCELLED, NULL);
    pthread_join(t, NULL);
    int done = atomic_load(&c.steps_done);
    CHECK(atomic_load(&c.cancel_sent));
    CHECK(c.total == 1000 && done >= 2 && done < 1000);
    float *x = latents_of(c.sampler);
    CHECK(all_finite(x, latent_count(c.sampler)));
    free(x);
    /* The cancel was consumed: stepping continues. */
    int32_t remaining = -1;
    CHECK_OK(diffusion_sampler_step(c.sampler, &remaining));
    CHECK(remaining == 1000 - done - 1);
    diffusion_sampler_free(c.sampler);
    diffusion_model_free(m);
}

/* diffusion_sampler_cancel may come from any thread at any time, also while another thread frees
   the sampler: 300 rounds of a thread cancelling in a loop while this one frees the sampler under
   it. Before the handle registry took its reference under its lock this was a use-after-free;
   in a plain build a regression crashes at best, the sanitizer builds report it. */
typedef struct {
    diffusion_sampler *_Atomic sampler;
    atomic_bool stop;
} cancel_race;

static void *cancel_loop(void *arg) {
    cancel_race *r = arg;
    while (!atomic_load(&r->stop)) diffusion_sampler_cancel(atomic_load(&r->sampler));
    return NULL;
}

static void test_cancel_races_free(void) {
    diffusion_model *m = load("cifar_small", 1);
    for (int round = 0; round < 300; round++) {
        cancel_race r;
        atomic_init(&r.sampler, sampler(m, NULL, 2, 1, 1, NULL));
        atomic_init(&r.stop, false);
        pthread_t t;
        CHECK(pthread_create(&t, NULL, cancel_loop, &r) == 0);
        for (volatile int spin = 0; spin < round * 50; spin++) {}
        diffusion_sampler_free(atomic_load(&r.sampler));  /* the loop goes on cancelling the freed handle */
        for (volatile int spin = 0; spin < 2000; spin++) {}
        atomic_store(&r.stop, true);
        pthread_join(t, NULL);
    }
    diffusion_model_free(m);
}

/* A second thread using a sampler while a run is inside it (misuse the header forbids) gets
   INVALID_STATE, deterministically: the run's progress callback holds the run at step 1 until the
   other thread has tried. The owner's nested call from its callback passes; after the run the
   sampler is free again. */
typedef struct {
    diffusion_sampler *sampler;
    atomic_int phase; /* 1: the run is inside its callback; 2: the other thread has tried */
    diffusion_status step, guidance, latents;
    bool message_named;
} intruder_ctx;

static bool hold_at_first_step(int32_t step, int32_t total, float t, void *user) {
    (void)total, (void)t;
    intruder_ctx *c = user;
    if (step == 1) {
        atomic_store(&c->phase, 1);
        while (atomic_load(&c->phase) != 2) sched_yield();
        /* The owner's own nested call still works (it is not another thread). */
        int32_t done = -1, all = -1;
        if (diffusion_sampler_progress(c->sampler, &done, &all) != DIFFUSION_OK || done != 1) return false;
    }
    return true;
}

static void *intruder(void *arg) {
    intruder_ctx *c = arg;
    while (atomic_load(&c->phase) != 1) sched_yield();
    c->step = diffusion_sampler_step(c->sampler, NULL);
    c->message_named = strstr(diffusion_last_error(), "another thread") != NULL;
    c->guidance = diffusion_sampler_set_guidance_scale(c->sampler, 2);
    float x[1];
    c->latents = diffusion_sampler_get_latents(c->sampler, x, 1);
    atomic_store(&c->phase, 2);
    return NULL;
}

static void *progress_elsewhere(void *arg) {
    intruder_ctx *c = arg;
    int32_t done = 0, all = 0;
    c->step = diffusion_sampler_progress(c->sampler, &done, &all);
    return NULL;
}

static void test_two_threads_on_one_sampler(void) {
    diffusion_model *m = load("cifar_small", 1);
    intruder_ctx c = {.sampler = sampler(m, "ddim", 3, 1, 1, NULL)};
    atomic_init(&c.phase, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, intruder, &c) == 0);
    CHECK_OK(diffusion_sampler_run(c.sampler, hold_at_first_step, &c));
    pthread_join(t, NULL);
    CHECK(c.step == DIFFUSION_ERROR_INVALID_STATE);
    CHECK(c.guidance == DIFFUSION_ERROR_INVALID_STATE);
    CHECK(c.latents == DIFFUSION_ERROR_INVALID_STATE);
    CHECK(c.message_named);
    int32_t done = 0, all = 0;
    CHECK_OK(diffusion_sampler_progress(c.sampler, &done, &all));
    CHECK(done == 3 && all == 3);
    /* The run left the sampler: another thread may use it now. */
    CHECK(pthread_create(&t, NULL, progress_elsewhere, &c) == 0);
    pthread_join(t, NULL);
    CHECK(c.step == DIFFUSION_OK);
    diffusion_sampler_free(c.sampler);
    diffusion_model_free(m);
}

/* ---- Threads and determinism ------------------------------------------------------------- */

typedef struct {
    const diffusion_model *model;
    uint64_t seed;
    diffusion_status status;
    float *latents;
} run_job;

static void *run_job_thread(void *arg) {
    run_job *j = arg;
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.scheduler = "ddpm";
    sp.steps = 8;
    sp.seed = j->seed;
    sp.batch = 2;
    diffusion_sampler *s = NULL;
    j->status = diffusion_sampler_create(j->model, &sp, &s);
    if (j->status == DIFFUSION_OK) j->status = diffusion_sampler_run(s, NULL, NULL);
    if (j->status == DIFFUSION_OK) {
        size_t n = latent_count(s);
        j->latents = malloc(n * sizeof(float));
        j->status = diffusion_sampler_get_latents(s, j->latents, n);
    }
    diffusion_sampler_free(s);
    return NULL;
}

static void test_threads_and_determinism(void) {
    /* Two samplers with the same seed, on two threads, on one shared model. */
    diffusion_model *m = load("cifar_small", 2);
    run_job jobs[3] = {{m, 11, DIFFUSION_OK, NULL}, {m, 11, DIFFUSION_OK, NULL}, {m, 11, DIFFUSION_OK, NULL}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&t[i], NULL, run_job_thread, &jobs[i]) == 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    /* ...and the same run alone on a model loaded with a single thread. */
    diffusion_model *m1 = load("cifar_small", 1);
    jobs[2].model = m1;
    run_job_thread(&jobs[2]);
    const size_t n = 2 * 3 * 32 * 32;
    for (int i = 0; i < 3; i++) CHECK(jobs[i].status == DIFFUSION_OK && jobs[i].latents != NULL);
    if (jobs[0].latents && jobs[1].latents && jobs[2].latents) {
        CHECK(all_finite(jobs[0].latents, n));
        CHECK(memcmp(jobs[0].latents, jobs[1].latents, n * sizeof(float)) == 0);  /* concurrent */
        CHECK(memcmp(jobs[0].latents, jobs[2].latents, n * sizeof(float)) == 0);  /* n_threads 2 vs 1 */
    }
    for (int i = 0; i < 3; i++) free(jobs[i].latents);
    diffusion_model_free(m1);
    diffusion_model_free(m);
}


/* ---- Issue 4: scheduler names, caller's denoiser, classifier guidance, img2img, noise ------ */

typedef struct {
    int calls;
    bool fail, nan;
    float last_t;
    int32_t shape[4];
    int32_t out_channels;
} toy_state;

/* 0.7 x + 0.3 sin x: a contraction, like the fixtures' toy network. */
static bool toy_denoise(const float *x, const int32_t shape[4], float t, float *out, int32_t out_channels,
                        void *user) {
    toy_state *st = user;
    st->calls++;
    st->last_t = t;
    memcpy(st->shape, shape, sizeof st->shape);
    st->out_channels = out_channels;
    if (st->fail) return false;
    size_t n = (size_t)shape[0] * (size_t)out_channels * (size_t)shape[2] * (size_t)shape[3];
    for (size_t i = 0; i < n; i++) out[i] = 0.7f * x[i % ((size_t)shape[0] * shape[1] * shape[2] * shape[3])] +
                                            0.3f * sinf(x[i % ((size_t)shape[0] * shape[1] * shape[2] * shape[3])]);
    if (st->nan) out[n - 1] = NAN;
    return true;
}

/* A denoiser that tries to step (and to re-seed) its own sampler from inside the callback. */
typedef struct {
    diffusion_sampler *self;
    diffusion_status inner_step, inner_noise;
} reentrant_state;

static bool reentrant_denoise(const float *x, const int32_t shape[4], float t, float *out, int32_t out_channels,
                              void *user) {
    (void)t;
    reentrant_state *st = user;
    size_t n = (size_t)shape[0] * shape[1] * shape[2] * shape[3];
    st->inner_step = diffusion_sampler_step(st->self, NULL);
    float *noise = calloc(n, sizeof *noise);
    st->inner_noise = diffusion_sampler_set_start_noise(st->self, noise, n);
    free(noise);
    for (size_t i = 0; i < n * (size_t)out_channels / (size_t)shape[1]; i++) out[i] = x[i % n];
    return true;
}

static diffusion_sampler *toy_sampler(toy_state *st, const char *scheduler, int32_t steps, uint64_t seed) {
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.scheduler = scheduler;
    sp.steps = steps;
    sp.seed = seed;
    sp.batch = 2;
    sp.channels = 3;
    sp.height = 4;
    sp.width = 5;
    diffusion_sampler *s = NULL;
    CHECK_OK(diffusion_sampler_create_with_denoiser(toy_denoise, st, &sp, &s));
    return s;
}

static bool gradient_fails(const float *x, const int32_t shape[4], float t, float *grad, void *user) {
    (void)x; (void)shape; (void)t; (void)grad; (void)user;
    return false;
}

static bool gradient_nan(const float *x, const int32_t shape[4], float t, float *grad, void *user) {
    (void)x; (void)t; (void)user;
    size_t n = (size_t)shape[0] * shape[1] * shape[2] * shape[3];
    for (size_t i = 0; i < n; i++) grad[i] = NAN;
    return true;
}

static bool gradient_ones(const float *x, const int32_t shape[4], float t, float *grad, void *user) {
    (void)x; (void)t;
    (*(int *)user)++;
    size_t n = (size_t)shape[0] * shape[1] * shape[2] * shape[3];
    for (size_t i = 0; i < n; i++) grad[i] = 1;
    return true;
}

static void test_scheduler_names(void) {
    const char *const *names = diffusion_scheduler_names();
    static const char *const expected[] = {"ddpm", "ddim", "euler", "euler_a", "heun", "dpmpp_2m",
                                           "pndm", "lms", "unipc", "lcm"};
    size_t n = 0;
    while (names[n] != NULL) n++;
    CHECK(n == sizeof expected / sizeof expected[0]);
    for (size_t i = 0; i < n && i < sizeof expected / sizeof expected[0]; i++) CHECK(strcmp(names[i], expected[i]) == 0);

    const char *json = NULL;
    CHECK_OK(diffusion_scheduler_info_json("dpmpp_2m_sde", &json));
    CHECK(json != NULL && strstr(json, "\"DPMSolverMultistepScheduler\"") && strstr(json, "sde-dpmsolver++"));
    const char *again = NULL;
    CHECK_OK(diffusion_scheduler_info_json("dpmpp_2m_sde", &again));
    CHECK(again == json); /* static: the same string each time */
    CHECK_OK(diffusion_scheduler_info_json("EulerAncestralDiscreteScheduler", &json));
    CHECK(strstr(json, "\"euler_a\"") != NULL);
    CHECK_ERROR(diffusion_scheduler_info_json("k_dpm_fast", &json), DIFFUSION_ERROR_INVALID_ARGUMENT, "unipc");
    CHECK(json == NULL);
    CHECK_ERROR(diffusion_scheduler_info_json(NULL, &json), DIFFUSION_ERROR_INVALID_ARGUMENT, "name");
    CHECK_ERROR(diffusion_scheduler_info_json("ddim", NULL), DIFFUSION_ERROR_INVALID_ARGUMENT, "out_json");

    /* eta belongs to ddim; unknown names list the known ones. */
    diffusion_model *m = load("plain", 1);
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    diffusion_sampler *s = NULL;
    sp.scheduler = "ddpm";
    sp.eta = 0.5f;
    CHECK_ERROR(diffusion_sampler_create(m, &sp, &s), DIFFUSION_ERROR_INVALID_ARGUMENT, "eta");
    sp.eta = 0;
    sp.scheduler = "k_dpm_fast";
    CHECK_ERROR(diffusion_sampler_create(m, &sp, &s), DIFFUSION_ERROR_INVALID_ARGUMENT, "euler_a");
    sp.scheduler = "ddim";
    sp.channels = 4; /* the model takes 3 */
    CHECK_ERROR(diffusion_sampler_create(m, &sp, &s), DIFFUSION_ERROR_INVALID_ARGUMENT, "channels");
    sp.channels = 3;
    sp.steps = 4;
    CHECK_OK(diffusion_sampler_create(m, &sp, &s));
    diffusion_sampler_free(s);
    diffusion_model_free(m);
}

static void test_custom_denoiser(void) {
    toy_state st = {0};
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    diffusion_sampler *s = (diffusion_sampler *)(uintptr_t)0x10;
    CHECK_ERROR(diffusion_sampler_create_with_denoiser(NULL, &st, &sp, &s), DIFFUSION_ERROR_INVALID_ARGUMENT, "denoise");
    CHECK(s == NULL);
    CHECK_ERROR(diffusion_sampler_create_with_denoiser(toy_denoise, &st, &sp, &s), DIFFUSION_ERROR_INVALID_ARGUMENT,
                "channels");
    CHECK_ERROR(diffusion_sampler_create_with_denoiser(toy_denoise, &st, NULL, &s), DIFFUSION_ERROR_INVALID_ARGUMENT,
                "channels");
    CHECK_ERROR(diffusion_sampler_create_with_denoiser(toy_denoise, &st, &sp, NULL), DIFFUSION_ERROR_INVALID_ARGUMENT,
                "out_sampler");

    s = toy_sampler(&st, "ddim", 10, 3);
    int32_t shape[4];
    CHECK_OK(diffusion_sampler_shape(s, shape));
    CHECK(shape[0] == 2 && shape[1] == 3 && shape[2] == 4 && shape[3] == 5);
    /* The start noise is torch.randn(shape) of the seed (init_noise_sigma 1 for ddim). */
    size_t n = latent_count(s);
    float *noise = malloc(n * sizeof *noise), *x = latents_of(s);
    CHECK_OK(diffusion_noise(3, noise, n));
    CHECK(memcmp(noise, x, n * sizeof *x) == 0);
    free(x);

    CHECK_ERROR(diffusion_sampler_set_guidance_scale(s, 2), DIFFUSION_ERROR_NO_UNCONDITIONAL, "denoiser");
    CHECK_OK(diffusion_sampler_set_guidance_scale(s, 1));
    int32_t label = 1;
    CHECK_ERROR(diffusion_sampler_set_class_label(s, &label, 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "model");

    /* A failing callback fails the step with CALLBACK and leaves the sampler where it was. */
    st.fail = true;
    CHECK_ERROR(diffusion_sampler_step(s, NULL), DIFFUSION_ERROR_CALLBACK, "denoiser");
    int32_t done = -1, total = -1;
    CHECK_OK(diffusion_sampler_progress(s, &done, &total));
    CHECK(done == 0 && total == 10);
    st.fail = false;
    st.nan = true; /* a non-finite output is the callback's failure too, and changes nothing */
    CHECK_ERROR(diffusion_sampler_step(s, NULL), DIFFUSION_ERROR_CALLBACK, "not finite");
    CHECK_OK(diffusion_sampler_progress(s, &done, &total));
    CHECK(done == 0);
    st.nan = false;
    st.calls = 0;
    CHECK_OK(diffusion_sampler_run(s, NULL, NULL));
    CHECK(st.calls == 10);
    CHECK(st.shape[0] == 2 && st.shape[1] == 3 && st.shape[2] == 4 && st.shape[3] == 5 && st.out_channels == 3);
    float ts[10];
    size_t count = 0;
    CHECK_OK(diffusion_sampler_timesteps(s, ts, 10, &count));
    CHECK(count == 10 && st.last_t == ts[9]);
    x = latents_of(s);
    CHECK(all_finite(x, n));
    free(x);
    diffusion_sampler_free(s);

    /* A callback that steps its own sampler gets INVALID_STATE; the outer step completes. */
    {
        reentrant_state rs = {0};
        diffusion_sampler_params rp;
        diffusion_sampler_params_init(&rp, sizeof rp);
        rp.scheduler = "ddim";
        rp.steps = 3;
        rp.channels = 1;
        rp.height = rp.width = 2;
        CHECK_OK(diffusion_sampler_create_with_denoiser(reentrant_denoise, &rs, &rp, &rs.self));
        CHECK_OK(diffusion_sampler_step(rs.self, NULL));
        CHECK(rs.inner_step == DIFFUSION_ERROR_INVALID_STATE);
        CHECK(strstr(diffusion_last_error(), "callbacks") != NULL || rs.inner_noise == DIFFUSION_ERROR_INVALID_STATE);
        CHECK(rs.inner_noise == DIFFUSION_ERROR_INVALID_STATE);
        CHECK_OK(diffusion_sampler_progress(rs.self, &done, &total));
        CHECK(done == 1 && total == 3);
        diffusion_sampler_free(rs.self);
    }

    /* Every scheduler runs with a caller's denoiser; heun evaluates 2n-1 times. */
    const char *const *names = diffusion_scheduler_names();
    for (size_t i = 0; names[i] != NULL; i++) {
        st.calls = 0;
        s = toy_sampler(&st, names[i], 6, 1);
        if (s == NULL) continue;
        CHECK_OK(diffusion_sampler_timesteps(s, NULL, 0, &count));
        CHECK_OK(diffusion_sampler_run(s, NULL, NULL));
        CHECK(st.calls == (int)count);
        if (strcmp(names[i], "heun") == 0) CHECK(count == 11);
        x = latents_of(s);
        CHECK(all_finite(x, n));
        free(x);
        diffusion_sampler_free(s);
    }
    free(noise);
}

static void test_classifier_guidance_and_img2img(void) {
    toy_state st = {0};
    diffusion_sampler *s = toy_sampler(&st, "euler", 8, 5);
    int grads = 0;
    CHECK_ERROR(diffusion_sampler_set_classifier_guidance(s, gradient_ones, &grads, NAN),
                DIFFUSION_ERROR_INVALID_ARGUMENT, "scale");
    CHECK_OK(diffusion_sampler_set_classifier_guidance(s, gradient_fails, NULL, 1));
    CHECK_ERROR(diffusion_sampler_step(s, NULL), DIFFUSION_ERROR_CALLBACK, "classifier gradient");
    CHECK_OK(diffusion_sampler_set_classifier_guidance(s, gradient_nan, NULL, 1));
    CHECK_ERROR(diffusion_sampler_step(s, NULL), DIFFUSION_ERROR_CALLBACK, "not finite");
    /* A constant gradient pushes every value up compared with the unguided run. */
    CHECK_OK(diffusion_sampler_set_classifier_guidance(s, gradient_ones, &grads, 2));
    CHECK_OK(diffusion_sampler_run(s, NULL, NULL));
    CHECK(grads == 8);
    size_t n = latent_count(s);
    float *guided = latents_of(s);
    diffusion_sampler_free(s);
    s = toy_sampler(&st, "euler", 8, 5);
    CHECK_OK(diffusion_sampler_set_classifier_guidance(s, gradient_ones, &grads, 0)); /* 0 = off */
    CHECK_OK(diffusion_sampler_run(s, NULL, NULL));
    float *plain = latents_of(s);
    double mean_shift = 0;
    for (size_t i = 0; i < n; i++) mean_shift += (double)guided[i] - plain[i];
    CHECK(mean_shift / (double)n > 0.1);
    free(guided);
    free(plain);
    diffusion_sampler_free(s);

    /* img2img: strength picks the tail of the schedule; only before the first step. */
    s = toy_sampler(&st, "ddim", 10, 2);
    float *image = calloc(n, sizeof *image);
    CHECK_ERROR(diffusion_sampler_set_init_latents(s, image, n, 0.0), DIFFUSION_ERROR_INVALID_ARGUMENT, "strength");
    CHECK_ERROR(diffusion_sampler_set_init_latents(s, image, n, 1.5), DIFFUSION_ERROR_INVALID_ARGUMENT, "strength");
    CHECK_ERROR(diffusion_sampler_set_init_latents(s, image, n, NAN), DIFFUSION_ERROR_INVALID_ARGUMENT, "strength");
    CHECK_ERROR(diffusion_sampler_set_init_latents(s, image, n, 0.05), DIFFUSION_ERROR_INVALID_ARGUMENT, "strength");
    CHECK_ERROR(diffusion_sampler_set_init_latents(s, image, n - 1, 0.5), DIFFUSION_ERROR_INVALID_ARGUMENT, "expected");
    CHECK_ERROR(diffusion_sampler_set_init_latents(s, NULL, n, 0.5), DIFFUSION_ERROR_INVALID_ARGUMENT, "latents");
    float full[10], tail[10];
    size_t count = 0;
    CHECK_OK(diffusion_sampler_timesteps(s, full, 10, &count));
    CHECK_OK(diffusion_sampler_set_init_latents(s, image, n / 2, 0.7)); /* one image for the batch */
    CHECK_OK(diffusion_sampler_timesteps(s, tail, 10, &count));
    CHECK(count == 7 && memcmp(tail, full + 3, 7 * sizeof(float)) == 0);
    int32_t done = -1, total = -1;
    CHECK_OK(diffusion_sampler_progress(s, &done, &total));
    CHECK(done == 0 && total == 7);
    uint8_t *pixels = malloc(n);
    memset(pixels, 255, n);
    CHECK_ERROR(diffusion_sampler_set_init_image(s, pixels, n + 1, 0.5), DIFFUSION_ERROR_INVALID_ARGUMENT, "size");
    CHECK_OK(diffusion_sampler_set_init_image(s, pixels, n, 0.5));
    CHECK_OK(diffusion_sampler_timesteps(s, NULL, 0, &count));
    CHECK(count == 5);
    CHECK_OK(diffusion_sampler_step(s, NULL));
    CHECK_ERROR(diffusion_sampler_set_init_image(s, pixels, n, 0.5), DIFFUSION_ERROR_INVALID_STATE, "first step");
    float *noise = calloc(n, sizeof *noise);
    CHECK_ERROR(diffusion_sampler_set_start_noise(s, noise, n), DIFFUSION_ERROR_INVALID_STATE, "first step");
    diffusion_sampler_free(s);

    /* start noise + slerp */
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *mid = malloc(n * sizeof *mid);
    CHECK_OK(diffusion_noise(11, a, n));
    CHECK_OK(diffusion_noise(12, b, n));
    CHECK_OK(diffusion_slerp(a, b, n, 0, mid));
    CHECK(max_abs_diff(mid, a, 1, n) < 1e-6);
    CHECK_OK(diffusion_slerp(a, b, n, 1, mid));
    CHECK(max_abs_diff(mid, b, 1, n) < 1e-6);
    CHECK_OK(diffusion_slerp(a, b, n, 0.5f, mid));
    double na = 0, nm = 0;
    for (size_t i = 0; i < n; i++) { na += (double)a[i] * a[i]; nm += (double)mid[i] * mid[i]; }
    CHECK(nm > 0.8 * na); /* a linear midpoint of independent noise would have about half the norm */
    CHECK_ERROR(diffusion_slerp(a, NULL, n, 0.5f, mid), DIFFUSION_ERROR_INVALID_ARGUMENT, "NULL");
    s = toy_sampler(&st, "euler", 8, 5);
    CHECK_ERROR(diffusion_sampler_set_start_noise(s, mid, n - 1), DIFFUSION_ERROR_INVALID_ARGUMENT, "count");
    CHECK_OK(diffusion_sampler_set_start_noise(s, mid, n));
    float *x = latents_of(s);
    /* euler's x_T = noise * init_noise_sigma (> 1): proportional to mid */
    double ratio = (double)x[0] / mid[0];
    CHECK(ratio > 1);
    CHECK(max_abs_diff(x, mid, ratio, n) < 1e-3);
    free(x);
    diffusion_sampler_free(s);
    free(a); free(b); free(mid); free(noise); free(pixels); free(image);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FIXTURES_DIR (e.g. Tests/Fixtures)\n", argv[0]);
        return 2;
    }
    g_fixtures = argv[1];
    static const test_case tests[] = {
        {"version_and_status", test_version_and_status},
        {"out_of_memory", test_out_of_memory},  /* forks: before any test starts threads */
        {"rlimit_budget", test_rlimit_budget},  /* forks too */
        {"allocation_failure", test_allocation_failure},  /* forks too */
        {"last_error_per_thread", test_last_error_per_thread},
        {"null_arguments", test_null_arguments},
        {"handles", test_handles},
        {"info_and_config", test_info_and_config},
        {"params_versions", test_params_versions},
        {"load_errors", test_load_errors},
        {"memory_limit", test_memory_limit},
        {"precision", test_precision},
        {"predict", test_predict},
        {"sampler_create_errors", test_sampler_create_errors},
        {"guidance_and_labels", test_guidance_and_labels},
        {"buffers_and_steps", test_buffers_and_steps},
        {"images", test_images},
        {"progress_cancel", test_progress_cancel},
        {"cancel_from_thread", test_cancel_from_thread},
        {"cancel_races_free", test_cancel_races_free},
        {"two_threads_on_one_sampler", test_two_threads_on_one_sampler},
        {"threads_and_determinism", test_threads_and_determinism},
        {"scheduler_names", test_scheduler_names},
        {"custom_denoiser", test_custom_denoiser},
        {"classifier_guidance_img2img", test_classifier_guidance_and_img2img},
    };
    return run_tests("test_api", tests, sizeof tests / sizeof tests[0]);
}
