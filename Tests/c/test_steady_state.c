// Steady-state sampling allocates no tensor-sized memory: after two warm-up steps, further steps
// of a sampler take every activation, scratch slab and Winograd buffer of the network from the
// sampler's arena (planned from the first evaluations), and the few tensors that outlive a step
// (the network's output, the next sample, the scheduler's noise) from the library's pool.
// This program interposes malloc, aligned_alloc and posix_memalign (the library and its static
// Swift runtime resolve them here first) and counts the calls of 64 KiB or more made while the
// steps run. The batch makes every activation of the fixture model larger than that, so an
// activation allocated per step would be counted. Small allocations (Swift arrays of a few
// floats: timesteps, embeddings) are counted and printed, not asserted.
#include <diffusion.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern void *__libc_malloc(size_t);
extern void *__libc_memalign(size_t, size_t);

static atomic_int counting;
static atomic_long big, small;

static void count(size_t n) {
    if (!atomic_load(&counting)) return;
    if (n >= 64 * 1024) atomic_fetch_add(&big, 1); else atomic_fetch_add(&small, 1);
}

void *malloc(size_t n) { count(n); return __libc_malloc(n); }
void *aligned_alloc(size_t a, size_t n) { count(n); return __libc_memalign(a, n); }
int posix_memalign(void **p, size_t a, size_t n) {
    count(n);
    void *r = __libc_memalign(a, n);
    if (!r) return ENOMEM;
    *p = r;
    return 0;
}

static int fail(const char *what, diffusion_status st) {
    printf("test_steady_state: FAIL: %s: status %d: %s\n", what, (int)st, diffusion_last_error());
    return 1;
}

int main(int argc, char **argv) {
    char path[4096];
    snprintf(path, sizeof path, "%s/unet/cifar_small", argc > 1 ? argv[1] : "Tests/Fixtures");
    diffusion_model_params mp;
    diffusion_model_params_init(&mp, sizeof mp);
    mp.n_threads = 2;
    diffusion_model *m = NULL;
    diffusion_status st = diffusion_model_load(path, &mp, &m);
    if (st != DIFFUSION_OK) return fail(path, st);
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.steps = 8;
    sp.batch = 8;
    sp.seed = 1;
    diffusion_sampler *s = NULL;
    if ((st = diffusion_sampler_create(m, &sp, &s)) != DIFFUSION_OK) return fail("sampler_create", st);
    int32_t remaining = 0;
    for (int i = 0; i < 2; i++) {
        if ((st = diffusion_sampler_step(s, &remaining)) != DIFFUSION_OK) return fail("warm-up step", st);
    }
    atomic_store(&counting, 1);
    for (int i = 0; i < 3; i++) {
        if ((st = diffusion_sampler_step(s, &remaining)) != DIFFUSION_OK) return fail("step", st);
    }
    atomic_store(&counting, 0);
    diffusion_sampler_free(s);
    diffusion_model_free(m);
    long b = atomic_load(&big), sm = atomic_load(&small);
    if (b != 0) {
        printf("test_steady_state: FAIL: %ld allocations of 64 KiB or more in 3 steady-state steps (%ld smaller)\n", b, sm);
        return 1;
    }
    printf("test_steady_state: ok (3 steady-state steps: no allocation of 64 KiB or more; %ld smaller ones)\n", sm);
    return 0;
}
