/* cpx_access_log.h: the access log, one line per client request, at info:
 *
 *   [time] [rid] [info] <status> | <ms>ms | <remote> | <METHOD> <target>
 *       | in=<body bytes> out=<bytes sent>[ | <tag>][ | client closed]
 *
 * (the query string redacted, see cpx_log_redact_query; status 499 when
 * none was sent), and for an answer sent before there was a request
 * (400/408/413/431 from the parser, 503 over the connection limits):
 *
 *   [time] [--------] [info] <status> | <remote> | <note>
 *
 * A request a handler serves is also a record (lua/rt/record.lua), and the
 * access log is one of the record's readers: the handler claims the line
 * (cpx_access_log_claim), and rt.access_log's record subscriber names the
 * request by its id (cpx_access_log_record). The line is written once the
 * record named it and the response has ended, whichever comes last, from
 * what the server knows (status sent, bytes, client address), so it reads
 * the same on every path. A claimed request whose record never comes (a
 * lane record dropped when its queue was full, a script that failed
 * before recording) is written anyway two loop iterations after its
 * response ended. A request nobody claimed is written when it ends.
 *
 * Everything here runs on the server's loop thread.
 */
#ifndef CPX_ACCESS_LOG_H
#define CPX_ACCESS_LOG_H

#include <stddef.h>

#include <uv.h>

struct cpx_server_s;
struct cpx_request_s;

typedef struct cpx_access_line_s cpx_access_line_t;

#define CPX_ACCESS_LOG_BUCKETS 256
/* Lines waiting for their record beyond this are written at once. */
#define CPX_ACCESS_LOG_PARKED_MAX 4096

/* Per server (embedded in cpx_server_t). Owns its entries: claimed ones
 * (the request still runs) and parked ones (it ended, its record has not
 * come yet), both in the table by request id; parked ones also in end
 * order for the fallback. */
typedef struct {
  cpx_access_line_t *buckets[CPX_ACCESS_LOG_BUCKETS];
  cpx_access_line_t *head, *tail; /* parked, oldest first */
  size_t nparked;
  uv_idle_t idle; /* the fallback's passes while something is parked */
  int open;       /* idle initialised */
  int closed;     /* cpx_access_log_close ran: lines are written at once */
} cpx_access_log_t;

void cpx_access_log_init(cpx_access_log_t *al, uv_loop_t *loop);
/* Writes every parked line, forgets claims and closes the idle handle (the
 * server's close). */
void cpx_access_log_close(cpx_access_log_t *al);

/* The handler will record r (rt.record): its line waits for the record.
 * Without memory for the entry the line is written when r ends. */
void cpx_access_log_claim(struct cpx_request_s *r);
/* r's response has ended (the server's request_done): writes its line, or
 * parks it until its record names it. */
void cpx_access_log_done(struct cpx_request_s *r);
/* The record of request rid (n bytes) has been emitted. Returns 1 when the
 * request was claimed and not yet written (its line is written now, or
 * when its response ends), else 0. */
int cpx_access_log_record(struct cpx_server_s *srv, const char *rid, size_t n);

/* The line of an answer no request object stands for. */
void cpx_access_log_reject(int status, const char *remote, const char *note);

#endif /* CPX_ACCESS_LOG_H */
