// The start-up CPU check (Sources/CDiffusion/shim.c): built here twice, for this machine and
// for AVX-512 (-DWANT_AVX512 with -mavx512f -mavx512bw -mavx512vl). Each build must say "no
// mismatch" exactly when /proc/cpuinfo lists every feature it was compiled for, and otherwise
// name the first one missing, so the test passes on AVX-512 and AVX2-only machines alike and
// fails if the check never fires or fires wrongly.
#include <stdio.h>
#include <string.h>

const char *cdiffusion_cpu_mismatch(void);

#ifdef WANT_AVX512
static int cpu_has(const char *flag) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return -1;
    char line[8192];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0) continue;
        char *p = strchr(line, ':');
        for (char *tok = strtok(p ? p + 1 : line, " \n"); tok; tok = strtok(NULL, " \n")) {
            if (strcmp(tok, flag) == 0) found = 1;
        }
        break;
    }
    fclose(f);
    return found;
}
#endif

int main(void) {
    const char *mismatch = cdiffusion_cpu_mismatch();
#ifdef WANT_AVX512
    const char *needed[] = {"avx512f", "avx512bw", "avx512vl"};
    const char *missing = NULL;
    for (int i = 0; i < 3 && !missing; i++) {
        int has = cpu_has(needed[i]);
        if (has < 0) { printf("test_cpu_check: no /proc/cpuinfo\n"); return 1; }
        if (!has) missing = needed[i];
    }
    if (missing) {
        if (!mismatch || !strstr(mismatch, missing)) {
            printf("test_cpu_check: FAIL: CPU lacks %s but the check said: %s\n", missing, mismatch ? mismatch : "(no mismatch)");
            return 1;
        }
        printf("test_cpu_check: ok (AVX-512 build refused here: %s)\n", mismatch);
        return 0;
    }
#endif
    if (mismatch) {
        printf("test_cpu_check: FAIL: a build this CPU can run was refused: %s\n", mismatch);
        return 1;
    }
    printf("test_cpu_check: ok (no mismatch)\n");
    return 0;
}
