/* cpx_otlp.h: OpenTelemetry spans over OTLP/HTTP JSON, sent by one thread
 * (see cpx_otlp.c); cpx.otlp in Lua is runtime/lua/cpx_otlp_lua.c. */
#ifndef CPX_OTLP_H
#define CPX_OTLP_H

#include <stddef.h>
#include <stdint.h>

/* Starts the sender thread posting to endpoint as service (NULL:
 * "cliproxy"; quotes, backslashes and control bytes become '_'), or points
 * the running one there. 0, or CPX_ESTATE when the thread cannot start. */
int cpx_otlp_open(const char *endpoint, const char *service);
/* Queues a copy of one span's JSON text (n bytes, at most 16 KiB). 1 when
 * queued, 0 when not (too large, queue full: counted as dropped, or not
 * open), CPX_ENOMEM. Any thread; never blocks on the network. */
int cpx_otlp_push(const char *span, size_t n);

typedef struct {
  uint64_t sent, dropped, failed;
  size_t queued;
} cpx_otlp_stats_t;
void cpx_otlp_stats(cpx_otlp_stats_t *out);

/* Sends what is queued and stops the sender thread (at exit). */
void cpx_otlp_close(void);

#endif /* CPX_OTLP_H */
