#define _GNU_SOURCE
#include "cdiffusion_shim.h"

#include <sched.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

// Fixed per-thread storage: nothing to free when a thread exits. Longer messages are cut.
static _Thread_local char last_error[4096];

void cdiffusion_set_last_error(const char *message) {
    if (!message) message = "";
    size_t n = strlen(message);
    if (n >= sizeof last_error) n = sizeof last_error - 1;
    memcpy(last_error, message, n);
    last_error[n] = '\0';
}

const char *cdiffusion_last_error(void) { return last_error; }

// The features the compiler was allowed to use (-march=$(MARCH) reaches this file and the Swift
// code alike), checked against the running CPU once: a library built on an AVX-512 machine and
// run on one without refuses every call with a message instead of dying on an illegal instruction.
#if defined(__x86_64__) || defined(__i386__)
static const char *cpu_mismatch;
static char cpu_message[256];

static void check_cpu(void) {
    const char *missing = NULL;
    __builtin_cpu_init();
#define REQUIRE(name) if (!missing && !__builtin_cpu_supports(name)) missing = name;
#ifdef __AVX__
    REQUIRE("avx")
#endif
#ifdef __AVX2__
    REQUIRE("avx2")
#endif
#ifdef __FMA__
    REQUIRE("fma")
#endif
#ifdef __F16C__
    REQUIRE("f16c")
#endif
#ifdef __BMI2__
    REQUIRE("bmi2")
#endif
#ifdef __AVX512F__
    REQUIRE("avx512f")
#endif
#ifdef __AVX512BW__
    REQUIRE("avx512bw")
#endif
#ifdef __AVX512VL__
    REQUIRE("avx512vl")
#endif
#ifdef __AVX512BF16__
    REQUIRE("avx512bf16")
#endif
#undef REQUIRE
    if (missing) {
        snprintf(cpu_message, sizeof cpu_message,
                 "this libdiffusion was built for a CPU with %s, which this CPU lacks: rebuild it here, or with "
                 "make MARCH=x86-64-v3 for any AVX2 CPU", missing);
        cpu_mismatch = cpu_message;
    }
}
#endif

const char *cdiffusion_cpu_mismatch(void) {
#if defined(__x86_64__) || defined(__i386__)
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, check_cpu);
    return cpu_mismatch;
#else
    return NULL;
#endif
}

int cdiffusion_affinity_cpus(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
    return CPU_COUNT(&set);
}
