// Internal: the bf16 mode's micro-kernel and conversions (bf16.c). Not part of the public API.
#ifndef CDIFFUSION_BF16_H
#define CDIFFUSION_BF16_H

#include <stdint.h>

// C tile += (or = with `overwrite`) A panel · B panel(s), all k in kc2 bf16 pairs:
//   a:  6 rows, for each pair p the 6 rows' pairs at a[6p + r];
//   b0: 16 columns, pair p of column j at b0[16p + j]; b1: 16 more columns, or NULL;
//   c0 / c1: the 6 × 16 blocks of C for b0 / b1 (row stride ldc floats).
// Uses vdpbf16ps where the CPU has AVX512-BF16 (unless DIFFUSION_NO_BF16_INSTRUCTIONS is set to
// anything but 0), else a bit-exact emulation: the same bits on every CPU.
void cdiffusion_bf16_tile(long kc2, const uint32_t *a, const uint32_t *b0, const uint32_t *b1, float *c0, float *c1,
                          long ldc, int overwrite);
// 1 when cdiffusion_bf16_tile runs the instruction, 0 when it emulates it.
int cdiffusion_bf16_native(void);
// 1 when the CPU has AVX512-BF16 (and AVX512-BW).
int cdiffusion_bf16_cpu_has_instructions(void);
// The same with A as 6 rows of pairs in place: pair p of row r at a[r * lda + p].
void cdiffusion_bf16_tile_rows(long kc2, const uint32_t *a, long lda, const uint32_t *b0, const uint32_t *b1, float *c0,
                               float *c1, long ldc, int overwrite);
// Each implementation alone, for tests (lda 0: A packed as for cdiffusion_bf16_tile, else rows as
// for _rows): the native one returns 0 (doing nothing) on a CPU without it.
void cdiffusion_bf16_tile_emulated(long kc2, const uint32_t *a, long lda, const uint32_t *b0, const uint32_t *b1,
                                   float *c0, float *c1, long ldc, int overwrite);
int cdiffusion_bf16_tile_native(long kc2, const uint32_t *a, long lda, const uint32_t *b0, const uint32_t *b1,
                                float *c0, float *c1, long ldc, int overwrite);

// f32 -> bf16, round to nearest even, denormals to signed zero.
uint16_t cdiffusion_bf16_round(float value);
// A packed f32 slab panel (kc rows of `panel` floats, k-major) as bf16 pairs: row p of dst holds
// rows 2p (low halves) and 2p + 1 (high halves; 0 past an odd kc). dst may be src (in place).
void cdiffusion_bf16_pairs(const float *src, long kc, long panel, uint32_t *dst);
// A row of `count` floats as ⌈count / 2⌉ pairs (the last high half 0 for an odd count).
void cdiffusion_bf16_rows(const float *src, long count, uint32_t *dst);

#endif
