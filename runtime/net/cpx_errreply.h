/* cpx_errreply.h: answering a request with cliproxy's own error body in
 * its client's envelope (runtime/core/cpx_errbody.h builds the bytes; this
 * sends them, so core/ stays below the server).
 */
#ifndef CPX_ERRREPLY_H
#define CPX_ERRREPLY_H

#include "cpx_errbody.h"
#include "cpx_server.h"

/* Answers r with the error in its client's envelope (the format from r's
 * target) and the CORS/JSON header set. Returns cpx_request_respond's result
 * or a negative errno. */
int cpx_errbody_respond(cpx_request_t *r, int status, const char *type,
                        const char *code, const char *msg);

/* Writes the stream error event to r, already streaming; the caller
 * finishes r. */
int cpx_errbody_write_event(cpx_request_t *r, int status, const char *type,
                            const char *code, const char *msg);

#endif /* CPX_ERRREPLY_H */
