/* cpx_errreply.c: error bodies sent on a request (see cpx_errreply.h). */
#include "cpx_errreply.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef int (*eb_fn)(char *out, size_t cap, int fmt, int status,
                     const char *type, const char *code, const char *msg);

/* Builds into stack space, or a heap buffer sized for the worst case (six
 * bytes per message byte, as \u00XX) when a message is long; *heap is
 * what the caller frees. */
static int eb_build(eb_fn fn, char *stack, size_t cap, char **heap,
                    const cpx_request_t *r, int status, const char *type,
                    const char *code, const char *msg) {
  const cpx_http_request_t *h = &r->http;
  int fmt = cpx_errbody_format(h->buf ? h->buf + h->url_off : NULL,
                               h->buf ? h->url_len : 0);
  size_t big;
  int n;
  *heap = NULL;
  n = fn(stack, cap, fmt, status, type, code, msg);
  if (n != -ENOBUFS)
    return n;
  big = 6 * strlen(msg ? msg : "") + 512;
  *heap = malloc(big);
  if (!*heap)
    return -ENOMEM;
  return fn(*heap, big, fmt, status, type, code, msg);
}

int cpx_errbody_respond(cpx_request_t *r, int status, const char *type,
                        const char *code, const char *msg) {
  char stack[1024], *heap;
  int n = eb_build(cpx_errbody, stack, sizeof(stack), &heap, r, status, type,
                   code, msg);
  if (n >= 0)
    n = cpx_request_respond(r, status, cpx_json_headers, CPX_JSON_HEADERS_N,
                            heap ? heap : stack, (size_t)n);
  free(heap);
  return n;
}

int cpx_errbody_write_event(cpx_request_t *r, int status, const char *type,
                            const char *code, const char *msg) {
  char stack[1024], *heap;
  int n = eb_build(cpx_errbody_sse, stack, sizeof(stack), &heap, r, status,
                   type, code, msg);
  if (n >= 0)
    n = cpx_request_write(r, heap ? heap : stack, (size_t)n);
  free(heap);
  return n;
}
