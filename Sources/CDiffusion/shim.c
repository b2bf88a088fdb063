#include "cdiffusion_shim.h"

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
