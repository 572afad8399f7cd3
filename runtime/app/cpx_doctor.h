/* `cliproxy doctor`: checks a loaded generation the way a new user needs it
 * checked (config, TLS pair, port, credentials, upstream reachability) and
 * prints what is wrong and what to do. */
#ifndef CPX_DOCTOR_H
#define CPX_DOCTOR_H

#include "cpx_lua.h"

typedef struct {
  int offline;           /* skip the upstream probes */
  long probe_timeout_ms; /* per upstream; 0: 5000 */
} cpx_doctor_opts_t;

/* Prints the report on stdout. Returns the number of errors found (0: all
 * is well; warnings do not count). vm stays owned by the caller. */
int cpx_doctor_run(cpx_vm_t *vm, const char *config_path,
                   const cpx_doctor_opts_t *opts);

#endif
