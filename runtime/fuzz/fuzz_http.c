/* fuzz_http: the request parser under the server's limits (small ones, so
 * the fuzzer reaches 413 and 431). Pipelined requests are parsed from the
 * whole input and again in pieces of 1..16 bytes (the first input byte
 * chooses); both must describe the same requests and end the same way. */
#include <string.h>

#include "cpx_http.h"
#include "fuzz.h"

typedef struct {
  char *p;
  size_t n, cap;
} out_t;

static void put(out_t *o, const void *p, size_t n) {
  if (o->n + n + 1 > o->cap) {
    o->cap = (o->n + n + 1) * 2;
    o->p = realloc(o->p, o->cap);
  }
  memcpy(o->p + o->n, p, n);
  o->n += n;
}

static void put_num(out_t *o, long long v) {
  char b[32];
  int n = snprintf(b, sizeof(b), "%lld|", v);
  put(o, b, (size_t)n);
}

static void describe(out_t *o, const cpx_http_request_t *r) {
  put(o, r->method ? r->method : "?", strlen(r->method ? r->method : "?"));
  put(o, r->buf + r->url_off, r->url_len);
  put_num(o, r->http_major * 10 + r->http_minor);
  put_num(o, r->keep_alive);
  for (size_t i = 0; i < r->nfields; i++) {
    const cpx_http_field_t *f = &r->fields[i];
    FUZZ_CHECK(f->name_off + f->name_len <= r->len, "field name out of buf");
    FUZZ_CHECK(f->value_off + f->value_len <= r->len, "field value out of buf");
    put(o, r->buf + f->name_off, f->name_len);
    put(o, ":", 1);
    put(o, r->buf + f->value_off, f->value_len);
    put(o, "\n", 1);
  }
  put_num(o, (long long)r->body_len);
  if (r->body_len)
    put(o, r->body, r->body_len);
}

static const cpx_http_limits_t limits = {4096, 20, 65536};

/* Returns the description of everything parsed; step 0 = all at once. */
static out_t run(const char *data, size_t len, size_t step) {
  cpx_http_parser_t hp;
  out_t o = {0};
  size_t off = 0;
  int requests = 0;
  cpx_http_parser_init(&hp, &limits);
  while (off < len) {
    size_t n = step ? step : len - off;
    size_t pos = 0;
    if (n > len - off)
      n = len - off;
    while (pos < n) {
      size_t used = 0;
      int st = cpx_http_feed(&hp, data + off + pos, n - pos, &used);
      FUZZ_CHECK(used <= n - pos, "consumed %zu of %zu", used, n - pos);
      pos += used;
      if (st == CPX_HTTP_HEADERS_DONE)
        continue;
      if (st == CPX_HTTP_ERROR) {
        FUZZ_CHECK(hp.error_status >= 400 && hp.error_status < 600,
                   "error status %d", hp.error_status);
        put(&o, "E", 1);
        put_num(&o, hp.error_status);
        if (getenv("FUZZ_VERBOSE") && hp.error_reason)
          fprintf(stderr, "step %zu: %d %s\n", step, hp.error_status,
                  hp.error_reason);
        cpx_http_parser_free(&hp);
        return o;
      }
      if (st == CPX_HTTP_DONE) {
        cpx_http_request_t r;
        cpx_http_take_request(&hp, &r);
        FUZZ_CHECK(r.body_len <= limits.max_body, "body %zu", r.body_len);
        FUZZ_CHECK(r.nfields <= limits.max_fields, "fields %zu", r.nfields);
        describe(&o, &r);
        cpx_http_request_free(&r);
        if (++requests > 64) {
          cpx_http_parser_free(&hp);
          return o;
        }
        continue;
      }
      if (used == 0)
        break;
    }
    off += n;
  }
  put(&o, "M", 1); /* needs more */
  cpx_http_parser_free(&hp);
  return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t step;
  out_t whole, split;
  if (size < 1)
    return 0;
  step = (size_t)(data[0] % 16) + 1;
  whole = run((const char *)data + 1, size - 1, 0);
  split = run((const char *)data + 1, size - 1, step);
  FUZZ_CHECK(whole.n == split.n && memcmp(whole.p, split.p, whole.n) == 0,
             "whole and %zu-byte pieces differ:\n%.*s\n---\n%.*s", step,
             (int)whole.n, whole.p, (int)split.n, split.p);
  free(whole.p);
  free(split.p);
  return 0;
}
