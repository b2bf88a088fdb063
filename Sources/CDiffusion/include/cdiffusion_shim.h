// Internal C glue: not part of the public API (the version script keeps these symbols local).
#ifndef CDIFFUSION_SHIM_H
#define CDIFFUSION_SHIM_H

#include <stddef.h>

// The thread's last error message (dlerror-style storage; the string is copied).
void cdiffusion_set_last_error(const char *message);
const char *cdiffusion_last_error(void);

// The few OpenBLAS entry points used, declared here so the build does not depend on where a
// distribution puts cblas.h.
enum { CDIFFUSION_ROW_MAJOR = 101, CDIFFUSION_NO_TRANS = 111, CDIFFUSION_TRANS = 112 };
void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
void openblas_set_num_threads(int num_threads);

#endif
