// Internal C glue: not part of the public API (the version script keeps these symbols local).
#ifndef CDIFFUSION_SHIM_H
#define CDIFFUSION_SHIM_H

#include <stddef.h>

// The thread's last error message (dlerror-style storage; the string is copied).
void cdiffusion_set_last_error(const char *message);
const char *cdiffusion_last_error(void);

#endif
