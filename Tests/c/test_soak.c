// Soak (issue 10): 1,000 sampler create/run/free cycles on one model, then 8 threads x 50
// samplers on one shared model. Every run must give the same bytes as the same job run alone,
// and the process's resident memory must stay flat after a warm-up: it is sampled every 100
// cycles (the curve is printed) and may grow by at most SOAK_RSS_GROWTH_MB from cycle 100 to
// the end. 16 MB is far below what a leak of one activation per cycle would add (a batch-2
// 32x32 cifar_small run allocates about 1 MB of activations per step: 1,000 cycles would leak
// gigabytes) and above malloc's own arena noise.
#include <diffusion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SOAK_RSS_GROWTH_MB 16
enum { CYCLES = 1000, THREADS = 8, PER_THREAD = 50 };

static int failures;
#define FAIL(...) do { printf("test_soak: FAIL: " __VA_ARGS__); printf("\n"); failures++; } while (0)

static double rss_mb(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &pages, &resident) != 2) { if (f) fclose(f); return -1; }
    fclose(f);
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1 << 20);
}

static const diffusion_model *g_model;
static size_t g_count; /* latents per run */

/* One job: a DPM++ run of 3 steps, batch 2, with this seed; the final latents into out. */
static diffusion_status run_job(uint64_t seed, float *out) {
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.scheduler = "dpmpp_2m";
    sp.steps = 3;
    sp.batch = 2;
    sp.seed = seed;
    diffusion_sampler *s = NULL;
    diffusion_status st = diffusion_sampler_create(g_model, &sp, &s);
    if (st == DIFFUSION_OK) st = diffusion_sampler_run(s, NULL, NULL);
    if (st == DIFFUSION_OK) st = diffusion_sampler_get_latents(s, out, g_count);
    diffusion_sampler_free(s);
    return st;
}

typedef struct {
    int thread;
    float *results; /* PER_THREAD x g_count */
    diffusion_status status;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    for (int i = 0; i < PER_THREAD && w->status == DIFFUSION_OK; i++)
        w->status = run_job(1000 + (uint64_t)(w->thread * PER_THREAD + i), w->results + (size_t)i * g_count);
    return NULL;
}

int main(int argc, char **argv) {
    char path[4096];
    snprintf(path, sizeof path, "%s/unet/cifar_small", argc > 1 ? argv[1] : "Tests/Fixtures");
    diffusion_model_params mp;
    diffusion_model_params_init(&mp, sizeof mp);
    mp.n_threads = 2;
    diffusion_model *m = NULL;
    if (diffusion_model_load(path, &mp, &m) != DIFFUSION_OK) {
        printf("test_soak: FAIL: load %s: %s\n", path, diffusion_last_error());
        return 1;
    }
    g_model = m;
    diffusion_model_info info;
    info.struct_size = sizeof info;
    diffusion_model_get_info(m, &info);
    g_count = 2 * (size_t)info.in_channels * (size_t)info.sample_size * (size_t)info.sample_width;
    float *first = malloc(g_count * sizeof(float)), *x = malloc(g_count * sizeof(float));

    /* 1,000 cycles of the same job: the same bytes every time, memory flat after cycle 100. */
    double at100 = 0, peak = 0;
    printf("test_soak: RSS (MB) by cycle:");
    for (int c = 0; c < CYCLES; c++) {
        diffusion_status st = run_job(7, c == 0 ? first : x);
        if (st != DIFFUSION_OK) { FAIL("cycle %d: %s", c, diffusion_last_error()); break; }
        if (c > 0 && memcmp(first, x, g_count * sizeof(float)) != 0) { FAIL("cycle %d differs from cycle 0", c); break; }
        if ((c + 1) % 100 == 0) {
            double r = rss_mb();
            printf(" %d:%.1f", c + 1, r);
            if (c + 1 == 100) at100 = r;
            if (r > peak) peak = r;
        }
    }
    printf("\n");
    if (peak - at100 > SOAK_RSS_GROWTH_MB)
        FAIL("RSS grew by %.1f MB from cycle 100 to the end (bound %d MB)", peak - at100, SOAK_RSS_GROWTH_MB);

    /* 8 threads x 50 samplers on the shared model, each result equal to the job run alone. */
    worker w[THREADS];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.thread = i, .results = malloc((size_t)PER_THREAD * g_count * sizeof(float)), .status = DIFFUSION_OK};
        if (pthread_create(&t[i], NULL, work, &w[i]) != 0) { FAIL("pthread_create"); return 1; }
    }
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    int compared = 0;
    for (int i = 0; i < THREADS; i++) {
        if (w[i].status != DIFFUSION_OK) { FAIL("thread %d: status %d", i, (int)w[i].status); continue; }
        for (int j = 0; j < PER_THREAD; j++) {
            if (run_job(1000 + (uint64_t)(i * PER_THREAD + j), x) != DIFFUSION_OK) { FAIL("sequential job: %s", diffusion_last_error()); break; }
            if (memcmp(x, w[i].results + (size_t)j * g_count, g_count * sizeof(float)) != 0) FAIL("thread %d job %d differs from the job run alone", i, j);
            compared++;
        }
        free(w[i].results);
    }
    double end = rss_mb();
    free(first);
    free(x);
    diffusion_model_free(m);
    if (failures) return 1;
    printf("test_soak: ok (%d cycles bitwise equal, RSS %.1f MB at cycle 100, peak %.1f after; %d threaded runs equal "
           "to sequential ones; RSS %.1f MB at the end)\n", CYCLES, at100, peak, compared, end);
    return 0;
}
