/* cpx_http.h: strict HTTP/1.1 request parsing on top of llhttp.
 *
 * llhttp runs with every lenient flag off. On top of it this layer enforces
 * what llhttp 8 leaves to the application: RFC 9110 tchar field names, no
 * obs-fold, a bound on header bytes and field count (431), a body bound
 * (413), and it keeps one parsed request at a time (pipelined bytes wait
 * until the request is taken with cpx_http_take_request).
 *
 * Ownership: the parser owns its buffers. A finished request can be taken
 * over with cpx_http_take_request (the caller then frees it with
 * cpx_http_request_free).
 */
#ifndef CPX_HTTP_H
#define CPX_HTTP_H

#include <llhttp.h>

#include "cpx.h"

#define CPX_HTTP_MAX_FIELDS_HARD 1000

typedef struct {
  size_t max_header_bytes; /* request line + fields; default 64 KiB */
  size_t max_fields;       /* default 100 */
  size_t max_body;         /* default 32 MiB */
} cpx_http_limits_t;

typedef struct {
  size_t name_off, name_len; /* into cpx_http_request_t.buf; name lowercased */
  size_t value_off, value_len;
} cpx_http_field_t;

/* One parsed request. Every string lives in buf (owned) except the body
 * (owned separately). */
typedef struct {
  char *buf;
  size_t len, cap;
  size_t url_off, url_len;
  cpx_http_field_t *fields; /* owned array of nfields */
  size_t nfields, fields_cap;
  char *body; /* owned; NUL-terminated for convenience */
  size_t body_len, body_cap;
  const char *method; /* static string */
  int http_major, http_minor;
  int keep_alive;
  int expect_continue;
  int upgrade;             /* Upgrade header present */
  uint64_t content_length; /* 0 when absent or chunked */
  int has_body;            /* Content-Length > 0 or chunked */
} cpx_http_request_t;

enum {
  CPX_HTTP_NEED_MORE = 0,
  CPX_HTTP_HEADERS_DONE = 1, /* headers parsed; body may follow */
  CPX_HTTP_DONE = 2,         /* one request complete; parser paused */
  CPX_HTTP_ERROR = 3,        /* see error_status / error_reason */
};

typedef struct {
  llhttp_t p;
  cpx_http_limits_t limits;
  cpx_http_request_t req;
  size_t header_bytes; /* names + values (trailers included) */
  size_t head_raw;     /* raw bytes of the head, while in it */
  int state;           /* 0 fresh, 1 in headers, 2 in body, 3 done */
  int last_cb;         /* 0 none, 1 field, 2 value, 3 value complete */
  int headers_done_pending;
  int value_at_end;       /* last value piece ended at the input's end */
  const char *exec_start; /* input of the running llhttp_execute */
  const char *exec_end;
  int error_status; /* 400, 408, 413, 431, 501 ... when CPX_HTTP_ERROR */
  const char *error_reason;
} cpx_http_parser_t;

void cpx_http_parser_init(cpx_http_parser_t *hp, const cpx_http_limits_t *lim);
void cpx_http_parser_free(cpx_http_parser_t *hp);

/* Feeds bytes. Sets *consumed to the bytes used. Returns one of the
 * CPX_HTTP_* states. After CPX_HTTP_HEADERS_DONE call again with the rest;
 * after CPX_HTTP_DONE the unconsumed bytes belong to the next request: take
 * the request (cpx_http_take_request, which resets the parser) before
 * feeding them. */
int cpx_http_feed(cpx_http_parser_t *hp, const char *data, size_t len,
                  size_t *consumed);

/* Moves the finished request into *out and resets the parser for the next
 * request on the same connection. */
void cpx_http_take_request(cpx_http_parser_t *hp, cpx_http_request_t *out);
void cpx_http_request_free(cpx_http_request_t *r);
/* While a Content-Length body is being read: where the next body bytes go
 * in the request's body buffer and how many may be read there (never past
 * the body, so a pipelined request cannot land in it). Bytes read there and
 * fed to cpx_http_feed are taken in place, without a copy. Returns 0 when
 * there is no such room. */
int cpx_http_body_room(cpx_http_parser_t *hp, char **p, size_t *n);

/* Case-insensitive lookup (name must be lower case). Returns the first match
 * or NULL; *n receives the value length. */
const char *cpx_http_header(const cpx_http_request_t *r, const char *name,
                            size_t *n);

/* Reason phrase for a status code. */
const char *cpx_http_reason(int status);

#endif /* CPX_HTTP_H */
