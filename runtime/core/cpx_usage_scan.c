/* cpx_usage_scan.c: see cpx_usage_scan.h. Every read is a top-level
 * member lookup (cpx_json_top_get, which also checks the structure of the
 * object it reads); nothing is decoded but the few numbers. */
#include "cpx_usage_scan.h"

#include <stdlib.h>
#include <string.h>

#include "cpx_errbody.h"
#include "cpx_json_scan.h"
#include "cpx_sse.h"

/* One usage_in result, or the merge of several (rt.record's ir.merge_usage:
 * a later value wins). */
typedef struct {
  double v[CPX_UK_N];
  unsigned has; /* bit per kind */
  int any;      /* a usage object was read (Lua: a table, maybe empty) */
} acc_t;

static int is_obj(cpx_str_t v) {
  return v.p && v.n && v.p[0] == '{';
}

/* Lua's `type(v) == "number"` of a decoded value: a JSON number. */
static int num(cpx_str_t v, double *out) {
  char b[64];
  char *end;
  if (!v.p || !v.n || v.n >= sizeof(b) ||
      !(v.p[0] == '-' || (v.p[0] >= '0' && v.p[0] <= '9')))
    return 0;
  memcpy(b, v.p, v.n);
  b[v.n] = '\0';
  *out = strtod(b, &end);
  return end != b;
}

/* The members keys[0..n) of object o; all absent when o is not one. */
static int get(cpx_str_t o, const char *const *names, cpx_str_t *vals,
               size_t n) {
  cpx_str_t keys[6];
  for (size_t i = 0; i < n; i++) {
    keys[i].p = names[i];
    keys[i].n = strlen(names[i]);
    vals[i].p = NULL;
    vals[i].n = 0;
  }
  if (!is_obj(o))
    return -1;
  return cpx_json_top_get(o.p, o.n, keys, vals, n) == 0 ? 0 : -1;
}

static void set(acc_t *x, int k, double v) {
  x->v[k] = v;
  x->has |= 1u << k;
}

/* One member of one nested object (o.a.b), when both are there. */
static int nested(cpx_str_t o, const char *b, double *out) {
  const char *names[1] = {b};
  cpx_str_t v;
  return get(o, names, &v, 1) == 0 && num(v, out);
}

/* The codecs' usage_in (lua/translators/<fmt>.lua), u an object. */
static void usage_in(int fmt, cpx_str_t u, acc_t *x) {
  cpx_str_t v[5];
  double a, b, c;

  memset(x, 0, sizeof(*x));
  x->any = 1;
  switch (fmt) {
  case CPX_FMT_CLAUDE: {
    static const char *const k[] = {"input_tokens", "output_tokens",
                                    "cache_read_input_tokens",
                                    "cache_creation_input_tokens"};
    int hr, hw;
    get(u, k, v, 4);
    hr = num(v[2], &b);
    hw = num(v[3], &c);
    if (num(v[0], &a))
      set(x, CPX_UK_INPUT, a + (hr ? b : 0) + (hw ? c : 0));
    if (num(v[1], &a))
      set(x, CPX_UK_OUTPUT, a);
    if (hr)
      set(x, CPX_UK_CACHE_READ, b);
    if (hw)
      set(x, CPX_UK_CACHE_WRITE, c);
    break;
  }
  case CPX_FMT_GEMINI: {
    static const char *const k[] = {"promptTokenCount", "candidatesTokenCount",
                                    "thoughtsTokenCount",
                                    "cachedContentTokenCount"};
    int ht;
    get(u, k, v, 4);
    ht = num(v[2], &c);
    if (num(v[0], &a))
      set(x, CPX_UK_INPUT, a);
    set(x, CPX_UK_OUTPUT, (num(v[1], &b) ? b : 0) + (ht ? c : 0));
    if (num(v[3], &a))
      set(x, CPX_UK_CACHE_READ, a);
    if (ht)
      set(x, CPX_UK_REASONING, c);
    break;
  }
  case CPX_FMT_OPENAI_RESPONSES:
  case CPX_FMT_OPENAI_CHAT: {
    static const char *const kc[] = {"prompt_tokens", "completion_tokens",
                                     "prompt_tokens_details",
                                     "completion_tokens_details"};
    static const char *const kr[] = {"input_tokens", "output_tokens",
                                     "input_tokens_details",
                                     "output_tokens_details"};
    int chat = fmt == CPX_FMT_OPENAI_CHAT;
    get(u, chat ? kc : kr, v, 4);
    if (num(v[0], &a))
      set(x, CPX_UK_INPUT, a);
    if (num(v[1], &a))
      set(x, CPX_UK_OUTPUT, a);
    if (is_obj(v[2]) && nested(v[2], "cached_tokens", &a))
      set(x, CPX_UK_CACHE_READ, a);
    if (is_obj(v[3]) && nested(v[3], "reasoning_tokens", &a))
      set(x, CPX_UK_REASONING, a);
    break;
  }
  default:
    x->any = 0;
  }
}

/* Lua's `a or b` for a decoded member: absent and false fall through. */
static int truthy(cpx_str_t v) {
  return v.p && !(v.n == 5 && memcmp(v.p, "false", 5) == 0);
}

/* rt.record's raw_usage: where fmt's answers (and stream events) carry
 * their usage. d is a whole object. */
static cpx_str_t raw_usage(int fmt, cpx_str_t d) {
  static const char *const kg[] = {"usageMetadata", "response"};
  static const char *const kc[] = {"usage", "message"};
  static const char *const kr[] = {"usage", "response"};
  cpx_str_t v[2], in;
  cpx_str_t none = {NULL, 0};

  switch (fmt) {
  case CPX_FMT_GEMINI:
    if (get(d, kg, v, 2) != 0)
      return none;
    if (truthy(v[0]))
      return v[0];
    if (is_obj(v[1]) && get(v[1], kg, &in, 1) == 0)
      return in;
    return none;
  case CPX_FMT_CLAUDE:
    if (get(d, kc, v, 2) != 0)
      return none;
    if (truthy(v[0]))
      return v[0];
    if (is_obj(v[1]) && get(v[1], kc, &in, 1) == 0)
      return in;
    return none;
  case CPX_FMT_OPENAI_RESPONSES:
    if (get(d, kr, v, 2) != 0)
      return none;
    if (is_obj(v[1]) && get(v[1], kr, &in, 1) == 0 && truthy(in))
      return in;
    return v[0];
  default:
    if (get(d, kc, v, 1) != 0)
      return none;
    return v[0];
  }
}

/* usage_of(fmt, d, into): d's usage merged into acc. */
static void usage_of(int fmt, cpx_str_t d, acc_t *acc) {
  cpx_str_t u = raw_usage(fmt, d);
  acc_t x;
  /* Lua: `type(u) ~= "table"`: an array is a table too, and gives no
   * field (usage_in reads none of an array) */
  if (!u.p || !u.n || (u.p[0] != '{' && u.p[0] != '['))
    return;
  if (u.p[0] == '[') {
    acc->any = 1;
    return;
  }
  usage_in(fmt, u, &x);
  if (!x.any)
    return;
  acc->any = 1;
  for (int k = 0; k < CPX_UK_N; k++)
    if (x.has & (1u << k)) {
      acc->v[k] = x.v[k];
      acc->has |= 1u << k;
    }
}

/* ---- streams ------------------------------------------------------------- */

typedef struct {
  int fmt;
  acc_t acc;
} stream_t;

static int on_event(void *ud, const cpx_sse_event_t *ev) {
  stream_t *s = ud;
  /* only the events that name a usage are read (as rt.record does) */
  if (ev->data.n && ev->data.p[0] == '{' &&
      memmem(ev->data.p, ev->data.n, "\"usage", 6))
    usage_of(s->fmt, ev->data, &s->acc);
  return 0;
}

/* ---- whole bodies and tails -------------------------------------------- */

static int lua_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' ||
         c == '\r';
}

/* Lua's text:match('"NAME"%s*:%s*(%b{})'): the first "NAME" followed by
 * a colon and a brace-balanced {...} (braces counted, strings not). */
static cpx_str_t pattern_obj(const char *s, size_t n, const char *name) {
  size_t nl = strlen(name);
  cpx_str_t none = {NULL, 0};
  for (size_t i = 0; i + nl + 2 <= n; i++) {
    size_t j;
    int depth = 0;
    if (s[i] != '"' || memcmp(s + i + 1, name, nl) != 0 || s[i + nl + 1] != '"')
      continue;
    j = i + nl + 2;
    while (j < n && lua_space(s[j]))
      j++;
    if (j >= n || s[j] != ':')
      continue;
    j++;
    while (j < n && lua_space(s[j]))
      j++;
    if (j >= n || s[j] != '{')
      continue;
    for (size_t k = j; k < n; k++) {
      if (s[k] == '{') {
        depth++;
      } else if (s[k] == '}' && --depth == 0) {
        cpx_str_t o = {s + j, k - j + 1};
        return o;
      }
    }
  }
  return none;
}

/* rt.record's tail_usage(fmt, text, whole). */
static void tail_usage(int fmt, const char *s, size_t n, int whole,
                       acc_t *acc) {
  const char *name = fmt == CPX_FMT_GEMINI ? "usageMetadata" : "usage";
  cpx_str_t obj = {NULL, 0}, doc = {s, n};
  acc_t x;

  if (whole) {
    const char *names[1] = {name};
    if (get(doc, names, &obj, 1) != 0)
      obj.p = NULL;
  }
  if (!obj.p) {
    /* the whole body read as an answer (usage_from_body) */
    if (whole && is_obj(doc)) {
      memset(&x, 0, sizeof(x));
      usage_of(fmt, doc, &x);
      if (x.any) {
        *acc = x;
        return;
      }
    }
    obj = pattern_obj(s, n, name);
  }
  if (is_obj(obj)) {
    /* usage_of(fmt, { [name] = decode(obj) }): a valid object only */
    cpx_str_t none[1];
    const char *names[1] = {"\x01"};
    if (get(obj, names, none, 1) != 0)
      return;
    usage_in(fmt, obj, &x);
    if (x.any)
      *acc = x;
  }
}

int cpx_usage_scan(int fmt, const char *bytes, size_t head_len, size_t tail_len,
                   int gap, int stream, double out[CPX_UK_N]) {
  acc_t acc;
  memset(&acc, 0, sizeof(acc));
  memset(out, 0, sizeof(double) * CPX_UK_N);
  if (stream) {
    stream_t s;
    cpx_sse_t p;
    int rc;
    memset(&s, 0, sizeof(s));
    s.fmt = fmt;
    /* (a blank line between the two ends: an event cut at the seam is
     * not read as one) */
    cpx_sse_init(&p, head_len + tail_len + 16);
    rc = cpx_sse_feed(&p, bytes, head_len, on_event, &s);
    if (rc == 0 && gap)
      rc = cpx_sse_feed(&p, "\n\n", 2, on_event, &s);
    if (rc == 0)
      rc = cpx_sse_feed(&p, bytes + head_len, tail_len, on_event, &s);
    if (rc == 0)
      rc = cpx_sse_feed(&p, "\n\n", 2, on_event, &s);
    cpx_sse_free(&p);
    if (rc == CPX_ENOMEM)
      return rc;
    acc = s.acc;
  } else if (!gap) {
    tail_usage(fmt, bytes, head_len + tail_len, 1, &acc);
  } else {
    tail_usage(fmt, bytes + head_len, tail_len, 0, &acc);
  }
  for (int k = 0; k < CPX_UK_N; k++)
    if (acc.has & (1u << k))
      out[k] = acc.v[k];
  return 0;
}
