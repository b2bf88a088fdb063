// The bf16 mode's GEMM micro-kernel and conversions (internal; see cdiffusion_bf16.h).
//
// Operands are bf16 pairs: a uint32 holds elements k (low half) and k + 1 (high half) of one
// row or column, the layout `vdpbf16ps` reads. The instruction computes, per f32 lane,
//     acc = fma(odd_a, odd_b, acc); acc = fma(even_a, even_b, acc)
// (products of two bf16 are exact in f32, so each step is one rounding) with denormal inputs
// read as zero and denormal results flushed to zero. Measured on Zen 4 over 64 M lanes, tiny
// values included: the emulation below (the same two FMAs under MXCSR FTZ | DAZ) gives the same
// bits every time. So a CPU without AVX512-BF16 runs the emulation and produces exactly the
// bytes an AVX512-BF16 CPU does.
#include "cdiffusion_bf16.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

typedef void (*kernel_fn)(long, const uint32_t *, long, long, const uint32_t *, const uint32_t *, float *, float *, long, int);

// ---- Emulation (any CPU) ----------------------------------------------------------------

static inline float lo_half(uint32_t v) { union { uint32_t u; float f; } x = { v << 16 }; return x.f; }
static inline float hi_half(uint32_t v) { union { uint32_t u; float f; } x = { v & 0xffff0000u }; return x.f; }

#if HAVE_X86
__attribute__((target("avx2,fma")))
#endif
// A's pair p of row r at a[r * ars + p * aps] (packed panels: ars 1, aps 6; rows: ars lda, aps 1).
static void emulated_tile(long kc2, const uint32_t *a, long ars, long aps, const uint32_t *b0, const uint32_t *b1,
                          float *c0, float *c1, long ldc, int overwrite) {
    float acc[6][32];
    memset(acc, 0, sizeof acc);
    const int halves = b1 ? 2 : 1;
#if HAVE_X86
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);  // FTZ | DAZ, as the instruction
#endif
    for (long p = 0; p < kc2; p++) {
        for (int r = 0; r < 6; r++) {
            const float ae = lo_half(a[r * ars + p * aps]), ao = hi_half(a[r * ars + p * aps]);
            for (int h = 0; h < halves; h++) {
                const uint32_t *b = (h ? b1 : b0) + 16 * p;
                float *s = acc[r] + 16 * h;
                for (int j = 0; j < 16; j++) {
                    s[j] = fmaf(ao, hi_half(b[j]), s[j]);
                    s[j] = fmaf(ae, lo_half(b[j]), s[j]);
                }
            }
        }
    }
#if HAVE_X86
    _mm_setcsr(csr);
#endif
    for (int r = 0; r < 6; r++) {
        for (int h = 0; h < halves; h++) {
            float *c = (h ? c1 : c0) + r * ldc;
            const float *s = acc[r] + 16 * h;
            for (int j = 0; j < 16; j++) c[j] = overwrite ? s[j] : c[j] + s[j];
        }
    }
}

// ---- AVX512-BF16 --------------------------------------------------------------------------

#if HAVE_X86
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

BF16_TARGET static inline __m512 dp(__m512 acc, __m512i a, __m512i b) {
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

BF16_TARGET static inline void finish(float *c, __m512 v, int overwrite) {
    _mm512_storeu_ps(c, overwrite ? v : _mm512_add_ps(_mm512_loadu_ps(c), v));
}

// 6 × 32: twelve accumulators (the instruction's latency × throughput on Zen 4 wants ≥ 6), two
// B vectors and six broadcasts per pair of k.
BF16_TARGET static void native_tile(long kc2, const uint32_t *a, long ars, long aps, const uint32_t *b0,
                                    const uint32_t *b1, float *c0, float *c1, long ldc, int overwrite) {
    const uint32_t *a0 = a, *a1 = a + ars, *a2 = a + 2 * ars, *a3 = a + 3 * ars, *a4 = a + 4 * ars, *a5 = a + 5 * ars;
    if (!b1) {
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0;
        for (long p = 0; p < kc2; p++) {
            const __m512i b = _mm512_loadu_si512(b0 + 16 * p);
            const long o = p * aps;
            s0 = dp(s0, _mm512_set1_epi32((int)a0[o]), b);
            s1 = dp(s1, _mm512_set1_epi32((int)a1[o]), b);
            s2 = dp(s2, _mm512_set1_epi32((int)a2[o]), b);
            s3 = dp(s3, _mm512_set1_epi32((int)a3[o]), b);
            s4 = dp(s4, _mm512_set1_epi32((int)a4[o]), b);
            s5 = dp(s5, _mm512_set1_epi32((int)a5[o]), b);
        }
        finish(c0, s0, overwrite); finish(c0 + ldc, s1, overwrite); finish(c0 + 2 * ldc, s2, overwrite);
        finish(c0 + 3 * ldc, s3, overwrite); finish(c0 + 4 * ldc, s4, overwrite); finish(c0 + 5 * ldc, s5, overwrite);
        return;
    }
    __m512 s00 = _mm512_setzero_ps(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00;
    __m512 s30 = s00, s31 = s00, s40 = s00, s41 = s00, s50 = s00, s51 = s00;
    for (long p = 0; p < kc2; p++) {
        const __m512i x0 = _mm512_loadu_si512(b0 + 16 * p), x1 = _mm512_loadu_si512(b1 + 16 * p);
        const long o = p * aps;
        __m512i q = _mm512_set1_epi32((int)a0[o]); s00 = dp(s00, q, x0); s01 = dp(s01, q, x1);
        q = _mm512_set1_epi32((int)a1[o]); s10 = dp(s10, q, x0); s11 = dp(s11, q, x1);
        q = _mm512_set1_epi32((int)a2[o]); s20 = dp(s20, q, x0); s21 = dp(s21, q, x1);
        q = _mm512_set1_epi32((int)a3[o]); s30 = dp(s30, q, x0); s31 = dp(s31, q, x1);
        q = _mm512_set1_epi32((int)a4[o]); s40 = dp(s40, q, x0); s41 = dp(s41, q, x1);
        q = _mm512_set1_epi32((int)a5[o]); s50 = dp(s50, q, x0); s51 = dp(s51, q, x1);
    }
    finish(c0, s00, overwrite); finish(c1, s01, overwrite);
    finish(c0 + ldc, s10, overwrite); finish(c1 + ldc, s11, overwrite);
    finish(c0 + 2 * ldc, s20, overwrite); finish(c1 + 2 * ldc, s21, overwrite);
    finish(c0 + 3 * ldc, s30, overwrite); finish(c1 + 3 * ldc, s31, overwrite);
    finish(c0 + 4 * ldc, s40, overwrite); finish(c1 + 4 * ldc, s41, overwrite);
    finish(c0 + 5 * ldc, s50, overwrite); finish(c1 + 5 * ldc, s51, overwrite);
}
#endif

// ---- Dispatch -----------------------------------------------------------------------------

static kernel_fn chosen = emulated_tile;
static int chosen_native;

static void choose(void) {
#if HAVE_X86
    __builtin_cpu_init();
    const char *off = getenv("DIFFUSION_NO_BF16_INSTRUCTIONS");
    if (__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") && !(off && *off && strcmp(off, "0"))) {
        chosen = native_tile;
        chosen_native = 1;
    }
#endif
}

static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

int cdiffusion_bf16_native(void) {
    pthread_once(&chosen_once, choose);
    return chosen_native;
}

int cdiffusion_bf16_cpu_has_instructions(void) {
#if HAVE_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
#else
    return 0;
#endif
}

void cdiffusion_bf16_tile(long kc2, const uint32_t *a, const uint32_t *b0, const uint32_t *b1, float *c0, float *c1,
                          long ldc, int overwrite) {
    pthread_once(&chosen_once, choose);
    chosen(kc2, a, 1, 6, b0, b1, c0, c1, ldc, overwrite);
}

void cdiffusion_bf16_tile_rows(long kc2, const uint32_t *a, long lda, const uint32_t *b0, const uint32_t *b1, float *c0,
                               float *c1, long ldc, int overwrite) {
    pthread_once(&chosen_once, choose);
    chosen(kc2, a, lda, 1, b0, b1, c0, c1, ldc, overwrite);
}

void cdiffusion_bf16_tile_emulated(long kc2, const uint32_t *a, long lda, const uint32_t *b0, const uint32_t *b1,
                                   float *c0, float *c1, long ldc, int overwrite) {
    if (lda) emulated_tile(kc2, a, lda, 1, b0, b1, c0, c1, ldc, overwrite);
    else emulated_tile(kc2, a, 1, 6, b0, b1, c0, c1, ldc, overwrite);
}

int cdiffusion_bf16_tile_native(long kc2, const uint32_t *a, long lda, const uint32_t *b0, const uint32_t *b1,
                                float *c0, float *c1, long ldc, int overwrite) {
#if HAVE_X86
    if (!cdiffusion_bf16_cpu_has_instructions()) return 0;
    if (lda) native_tile(kc2, a, lda, 1, b0, b1, c0, c1, ldc, overwrite);
    else native_tile(kc2, a, 1, 6, b0, b1, c0, c1, ldc, overwrite);
    return 1;
#else
    (void)kc2; (void)a; (void)lda; (void)b0; (void)b1; (void)c0; (void)c1; (void)ldc; (void)overwrite;
    return 0;
#endif
}


// ---- Conversion ---------------------------------------------------------------------------

// Round to nearest even, denormals to signed zero, NaN kept quiet (the rounding of
// vcvtneps2bf16, done in integers so every CPU gives the same bits). Branch-free: it vectorises.
static inline uint32_t to_bf16(uint32_t x) {
    const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    const uint32_t quiet = (x >> 16) | 0x40u, zero = (x >> 16) & 0x8000u;
    const uint32_t nan = (x & 0x7fffffffu) > 0x7f800000u, denormal = (x & 0x7f800000u) == 0;
    return denormal ? zero : nan ? quiet : rounded;
}

uint16_t cdiffusion_bf16_round(float value) {
    uint32_t x;
    memcpy(&x, &value, 4);
    return (uint16_t)to_bf16(x);
}

// 16 lanes at a time through local copies, so the loop vectorises even in place (dst == src:
// row p of dst overwrites rows the loop has already read).
static inline void pair_row(const uint32_t *even, const uint32_t *next, long n, uint32_t *dst) {
    uint32_t e[16] = {0}, o[16] = {0}, out[16];
    if (n == 16) {
        memcpy(e, even, 64);
        if (next) memcpy(o, next, 64);
    } else {
        for (long j = 0; j < n; j++) e[j] = even[j];
        if (next) for (long j = 0; j < n; j++) o[j] = next[j];
    }
    for (int j = 0; j < 16; j++) out[j] = to_bf16(e[j]) | to_bf16(o[j]) << 16;
    if (n == 16) memcpy(dst, out, 64);
    else for (long j = 0; j < n; j++) dst[j] = out[j];
}

void cdiffusion_bf16_pairs(const float *src, long kc, long panel, uint32_t *dst) {
    const uint32_t *s = (const uint32_t *)(const void *)src;
    for (long p = 0; p < (kc + 1) / 2; p++) {
        for (long j0 = 0; j0 < panel; j0 += 16) {
            const long n = panel - j0 < 16 ? panel - j0 : 16;
            pair_row(s + 2 * p * panel + j0, 2 * p + 1 < kc ? s + (2 * p + 1) * panel + j0 : NULL, n,
                     dst + p * panel + j0);
        }
    }
}

void cdiffusion_bf16_rows(const float *src, long count, uint32_t *dst) {
    const uint32_t *s = (const uint32_t *)(const void *)src;
    long p = 0;
    for (; 2 * p + 32 <= count; p += 16) {
        uint32_t out[16];
        for (int j = 0; j < 16; j++) out[j] = to_bf16(s[2 * p + 2 * j]) | to_bf16(s[2 * p + 2 * j + 1]) << 16;
        memcpy(dst + p, out, 64);
    }
    for (; 2 * p < count; p++) {
        dst[p] = to_bf16(s[2 * p]) | (2 * p + 1 < count ? to_bf16(s[2 * p + 1]) << 16 : 0);
    }
}
