// Replays inputs through a fuzz target without libFuzzer: `make test` runs every finding's
// minimised input (Tests/fuzz/regressions/<target>/) and the seed corpus this way against the
// plain library. Arguments: files or folders of inputs. Prints one line; a crash is a failure.
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "fuzz_main: cannot open %s\n", path); exit(1); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *data = malloc((size_t)n + 1);
    if (fread(data, 1, (size_t)n, f) != (size_t)n) { fprintf(stderr, "fuzz_main: cannot read %s\n", path); exit(1); }
    fclose(f);
    LLVMFuzzerTestOneInput(data, (size_t)n);
    free(data);
    return 1;
}

int main(int argc, char **argv) {
    LLVMFuzzerInitialize(&argc, &argv);
    int runs = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) { fprintf(stderr, "fuzz_main: %s does not exist\n", argv[i]); return 1; }
        if (!S_ISDIR(st.st_mode)) { runs += run_file(argv[i]); continue; }
        DIR *d = opendir(argv[i]);
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            char path[8192];
            snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
            runs += run_file(path);
        }
        closedir(d);
    }
    if (runs == 0) { fprintf(stderr, "fuzz_main: no inputs given\n"); return 1; }
    printf("%s: %d inputs replayed, no crash\n", argv[0], runs);
    return 0;
}
