// Internal C glue: not part of the public API (the version script keeps these symbols local).
#ifndef CDIFFUSION_SHIM_H
#define CDIFFUSION_SHIM_H

#include <stddef.h>

// The thread's last error message (dlerror-style storage; the string is copied).
void cdiffusion_set_last_error(const char *message);
const char *cdiffusion_last_error(void);

// NULL when this CPU has every instruction-set feature the library was compiled for (MARCH),
// else a message naming the first one missing (static storage).
const char *cdiffusion_cpu_mismatch(void);

// The CPUs in this process's affinity mask (taskset, cpusets), or 0 when it cannot be read.
int cdiffusion_affinity_cpus(void);

// A spin-wait hint (x86 `pause`), for the worker pool's short waits.
static inline void cdiffusion_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

#endif
