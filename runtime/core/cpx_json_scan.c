/* cpx_json_scan.c: the passthrough fast path's view of a JSON body.
 *
 * A same-format request only needs its top-level "model" and "stream" read
 * and "model" rewritten; decoding 78 KB into Lua tables and encoding it
 * again would cost more than the whole proxy hop. This scanner checks the
 * document's structure (the top-level object's keys, values, commas and
 * colons; balanced brackets and terminated strings below it) and reads or
 * replaces top-level values in place. It does not validate scalars nested
 * below the top level: the upstream that receives the body does that, and
 * its error comes back to the client.
 *
 * The Lua side (cpx.json.peek, has, set_string, top, edit, member,
 * first_event) is runtime/lua/cpx_json_scan_lua.c, over cpx_json_scan_top.
 */
#include <stdlib.h>
#include <string.h>

#include "cpx.h"
#include "cpx_errbody.h"
#include "cpx_json_scan.h"

#define MAX_DEPTH 1024

const char *cpx_json_skip_ws(const char *p, const char *end) {
  while (p < end && cpx_json_is_ws(*p))
    p++;
  return p;
}

const char *cpx_json_skip_string(const char *p, const char *end) {
  const char *q = p + 1;
  for (;;) {
    const char *c = memchr(q, '"', (size_t)(end - q));
    if (!c)
      return NULL;
    /* The quote ends the string unless an odd run of backslashes precedes
     * it. */
    size_t bs = 0;
    for (const char *b = c - 1; b > p && *b == '\\'; b--)
      bs++;
    if ((bs & 1) == 0)
      return c + 1;
    q = c + 1;
  }
}

static int is_scalar_char(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
         (c >= 'A' && c <= 'Z') || c == '.' || c == '+' || c == '-';
}

/* Skips one value starting at p (after whitespace). */
static const char *skip_value(const char *p, const char *end) {
  char stack[MAX_DEPTH];
  int depth = 0;

  if (p >= end)
    return NULL;
  if (*p == '"')
    return cpx_json_skip_string(p, end);
  if (*p != '{' && *p != '[') {
    const char *s = p;
    while (p < end && is_scalar_char((unsigned char)*p))
      p++;
    return p > s ? p : NULL;
  }
  while (p < end) {
    char c = *p;
    if (c == '"') {
      p = cpx_json_skip_string(p, end);
      if (!p)
        return NULL;
      continue;
    }
    if (c == '{' || c == '[') {
      if (depth >= MAX_DEPTH)
        return NULL;
      stack[depth++] = c == '{' ? '}' : ']';
    } else if (c == '}' || c == ']') {
      if (depth == 0 || stack[depth - 1] != c)
        return NULL;
      if (--depth == 0)
        return p + 1;
    }
    p++;
  }
  return NULL;
}

int cpx_json_scan_top(const char *s, size_t n, cpx_json_member_cb cb, void *ud,
                      size_t *at, const char **close_brace) {
  const char *p = s, *end = s + n;
  cpx_json_member_t e;

  p = cpx_json_skip_ws(p, end);
  if (p >= end || *p != '{')
    goto bad;
  p = cpx_json_skip_ws(p + 1, end);
  if (p < end && *p == '}') {
    *close_brace = p;
    p = cpx_json_skip_ws(p + 1, end);
    if (p != end)
      goto bad;
    return 0;
  }
  for (;;) {
    const char *ks, *ke, *ve;
    if (p >= end || *p != '"')
      goto bad;
    ks = p;
    ke = cpx_json_skip_string(p, end);
    if (!ke)
      goto bad;
    p = cpx_json_skip_ws(ke, end);
    if (p >= end || *p != ':')
      goto bad;
    p = cpx_json_skip_ws(p + 1, end);
    ve = skip_value(p, end);
    if (!ve)
      goto bad;
    e.kp = ks + 1;
    e.kn = (size_t)(ke - ks - 2);
    e.vp = p;
    e.vn = (size_t)(ve - p);
    if (cb && cb(ud, &e))
      return 0;
    p = cpx_json_skip_ws(ve, end);
    if (p < end && *p == ',') {
      p = cpx_json_skip_ws(p + 1, end);
      continue;
    }
    if (p < end && *p == '}') {
      *close_brace = p;
      p = cpx_json_skip_ws(p + 1, end);
      if (p != end)
        goto bad;
      return 0;
    }
    goto bad;
  }
bad:
  *at = (size_t)(p - s);
  return CPX_EPARSE;
}

typedef struct {
  const cpx_str_t *keys;
  cpx_str_t *vals;
  size_t n;
} get_t;

static int get_cb(void *ud, const cpx_json_member_t *e) {
  get_t *g = ud;
  for (size_t i = 0; i < g->n; i++) {
    if (e->kn == g->keys[i].n && memcmp(e->kp, g->keys[i].p, e->kn) == 0) {
      g->vals[i].p = e->vp;
      g->vals[i].n = e->vn;
    }
  }
  return 0;
}

int cpx_json_top_get(const char *s, size_t n, const cpx_str_t *keys,
                     cpx_str_t *vals, size_t nkeys) {
  get_t g = {keys, vals, nkeys};
  size_t at = 0;
  const char *close;
  for (size_t i = 0; i < nkeys; i++) {
    vals[i].p = NULL;
    vals[i].n = 0;
  }
  return cpx_json_scan_top(s, n, get_cb, &g, &at, &close);
}

/* ---- stream first events ------------------------------------------------ */

/* indexed by CPX_FMT_* */
#define FMT_N 4
static const char *const fmt_names[FMT_N] = {"openai_chat", "openai_responses",
                                             "claude", "gemini"};

int cpx_fmt_parse(const char *s, size_t n) {
  for (int i = 0; i < FMT_N; i++)
    if (strlen(fmt_names[i]) == n && memcmp(fmt_names[i], s, n) == 0)
      return i;
  return -1;
}

const char *cpx_fmt_name(int fmt) {
  return fmt >= 0 && fmt < FMT_N ? fmt_names[fmt] : "?";
}

static int str_is(const char *p, size_t n, const char *lit) {
  size_t ln = strlen(lit);
  return p && n == ln && memcmp(p, lit, n) == 0;
}

/* Events that only open a stream (Claude's message_start and ping, the
 * Responses API's response.created and response.in_progress): the first
 * real event comes after them. An error is an event of the upstream's own
 * error shape: Claude `event: error` / {"type":"error"}, Responses `error`
 * and `response.failed`, Chat and Gemini a JSON object with an "error"
 * member. Data that is not a JSON object (`[DONE]`, text) is no error. */
int cpx_stream_event_kind(int fmt, const char *event, size_t event_len,
                          const char *data, size_t data_len) {
  static const cpx_str_t keys[2] = {CPX_STR("error"), CPX_STR("type")};
  cpx_str_t vals[2];

  if (str_is(event, event_len, "message_start") ||
      str_is(event, event_len, "ping") ||
      str_is(event, event_len, "response.created") ||
      str_is(event, event_len, "response.in_progress"))
    return CPX_EV_HANDSHAKE;
  if (data_len == 0 || cpx_json_top_get(data, data_len, keys, vals, 2) != 0)
    return CPX_EV_REAL;
  switch (fmt) {
  case CPX_FMT_CLAUDE:
    if (str_is(event, event_len, "error") ||
        str_is(vals[1].p, vals[1].n, "\"error\""))
      return CPX_EV_ERROR;
    return CPX_EV_REAL;
  case CPX_FMT_OPENAI_RESPONSES:
    if (str_is(event, event_len, "error") ||
        str_is(event, event_len, "response.failed") ||
        str_is(vals[1].p, vals[1].n, "\"response.failed\"") ||
        str_is(vals[1].p, vals[1].n, "\"error\""))
      return CPX_EV_ERROR;
    return CPX_EV_REAL;
  default:
    return vals[0].p ? CPX_EV_ERROR : CPX_EV_REAL;
  }
}
