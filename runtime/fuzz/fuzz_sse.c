/* fuzz_sse: the SSE framer and the JSON-array framer. Any split of the
 * input gives the same events as the whole (the first byte picks the
 * piece size), and no event exceeds the bound. */
#include <string.h>

#include "cpx_sse.h"
#include "fuzz.h"

typedef struct {
  char *p;
  size_t n, cap;
  size_t max;
} out_t;

static void put(out_t *o, const void *p, size_t n) {
  if (o->n + n + 1 > o->cap) {
    o->cap = (o->n + n + 1) * 2;
    o->p = realloc(o->p, o->cap);
  }
  memcpy(o->p + o->n, p, n);
  o->n += n;
}

static int on_event(void *ud, const cpx_sse_event_t *ev) {
  out_t *o = ud;
  char b[32];
  FUZZ_CHECK(ev->data.n + ev->event.n <= o->max, "event of %zu bytes",
             ev->data.n + ev->event.n);
  put(o, ev->event.p, ev->event.n);
  put(o, "\x01", 1);
  put(o, ev->data.p, ev->data.n);
  put(o, "\x01", 1);
  put(o, ev->id.p, ev->id.n);
  snprintf(b, sizeof(b), "\x01%ld\x02", ev->retry);
  put(o, b, strlen(b));
  return 0;
}

static int on_elem(void *ud, const char *elem, size_t len) {
  out_t *o = ud;
  FUZZ_CHECK(len <= o->max, "element of %zu bytes", len);
  put(o, elem, len);
  put(o, "\x02", 1);
  return 0;
}

#define MAX_EVENT 2048

static out_t run_sse(const char *d, size_t n, size_t step) {
  cpx_sse_t p;
  out_t o = {0};
  o.max = MAX_EVENT;
  cpx_sse_init(&p, MAX_EVENT);
  for (size_t off = 0; off < n; off += step) {
    size_t k = n - off < step ? n - off : step;
    int rc = cpx_sse_feed(&p, d + off, k, on_event, &o);
    if (rc != 0) {
      FUZZ_CHECK(rc == CPX_ELIMIT, "sse rc %d", rc);
      put(&o, "LIMIT", 5);
      break;
    }
  }
  cpx_sse_free(&p);
  return o;
}

static out_t run_ja(const char *d, size_t n, size_t step) {
  cpx_jsonarr_t p;
  out_t o = {0};
  o.max = MAX_EVENT;
  cpx_jsonarr_init(&p, MAX_EVENT);
  for (size_t off = 0; off < n; off += step) {
    size_t k = n - off < step ? n - off : step;
    int rc = cpx_jsonarr_feed(&p, d + off, k, on_elem, &o);
    if (rc != 0) {
      char b[32];
      snprintf(b, sizeof(b), "ERR%d", rc);
      put(&o, b, strlen(b));
      break;
    }
  }
  cpx_jsonarr_free(&p);
  return o;
}

static void same(out_t a, out_t b, const char *what, size_t step) {
  FUZZ_CHECK(a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0),
             "%s: whole and %zu-byte pieces differ", what, step);
  free(a.p);
  free(b.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *d = (const char *)data + 1;
  size_t n, step;
  if (size < 1)
    return 0;
  n = size - 1;
  step = (size_t)(data[0] % 32) + 1;
  same(run_sse(d, n, n ? n : 1), run_sse(d, n, step), "sse", step);
  same(run_ja(d, n, n ? n : 1), run_ja(d, n, step), "jsonarr", step);
  return 0;
}
