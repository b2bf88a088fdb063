// diffusion_sampler_cancel may be called from any thread at any time (include/diffusion.h),
// also while another thread frees the sampler: 300 rounds of a thread cancelling in a loop while
// the main thread frees the sampler under it. Before the handle registry took its reference
// under its lock this was a use-after-free; an AddressSanitizer build (issue 10's `make
// sanitize`) turns any regression into a report, a plain build into a crash at best.
#include <diffusion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static diffusion_sampler *_Atomic target;
static atomic_int stop;

static void *canceller(void *arg) {
    (void)arg;
    while (!atomic_load(&stop)) diffusion_sampler_cancel(atomic_load(&target));
    return NULL;
}

int main(int argc, char **argv) {
    char path[4096];
    snprintf(path, sizeof path, "%s/unet/cifar_small", argc > 1 ? argv[1] : "Tests/Fixtures");
    diffusion_model_params mp;
    diffusion_model_params_init(&mp, sizeof mp);
    mp.n_threads = 1;
    diffusion_model *m = NULL;
    if (diffusion_model_load(path, &mp, &m) != DIFFUSION_OK) {
        printf("test_threads: FAIL: cannot load %s: %s\n", path, diffusion_last_error());
        return 1;
    }
    diffusion_sampler_params sp;
    diffusion_sampler_params_init(&sp, sizeof sp);
    sp.steps = 2;
    for (int round = 0; round < 300; round++) {
        diffusion_sampler *s = NULL;
        if (diffusion_sampler_create(m, &sp, &s) != DIFFUSION_OK) {
            printf("test_threads: FAIL: sampler_create: %s\n", diffusion_last_error());
            return 1;
        }
        atomic_store(&target, s);
        atomic_store(&stop, 0);
        pthread_t t;
        if (pthread_create(&t, NULL, canceller, NULL) != 0) { printf("test_threads: FAIL: pthread_create\n"); return 1; }
        for (volatile int spin = 0; spin < round * 50; spin++) {}
        diffusion_sampler_free(s);  // the canceller keeps cancelling the freed handle: ignored
        for (volatile int spin = 0; spin < 2000; spin++) {}
        atomic_store(&stop, 1);
        pthread_join(t, NULL);
    }
    diffusion_model_free(m);
    printf("test_threads: ok (300 rounds of cancel racing free)\n");
    return 0;
}
