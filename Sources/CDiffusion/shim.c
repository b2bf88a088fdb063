#include "cdiffusion_shim.h"

#include <stdlib.h>
#include <string.h>

static _Thread_local char *last_error;

void cdiffusion_set_last_error(const char *message) {
    free(last_error);
    last_error = message ? strdup(message) : NULL;
}

const char *cdiffusion_last_error(void) { return last_error ? last_error : ""; }
