/* own_denoiser.c — libdiffusion's schedulers around a network of your own.
 *
 * The "network" here is exact: for a data set that holds a single image x0*, the best noise
 * prediction for the model input x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps is
 *     eps(x_t, t) = (x_t - sqrt(abar_t) x0*) / sqrt(1 - abar_t),
 * so every scheduler must bring pure noise back to x0*. The callback gets what a diffusers
 * pipeline gives its network (the scheduler's scaled input and the timestep), so it needs abar_t
 * of the training schedule: 1000 linear betas from 1e-4 to 0.02, passed to the scheduler too
 * (fractional timesteps, from Euler-type schedulers, interpolate between neighbours).
 *
 *     cc -std=c11 own_denoiser.c $(pkg-config --cflags --libs diffusion) -lm -o own_denoiser
 *     ./own_denoiser [scheduler] [steps]        (default: dpmpp_2m 20)
 *
 * Prints the largest distance of the result from x0*; exits 1 if any image is off by > 0.05.
 */
#include <diffusion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { T = 1000, C = 1, H = 8, W = 8, N = 4 };

typedef struct {
    double abar[T];
    float target[C * H * W];
    int calls;
} network;

static double abar_at(const network *net, float t) {
    if (t <= 0) return net->abar[0];
    if (t >= T - 1) return net->abar[T - 1];
    int i = (int)t;
    double f = t - i;
    return net->abar[i] * (1 - f) + net->abar[i + 1] * f;
}

/* diffusion_denoise_fn: fills out (epsilon prediction) for the batch x at timestep t. */
static bool denoise(const float *x, const int32_t shape[4], float t, float *out, int32_t out_channels,
                    void *user_data) {
    network *net = user_data;
    net->calls++;
    if (out_channels != shape[1]) return false; /* this network has no variance head */
    double a = abar_at(net, t);
    size_t per = (size_t)shape[1] * shape[2] * shape[3];
    for (int n = 0; n < shape[0]; n++)
        for (size_t i = 0; i < per; i++)
            out[n * per + i] = (float)((x[n * per + i] - sqrt(a) * net->target[i]) / sqrt(1 - a));
    return true;
}

int main(int argc, char **argv) {
    const char *scheduler = argc > 1 ? argv[1] : "dpmpp_2m";
    int steps = argc > 2 ? atoi(argv[2]) : 20;

    static network net;
    double prod = 1;
    for (int i = 0; i < T; i++) {
        prod *= 1 - (1e-4 + (0.02 - 1e-4) * i / (T - 1));
        net.abar[i] = prod;
    }
    for (int y = 0; y < H; y++) /* a ring: the single image of the data set, in [-1, 1] */
        for (int x = 0; x < W; x++) {
            double r = hypot(y - 3.5, x - 3.5);
            net.target[y * W + x] = fabs(r - 2.5) < 1 ? 1.0f : -1.0f;
        }

    diffusion_sampler_params p;
    diffusion_sampler_params_init(&p, sizeof p);
    p.scheduler = scheduler;
    p.steps = steps;
    p.seed = 7;
    p.batch = N;
    p.channels = C;
    p.height = H;
    p.width = W;
    /* The network was "trained" with this schedule; scheduler classes differ in their defaults
       (heun and lcm default to 0.00085..0.012), so say it. */
    p.scheduler_config_json = "{\"beta_schedule\": \"linear\", \"beta_start\": 0.0001, \"beta_end\": 0.02}";
    diffusion_sampler *s = NULL;
    diffusion_status st = diffusion_sampler_create_with_denoiser(denoise, &net, &p, &s);
    if (st == DIFFUSION_OK) st = diffusion_sampler_run(s, NULL, NULL);
    static float x[N * C * H * W];
    if (st == DIFFUSION_OK) st = diffusion_sampler_get_latents(s, x, N * C * H * W);
    if (st != DIFFUSION_OK) {
        fprintf(stderr, "own_denoiser: %s: %s\n", diffusion_status_string(st), diffusion_last_error());
        diffusion_sampler_free(s);
        return 1;
    }
    double worst = 0;
    for (int n = 0; n < N; n++)
        for (int i = 0; i < C * H * W; i++) worst = fmax(worst, fabs(x[n * C * H * W + i] - net.target[i]));
    printf("%s, %d steps: %d network calls, %d images, largest distance from the data image %.2g\n", scheduler,
           steps, net.calls, N, worst);
    for (int y = 0; y < H; y++) { /* the first image, as text */
        for (int xx = 0; xx < W; xx++) putchar(x[y * W + xx] > 0 ? '#' : '.');
        putchar('\n');
    }
    diffusion_sampler_free(s);
    return worst > 0.05;
}
