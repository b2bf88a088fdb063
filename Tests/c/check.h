/* The C tests' tiny runner: CHECK, CHECK_OK, CHECK_ERROR (status + a word of the message). */
#ifndef DIFFUSION_TEST_CHECK_H
#define DIFFUSION_TEST_CHECK_H

#include "diffusion.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *g_fixtures;
static int g_checks, g_failures;

static void fail_at(const char *file, int line, const char *what) {
    g_failures++;
    fprintf(stderr, "%s:%d: FAILED: %s\n    last_error: \"%s\"\n", file, line, what, diffusion_last_error());
}

#define CHECK(cond)                                                   \
    do {                                                              \
        g_checks++;                                                   \
        if (!(cond)) fail_at(__FILE__, __LINE__, "CHECK(" #cond ")"); \
    } while (0)

/* The last error is only replaced by the next failure, so before a call expected to fail, plant
   a marker error: a message still holding the marker afterwards was not set by that call. */
#define MARKER "no-such-folder-marker"
static void plant_marker(void) {
    diffusion_model *m;
    (void)diffusion_model_load("/" MARKER, NULL, &m);
}

static bool check_status_at(const char *file, int line, const char *expr, diffusion_status got,
                            diffusion_status want, const char *needle) {
    char what[1024];
    g_checks++;
    if (got != want) {
        snprintf(what, sizeof what, "%s returned %s, expected %s", expr, diffusion_status_string(got),
                 diffusion_status_string(want));
        fail_at(file, line, what);
        return false;
    }
    if (want == DIFFUSION_OK) return true;
    const char *msg = diffusion_last_error();
    if (msg == NULL || msg[0] == '\0' || strstr(msg, MARKER) != NULL) {
        snprintf(what, sizeof what, "%s failed as expected but set no message of its own", expr);
        fail_at(file, line, what);
        return false;
    }
    if (needle != NULL && strstr(msg, needle) == NULL) {
        snprintf(what, sizeof what, "%s: the message does not mention \"%s\"", expr, needle);
        fail_at(file, line, what);
        return false;
    }
    return true;
}

/* CHECK_OK(call); CHECK_ERROR(call, DIFFUSION_ERROR_X, "word the message must contain" or NULL) */
#define CHECK_OK(expr) check_status_at(__FILE__, __LINE__, #expr, (expr), DIFFUSION_OK, NULL)
#define CHECK_ERROR(expr, want, needle)                                        \
    do {                                                                       \
        plant_marker();                                                        \
        check_status_at(__FILE__, __LINE__, #expr, (expr), (want), (needle));  \
    } while (0)

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One named test of a suite. */
typedef struct {
    const char *name;
    void (*fn)(void);
} test_case;

/* Runs the tests in order, a line each, then the summary; the process's exit status. */
static int run_tests(const char *suite, const test_case *tests, size_t count) {
    double start = now_seconds();
    for (size_t i = 0; i < count; i++) {
        int before = g_failures;
        double t0 = now_seconds();
        tests[i].fn();
        printf("%-26s %s (%.2f s)\n", tests[i].name, g_failures == before ? "ok" : "FAILED", now_seconds() - t0);
        fflush(stdout);
    }
    printf("%s: %d checks, %d failed (%.1f s)\n", suite, g_checks, g_failures, now_seconds() - start);
    return g_failures ? 1 : 0;
}

#endif
