/*
 * generate — make images with libdiffusion and save them as one PNG grid.
 *
 *     generate [--model DIR] [--scheduler ddpm|ddim] [--steps N] [--seed S] [--count N]
 *              [--eta X] [--class K] [--guidance G] [--prompt TEXT] [--negative-prompt TEXT]
 *              [--output FILE.png]
 *
 * --model defaults to models/digits (the shipped digits model, from the source tree's root).
 * For a class-conditional model, --class picks the class (default: 0, 1, 2, ... across the
 * batch) and --guidance sets classifier-free guidance (1 = none). For a Stable Diffusion
 * pipeline folder, --prompt and --negative-prompt condition the images (e.g. --guidance 7.5).
 *
 * Build (see README.md):
 *     cc -std=c11 -Wall generate.c $(pkg-config --cflags --libs diffusion) -lz -o generate
 *
 * The library does the diffusion; this file shows the calls a program makes (load a model,
 * create a sampler, run it, read the pixels, free everything) plus a small PNG writer on zlib.
 */
#define _POSIX_C_SOURCE 200809L /* isatty */

#include <diffusion.h>
#include <zlib.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- Command line ------------------------------------------------------------------------ */

typedef struct {
    const char *model;      /* default models/digits */
    const char *scheduler;  /* NULL: the model's own (scheduler_config.json), else ddpm */
    int32_t steps;          /* 0: the scheduler's default */
    uint64_t seed;
    int32_t count;          /* images, generated as one batch */
    float eta;              /* ddim only */
    int32_t class_label;    /* -1: one class per image in turn */
    float guidance;         /* 1: no guidance */
    const char *prompt;     /* text pipelines */
    const char *negative_prompt;
    const char *output;
} options;

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--model DIR] [--scheduler ddpm|ddim] [--steps N] [--seed S] [--count N]\n"
            "          [--eta X] [--class K] [--guidance G] [--prompt TEXT] [--negative-prompt TEXT]\n"
            "          [--output FILE.png]\n",
            argv0);
    exit(2);
}

/* Parses an integer in [min, max]; exits with a message otherwise. */
static long long parse_int(const char *flag, const char *text, long long min, long long max) {
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "error: %s needs an integer between %lld and %lld, got \"%s\"\n", flag, min, max, text);
        exit(2);
    }
    return v;
}

static options parse_options(int argc, char **argv) {
    options o = {.model = "models/digits", .count = 1, .class_label = -1, .guidance = 1, .output = "out.png"};
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "-h") == 0 || strcmp(flag, "--help") == 0) usage(argv[0]);
        if (i + 1 >= argc) usage(argv[0]); /* every option takes a value */
        const char *value = argv[++i];
        if (strcmp(flag, "--model") == 0) {
            o.model = value;
        } else if (strcmp(flag, "--scheduler") == 0) {
            o.scheduler = value;
        } else if (strcmp(flag, "--steps") == 0) {
            o.steps = (int32_t)parse_int(flag, value, 1, 100000);
        } else if (strcmp(flag, "--seed") == 0) {
            o.seed = (uint64_t)parse_int(flag, value, 0, INT64_MAX);
        } else if (strcmp(flag, "--count") == 0) {
            o.count = (int32_t)parse_int(flag, value, 1, 4096);
        } else if (strcmp(flag, "--eta") == 0) {
            char *end;
            o.eta = strtof(value, &end);
            if (end == value || *end != '\0') {
                fprintf(stderr, "error: --eta needs a number, got \"%s\"\n", value);
                exit(2);
            }
        } else if (strcmp(flag, "--class") == 0) {
            o.class_label = (int32_t)parse_int(flag, value, 0, INT32_MAX);
        } else if (strcmp(flag, "--guidance") == 0) {
            char *end;
            o.guidance = strtof(value, &end);
            if (end == value || *end != '\0') {
                fprintf(stderr, "error: --guidance needs a number, got \"%s\"\n", value);
                exit(2);
            }
        } else if (strcmp(flag, "--prompt") == 0) {
            o.prompt = value;
        } else if (strcmp(flag, "--negative-prompt") == 0) {
            o.negative_prompt = value;
        } else if (strcmp(flag, "--output") == 0) {
            o.output = value;
        } else {
            fprintf(stderr, "error: unknown option %s\n", flag);
            usage(argv[0]);
        }
    }
    return o;
}

/* ---- Errors and progress ----------------------------------------------------------------- */

/* Every libdiffusion call returns a status; on failure diffusion_last_error() says why. */
static void check(diffusion_status st) {
    if (st != DIFFUSION_OK) {
        fprintf(stderr, "error: %s: %s\n", diffusion_status_string(st), diffusion_last_error());
        exit(1);
    }
}

/* Called by diffusion_sampler_run after every step. Returning false would cancel the run. */
static bool show_progress(int32_t step, int32_t total_steps, float timestep, void *user_data) {
    (void)user_data;
    fprintf(stderr, "\rstep %d/%d (t = %d)   ", step, total_steps, (int)timestep);
    if (step == total_steps) fputc('\n', stderr);
    return true;
}

/* ---- A minimal PNG writer ---------------------------------------------------------------- */

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* A chunk: big-endian length, 4-letter type, data, CRC-32 of type and data. */
static bool write_chunk(FILE *f, const char *type, const unsigned char *data, size_t size) {
    unsigned char head[8], tail[4];
    put_u32(head, (uint32_t)size);
    memcpy(head + 4, type, 4);
    uLong crc = crc32(0L, (const Bytef *)type, 4);
    if (size > 0) crc = crc32(crc, data, (uInt)size);
    put_u32(tail, (uint32_t)crc);
    return fwrite(head, 1, 8, f) == 8 && (size == 0 || fwrite(data, 1, size, f) == size) &&
           fwrite(tail, 1, 4, f) == 4;
}

/* Writes 8-bit pixels (rows of width * channels bytes, channels 1 = gray or 3 = RGB) as a PNG. */
static bool write_png(const char *path, const unsigned char *pixels, uint32_t width, uint32_t height, int channels) {
    /* The image data is each row prefixed with its filter type (0: none), zlib-compressed. */
    size_t row = (size_t)width * (size_t)channels;
    size_t raw_size = (row + 1) * height;
    unsigned char *raw = malloc(raw_size);
    uLongf zsize = compressBound((uLong)raw_size);
    unsigned char *z = malloc(zsize);
    bool ok = raw && z;
    if (ok) {
        for (uint32_t y = 0; y < height; y++) {
            raw[y * (row + 1)] = 0;
            memcpy(raw + y * (row + 1) + 1, pixels + y * row, row);
        }
        ok = compress2(z, &zsize, raw, (uLong)raw_size, 9) == Z_OK;
    }
    FILE *f = ok ? fopen(path, "wb") : NULL;
    if (f) {
        static const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
        unsigned char ihdr[13];
        put_u32(ihdr, width);
        put_u32(ihdr + 4, height);
        ihdr[8] = 8;                       /* bit depth */
        ihdr[9] = channels == 3 ? 2 : 0;   /* color type: 2 = RGB, 0 = gray */
        ihdr[10] = ihdr[11] = ihdr[12] = 0; /* compression, filter method, no interlace */
        ok = fwrite(signature, 1, 8, f) == 8 && write_chunk(f, "IHDR", ihdr, 13) &&
             write_chunk(f, "IDAT", z, zsize) && write_chunk(f, "IEND", NULL, 0);
        ok = (fclose(f) == 0) && ok;
    } else {
        ok = false;
    }
    free(raw);
    free(z);
    return ok;
}

/* ---- Main -------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    options opt = parse_options(argc, argv);

    /* 1. Load the model (a diffusers folder). n_threads 0 = all cores. */
    diffusion_model_params mp;
    diffusion_model_params_init(&mp, sizeof mp);
    diffusion_model *model;
    check(diffusion_model_load(opt.model, &mp, &model));

    /* 2. Create a sampler: it draws the start noise from the seed. Fields left alone keep the
          defaults set by diffusion_sampler_params_init. */
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.scheduler = opt.scheduler;
    sp.steps = opt.steps;
    sp.seed = opt.seed;
    sp.batch = opt.count;
    sp.eta = opt.eta;
    sp.prompt = opt.prompt;                  /* NULL for models without text conditioning */
    sp.negative_prompt = opt.negative_prompt;
    diffusion_sampler *sampler;
    check(diffusion_sampler_create(model, &sp, &sampler));

    /* A class-conditional model: labels per image, and guidance if asked (the model must have an
       unconditional class for guidance; the library says so if it has none). */
    diffusion_model_info info = {.struct_size = sizeof info};
    check(diffusion_model_get_info(model, &info));
    if (info.num_class_embeds > 0) {
        int32_t classes = info.null_class_label >= 0 ? info.null_class_label : info.num_class_embeds;
        int32_t *labels = malloc(sizeof *labels * (size_t)opt.count);
        if (!labels) {
            fprintf(stderr, "error: out of memory\n");
            return 1;
        }
        for (int32_t i = 0; i < opt.count; i++) labels[i] = opt.class_label >= 0 ? opt.class_label : i % classes;
        check(diffusion_sampler_set_class_label(sampler, labels, opt.count));
        free(labels);
    }
    if (opt.guidance != 1) check(diffusion_sampler_set_guidance_scale(sampler, opt.guidance));

    /* 3. Run every step, with a progress line when stderr is a terminal. */
    check(diffusion_sampler_run(sampler, isatty(STDERR_FILENO) ? show_progress : NULL, NULL));

    /* 4. Read the result as 8-bit pixels: count x height x width x channels, interleaved (a
          latent model's VAE decodes here, so the image shape is not the sampler's latent shape). */
    int32_t shape[4]; /* batch, height, width, channels */
    check(diffusion_sampler_image_shape(sampler, shape));
    const size_t n = (size_t)shape[0], h = (size_t)shape[1], w = (size_t)shape[2], c = (size_t)shape[3];
    uint8_t *pixels = malloc(n * h * w * c);
    if (!pixels) {
        fprintf(stderr, "error: out of memory\n");
        return 1;
    }
    check(diffusion_sampler_get_images(sampler, pixels, n * h * w * c));

    diffusion_sampler_free(sampler);
    diffusion_model_free(model);

    /* 5. Tile the images into a grid of ceil(sqrt(n)) columns, 2-pixel black gaps between them.
          1 channel: gray; 3: RGB; anything else: its first channel as gray. */
    const size_t gap = 2;
    size_t cols = 1;
    while (cols * cols < n) cols++;
    const size_t rows = (n + cols - 1) / cols;
    const int out_c = c == 3 ? 3 : 1;
    const size_t grid_w = cols * w + (cols - 1) * gap, grid_h = rows * h + (rows - 1) * gap;
    uint8_t *grid = calloc(grid_w * grid_h * (size_t)out_c, 1);
    if (!grid) {
        fprintf(stderr, "error: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        const size_t x0 = (i % cols) * (w + gap), y0 = (i / cols) * (h + gap);
        for (size_t y = 0; y < h; y++)
            for (size_t x = 0; x < w; x++)
                for (int k = 0; k < out_c; k++)
                    grid[((y0 + y) * grid_w + x0 + x) * (size_t)out_c + (size_t)k] =
                        pixels[((i * h + y) * w + x) * c + (size_t)k];
    }

    errno = 0;
    if (!write_png(opt.output, grid, (uint32_t)grid_w, (uint32_t)grid_h, out_c)) {
        fprintf(stderr, "error: cannot write %s: %s\n", opt.output, errno ? strerror(errno) : "PNG encoding failed");
        return 1;
    }
    printf("wrote %s: %zu image%s of %zux%zu (%zu x %zu grid)\n", opt.output, n, n == 1 ? "" : "s", w, h, cols, rows);
    free(grid);
    free(pixels);
    return 0;
}
