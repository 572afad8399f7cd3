/* cpx_lua_util.c: the non-yielding `cpx` Lua API (see cpx_lua_util.h).
 *
 * JSON is bound to yajl rather than lua-cjson because cjson cannot keep an
 * empty array distinct from an empty object, and request bodies must
 * round-trip `[]` as `[]`. Decoding builds Lua tables directly from yajl's
 * callbacks (no intermediate tree); encoding walks the Lua value and feeds
 * yajl_gen.
 *
 * Fidelity: decode then encode of an untouched document gives back the
 * input bytes (compact input; see docs/lua-api.md). Each decoded object gets
 * its own metatable whose array part lists the keys in input order, so the
 * order survives in the value itself and is carried by any copy that keeps
 * the metatable; decoded values stay plain tables for the translators.
 * Numbers whose text the encoder would not reproduce (64-bit integers,
 * "1.10", "-0", "1e-7") have that text kept in a weak side table, used on
 * encode only while the Lua value still equals it.
 */
#include "cpx_lua_util.h"

#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>

#include "cpx.h"
#include "cpx_buf.h"
#include "cpx_json_scan.h"
#include "cpx_sse.h"

#define JSON_MAX_DEPTH 1000
#define ARRAY_MT_KEY "cpx.json.array_mt"
/* Weak-keyed: decoded container -> {key or index = original number text},
 * for the numbers whose text the encoder would not reproduce. */
#define RAW_KEY "cpx.json.raw"
#define SSE_MT "cpx.sse.framer"
#define JSONARR_MT "cpx.jsonarr.framer"
/* 2^53: doubles below this magnitude hold every integer exactly. */
#define JSON_INT_LIMIT 9007199254740992.0

/* ---- JSON decode -------------------------------------------------------- */

/* The escape yajl writes for an ASCII byte below 0x20, '"' or '\\'
 * ('u' = \u00XX with upper-case hex), 0 when the byte stays as it is. */
static const char ascii_escape[128] = {
    ['\b'] = 'b', ['\f'] = 'f',  ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't',
    ['"'] = '"',  ['\\'] = '\\', [0] = 'u',    [1] = 'u',    [2] = 'u',
    [3] = 'u',    [4] = 'u',     [5] = 'u',    [6] = 'u',    [7] = 'u',
    [11] = 'u',   [14] = 'u',    [15] = 'u',   [16] = 'u',   [17] = 'u',
    [18] = 'u',   [19] = 'u',    [20] = 'u',   [21] = 'u',   [22] = 'u',
    [23] = 'u',   [24] = 'u',    [25] = 'u',   [26] = 'u',   [27] = 'u',
    [28] = 'u',   [29] = 'u',    [30] = 'u',   [31] = 'u',
};

/* The byte a one-letter JSON escape stands for (\" \\ \/ \b \f \n \r
 * \t: c is the letter), or 0 for \u and what JSON lacks. */
static char json_short_escape(char c) {
  switch (c) {
  case 'b':
    return '\b';
  case 'f':
    return '\f';
  case 'n':
    return '\n';
  case 'r':
    return '\r';
  case 't':
    return '\t';
  case '"':
  case '\\':
  case '/':
    return c;
  default:
    return 0;
  }
}

/* ---- carried paths (cpx.json.spec) ---------------------------------------
 * A codec declares the subtrees it only carries ("tools[].input_schema").
 * decode(s, spec) leaves a container found at such a path as a span: an
 * empty table with SPAN_MT_KEY's metatable whose RAW_KEY entry is the
 * container's bytes (whitespace outside strings dropped), so no Lua table
 * is built for it and the encoder copies the bytes back. yajl still parses
 * the span, so it is valid JSON with valid UTF-8 like any decoded value. */
#define SPAN_MT_KEY "cpx.json.span_mt"
#define SPEC_MT "cpx.json.spec"
#define SPEC_MAX_NODES 32
#define SPEC_MAX_KEYS 64
#define SPEC_POOL 1024
#define SPEC_NONE (-1)
#define SPEC_CARRIED (-2)

/* A compiled path set: a trie whose node 0 is the document. A node's keys
 * (a list from first through next, -1 ends it) name members of an object
 * at that point, elem is what an array's elements are; a child is
 * SPEC_NONE, SPEC_CARRIED or a node index. Plain data inside one userdata
 * (indexes and offsets, no pointers). */
typedef struct {
  int elem;
  int first;
} spec_node_t;

typedef struct {
  unsigned off, len; /* in pool */
  int child;
  int next;
} spec_key_t;

typedef struct {
  int nnodes, nkeys;
  size_t used;
  spec_node_t nodes[SPEC_MAX_NODES];
  spec_key_t keys[SPEC_MAX_KEYS];
  char pool[SPEC_POOL];
} json_spec_t;

/* Non-zero when one of the 8 bytes needs a look: >= 0x80, < 0x20, '"' or
 * '\\' (bit tricks; a false alarm only sends the word to the byte loop). */
static inline uint64_t word_dirty(uint64_t x) {
  const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
  uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
  return (x | ((x - ones * 0x20) & ~x) | ((q - ones) & ~q) |
          ((b - ones) & ~b)) &
         high;
}

/* Decoder state shared by the yajl callbacks. Lives on the C stack of the
 * decode call; owns nothing. The Lua stack holds, per open container, the
 * table and (for objects, between key and value) the pending key. */
typedef struct {
  const json_spec_t *spec;      /* NULL: decode everything */
  int node[JSON_MAX_DEPTH + 1]; /* spec node of each open container */
  int vspec;                    /* spec of the member after a key */
  int skip;                     /* > 0: nesting inside a span */
  size_t span_start;            /* offset of the span's [ or { */
  struct json_hbox *box;        /* owns the scratch buffer */
  lua_State *L;
  int depth;
  int in_array[JSON_MAX_DEPTH + 1]; /* 1 when that level is an array */
  int next_idx[JSON_MAX_DEPTH + 1]; /* next array index / key slot */
  int kidx[JSON_MAX_DEPTH + 1];     /* stack index of the pending key, 0 */
  int raw;                          /* stack index of the RAW_KEY table */
  yajl_handle h;                    /* for the offset of the current token */
  const char *in;                   /* the input, to find raw string tokens */
  size_t inlen;
  size_t last_end; /* offset past the last key or string token */
  const char *err; /* set when a callback cancels */
  size_t base;     /* offset in `in` of the chunk yajl is parsing */
  /* While yajl parses the placeholder of a long string (json_long_t):
   * that string, which the callbacks use instead of the placeholder. */
  const struct json_long *sub;
} json_dec_t;

/* A long string that json_long_next checked and that yajl never lexes
 * (see json_decode_spec): its text between the quotes, as written. */
typedef struct json_long {
  const char *raw; /* after the opening quote */
  size_t rawlen;   /* up to the closing quote */
  size_t quote;    /* offset of the opening quote in the input */
  size_t end;      /* offset past the closing quote */
  int esc;   /* 1 when it holds escapes (all of \" \\ \/ \b \f \n \r \t) */
  int slash; /* 1 when one is \/, which the encoder writes as / */
} json_long_t;

/* per thread: a worker's tests change their own, never another's */
_Thread_local size_t cpx_json_long_min = 64;

/* Where the token yajl just read ends, as an offset into the whole input. */
static size_t dec_at(const json_dec_t *d) {
  return d->sub ? d->sub->end : d->base + yajl_get_bytes_consumed(d->h);
}

/* Stores the value on top of the Lua stack into the enclosing container
 * (or leaves it as the result at depth 0). */
static void dec_store(json_dec_t *d) {
  if (d->depth == 0)
    return;
  if (d->in_array[d->depth]) {
    lua_rawseti(d->L, -2, d->next_idx[d->depth]++);
  } else {
    lua_rawset(d->L, -4); /* [tbl, order, key, value] */
    d->kidx[d->depth] = 0;
  }
}

/* Appends the path of the value being decoded (".messages[2].content",
 * the client's own field names) to buf, for error messages. Inside a span
 * it names the span. Reads the pending keys off the Lua stack. */
static void dec_path(json_dec_t *d, char *buf, size_t cap) {
  size_t len = strlen(buf);
  for (int lv = 1; lv <= d->depth && len + 1 < cap; lv++) {
    int w;
    if (d->in_array[lv]) {
      w = snprintf(buf + len, cap - len, "[%d]", d->next_idx[lv] - 1);
    } else if (d->kidx[lv]) {
      size_t kn;
      const char *k = lua_tolstring(d->L, d->kidx[lv], &kn);
      w = snprintf(buf + len, cap - len, "%s%.*s%s", len ? "." : "",
                   (int)(kn > 40 ? 40 : kn), k ? k : "", kn > 40 ? "..." : "");
    } else {
      break;
    }
    if (w < 0)
      break;
    len += (size_t)w;
    if (len >= cap)
      len = cap - 1;
  }
}

/* Pushes the weak container -> raw-text table, creating it on first use. */
static void json_raw_push(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, RAW_KEY);
  if (!lua_isnil(L, -1))
    return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 0);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, RAW_KEY);
}

/* Formats like the encoder; declared here so the decoder can tell which
 * number texts the encoder would reproduce by itself. */
static int fmt_number(char *buf, size_t cap, double v);

/* Pushes the raw-text table of the current container (creating it) and the
 * key of the member about to be stored. The container sits at -3 for an
 * object ([tbl, order, key]) and -1 for an array. */
static void dec_raw_slot(json_dec_t *d) {
  lua_State *L = d->L;
  int arr = d->in_array[d->depth];
  lua_pushvalue(L, arr ? -1 : -3);
  lua_rawget(L, d->raw);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, arr ? -2 : -4);
    lua_pushvalue(L, -2);
    lua_rawset(L, d->raw);
  }
  if (arr)
    lua_pushinteger(L, d->next_idx[d->depth]);
  else
    lua_pushvalue(L, -2);
}

/* Records the text of the number about to be stored. */
static void dec_note_raw(json_dec_t *d, const char *s, size_t n) {
  dec_raw_slot(d);
  lua_pushlstring(d->L, s, n);
  lua_rawset(d->L, -3);
  lua_pop(d->L, 1);
}

/* 1 when the encoder writes the escapes of the raw string token r (quotes
 * excluded) exactly as they are: \" \\ \b \f \n \r \t, and \u00XX
 * in upper case for the other control bytes. */
static int dec_escapes_canonical(const char *r, size_t n) {
  const char *p = r, *end = r + n;
  while ((p = memchr(p, '\\', (size_t)(end - p))) != NULL && p + 1 < end) {
    unsigned v = 0;
    if (p[1] != '/' && json_short_escape(p[1])) { /* the encoder writes / */
      p += 2;
      continue;
    }
    switch (p[1]) {
    case 'u':
      if (end - p < 6 || p[2] != '0' || p[3] != '0')
        return 0;
      for (int i = 4; i < 6; i++) {
        char c = p[i];
        if (c >= '0' && c <= '9')
          v = v * 16 + (unsigned)(c - '0');
        else if (c >= 'A' && c <= 'F')
          v = v * 16 + (unsigned)(c - 'A' + 10);
        else
          return 0;
      }
      if (v >= 0x20 || ascii_escape[v] != 'u')
        return 0;
      p += 6;
      continue;
    default:
      return 0;
    }
  }
  return 1;
}

/* Keeps {decoded s[0..n), the raw token in[from..end)} for the member
 * about to be stored, so the encoder writes it back as it was spelled. */
static void dec_note_raw_token(json_dec_t *d, const char *s, size_t n,
                               size_t from, size_t end) {
  dec_raw_slot(d);
  lua_createtable(d->L, 2, 0);
  lua_pushlstring(d->L, s, n);
  lua_rawseti(d->L, -2, 1);
  lua_pushlstring(d->L, d->in + from, end - from);
  lua_rawseti(d->L, -2, 2);
  lua_rawset(d->L, -3);
  lua_pop(d->L, 1);
}

/* A string with escapes was decoded into yajl's buffer: if the encoder
 * would write its escapes differently (\/, \u00e9, surrogate pairs), keep
 * {decoded, raw token} so an unchanged value is written as it came. */
static void dec_note_raw_string(json_dec_t *d, const unsigned char *s, size_t n,
                                size_t end) {
  const char *q;
  size_t i;
  /* Only non-string tokens (no quotes) lie between the last key or string
   * and this one, so its opening quote is the first quote after it. */
  if (end < 2 || end > d->inlen || d->last_end >= end || d->in[end - 1] != '"')
    return;
  q = memchr(d->in + d->last_end, '"', end - 1 - d->last_end);
  if (!q)
    return;
  i = (size_t)(q - d->in);
  if (dec_escapes_canonical(d->in + i + 1, end - 1 - (i + 1)))
    return;
  dec_note_raw_token(d, (const char *)s, n, i, end);
}

static int dec_null(void *ctx) {
  json_dec_t *d = ctx;
  if (d->skip)
    return 1;
  lua_pushlightuserdata(d->L, NULL);
  dec_store(d);
  return 1;
}

static int dec_bool(void *ctx, int b) {
  json_dec_t *d = ctx;
  if (d->skip)
    return 1;
  lua_pushboolean(d->L, b);
  dec_store(d);
  return 1;
}

/* Integers up to 18 digits are accumulated exactly in int64 and converted
 * once (correctly rounded; exact up to 2^53). Everything else goes through
 * strtod, which rounds correctly. */
static int dec_number(void *ctx, const char *s, size_t n) {
  json_dec_t *d = ctx;
  size_t i = 0;
  int neg = 0, simple = 1;
  double v;
  int canonical;
  if (d->skip)
    return 1;
  if (n > 0 && s[0] == '-') {
    neg = 1;
    i = 1;
  }
  if (n - i > 18)
    simple = 0;
  for (size_t j = i; simple && j < n; j++)
    if (s[j] < '0' || s[j] > '9')
      simple = 0;
  if (simple) {
    int64_t acc = 0;
    for (; i < n; i++)
      acc = acc * 10 + (s[i] - '0');
    v = (double)(neg ? -acc : acc);
    /* "-0" prints as 0; above 2^53 the double is not the integer. */
    canonical = !(neg && acc == 0) && fabs(v) < JSON_INT_LIMIT;
  } else {
    char small[64];
    char *tmp = n < sizeof(small) ? small : malloc(n + 1);
    if (!tmp) {
      d->err = "out of memory";
      return 0;
    }
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    v = strtod(tmp, NULL);
    if (tmp != small)
      free(tmp);
    if (!isfinite(v)) {
      d->err = "number out of range";
      return 0;
    }
    canonical = (size_t)fmt_number(small, sizeof(small), v) == n &&
                memcmp(small, s, n) == 0;
  }
  if (!canonical && d->depth > 0)
    dec_note_raw(d, s, n);
  lua_pushnumber(d->L, v);
  dec_store(d);
  return 1;
}

struct json_hbox;
static char *json_scratch(struct json_hbox *b, size_t n);

/* The value of the long string d->sub: its bytes in the input when it has
 * no escapes, else unescaped into the box's scratch buffer. */
static int dec_long_value(json_dec_t *d, const unsigned char **s, size_t *n) {
  const json_long_t *ls = d->sub;
  const char *p = ls->raw, *end = ls->raw + ls->rawlen;
  char *o;
  if (!ls->esc) {
    *s = (const unsigned char *)ls->raw;
    *n = ls->rawlen;
    return 1;
  }
  o = json_scratch(d->box, ls->rawlen);
  if (!o) {
    d->err = "out of memory";
    return 0;
  }
  *s = (const unsigned char *)o;
  /* json_long_check let through only the one-letter escapes, so the
   * backslashes are all there is to find */
  for (;;) {
    const char *c = memchr(p, '\\', (size_t)(end - p));
    if (!c)
      c = end;
    memcpy(o, p, (size_t)(c - p));
    o += c - p;
    if (c >= end)
      break;
    *o++ = json_short_escape(c[1]);
    p = c + 2;
  }
  *n = (size_t)(o - (const char *)*s);
  return 1;
}

/* dec_string for a long string (d->sub), with the raw spelling kept as
 * dec_note_raw_string keeps it for the strings yajl unescapes. */
static int dec_long_string(json_dec_t *d) {
  const json_long_t *ls = d->sub;
  const unsigned char *s;
  size_t n;
  if (!dec_long_value(d, &s, &n))
    return 0;
  if (ls->slash && d->depth > 0)
    dec_note_raw_token(d, (const char *)s, n, ls->quote, ls->end);
  d->last_end = ls->end;
  lua_pushlstring(d->L, (const char *)s, n);
  dec_store(d);
  return 1;
}

static int dec_string(void *ctx, const unsigned char *s, size_t n) {
  json_dec_t *d = ctx;
  size_t end;
  if (d->skip)
    return 1;
  if (d->sub)
    return dec_long_string(d);
  end = dec_at(d);
  /* yajl hands out a pointer into the input unless it had to unescape */
  if (d->depth > 0 &&
      ((const char *)s < d->in || (const char *)s > d->in + d->inlen))
    dec_note_raw_string(d, s, n, end);
  d->last_end = end;
  lua_pushlstring(d->L, (const char *)s, n);
  dec_store(d);
  return 1;
}

static int dec_open(json_dec_t *d, int is_array) {
  if (d->depth >= JSON_MAX_DEPTH) {
    d->err = "nesting too deep";
    return 0;
  }
  /* table + order + pending key + value + raw-text scratch */
  if (!lua_checkstack(d->L, 8)) {
    d->err = "nesting too deep for the Lua stack";
    return 0;
  }
  lua_createtable(d->L, 0, 0);
  if (is_array) {
    lua_getfield(d->L, LUA_REGISTRYINDEX, ARRAY_MT_KEY);
    lua_setmetatable(d->L, -2);
  } else {
    lua_createtable(d->L, 4, 0); /* the order metatable, set on close */
  }
  d->depth++;
  d->in_array[d->depth] = is_array;
  d->next_idx[d->depth] = 1;
  d->kidx[d->depth] = 0;
  return 1;
}

static int dec_close(json_dec_t *d) {
  /* An empty object has no order to keep and stays a bare table, which
   * Lua code may still fill as a sequence, as before. */
  if (!d->in_array[d->depth]) {
    if (d->next_idx[d->depth] > 1)
      lua_setmetatable(d->L, -2);
    else
      lua_pop(d->L, 1);
  }
  d->depth--;
  dec_store(d);
  return 1;
}

/* What the spec says of the value that starts now: SPEC_NONE, SPEC_CARRIED
 * or the node its members are looked up in. */
static int dec_value_spec(json_dec_t *d) {
  int n;
  if (!d->spec)
    return SPEC_NONE;
  if (d->depth == 0)
    return 0;
  if (!d->in_array[d->depth])
    return d->vspec;
  n = d->node[d->depth];
  return n >= 0 ? d->spec->nodes[n].elem : SPEC_NONE;
}

static int span_compact(const char *s, size_t n, char *out);
static char *json_scratch(struct json_hbox *b, size_t n);

/* The span [span_start, end) closed: pushes it as a span value. */
static int dec_push_span(json_dec_t *d, size_t end) {
  lua_State *L = d->L;
  const char *s = d->in + d->span_start;
  size_t n = end - d->span_start, m;
  if (end > d->inlen || end <= d->span_start ||
      (s[n - 1] != '}' && s[n - 1] != ']')) {
    d->err = "span bounds lost";
    return 0;
  }
  lua_createtable(L, 0, 0);
  lua_getfield(L, LUA_REGISTRYINDEX, SPAN_MT_KEY);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  m = (size_t)span_compact(s, n, NULL);
  if (m == n) {
    lua_pushlstring(L, s, n);
  } else {
    char *buf = json_scratch(d->box, n);
    if (!buf) {
      lua_pop(L, 2);
      d->err = "out of memory";
      return 0;
    }
    lua_pushlstring(L, buf, (size_t)span_compact(s, n, buf));
  }
  lua_rawset(L, d->raw);
  d->last_end = end;
  dec_store(d);
  return 1;
}

static int dec_start(json_dec_t *d, int is_array) {
  int vs;
  if (d->skip) {
    if (d->depth + ++d->skip > JSON_MAX_DEPTH) {
      d->err = "nesting too deep";
      return 0;
    }
    return 1;
  }
  vs = dec_value_spec(d);
  if (vs == SPEC_CARRIED) {
    size_t at = dec_at(d);
    if (at == 0 || at > d->inlen || d->in[at - 1] != (is_array ? '[' : '{')) {
      d->err = "span bounds lost";
      return 0;
    }
    d->span_start = at - 1;
    d->skip = 1;
    return 1;
  }
  if (!dec_open(d, is_array))
    return 0;
  d->node[d->depth] = vs;
  return 1;
}

static int dec_end(json_dec_t *d) {
  if (d->skip)
    return --d->skip ? 1 : dec_push_span(d, dec_at(d));
  return dec_close(d);
}

static int dec_start_map(void *ctx) {
  return dec_start(ctx, 0);
}

static int dec_end_map(void *ctx) {
  return dec_end(ctx);
}

static int dec_start_array(void *ctx) {
  return dec_start(ctx, 1);
}

static int dec_end_array(void *ctx) {
  return dec_end(ctx);
}

static int dec_key(void *ctx, const unsigned char *s, size_t n) {
  json_dec_t *d = ctx;
  lua_State *L = d->L;
  int nd;
  if (d->skip)
    return 1;
  if (d->sub && !dec_long_value(d, &s, &n))
    return 0;
  nd = d->spec ? d->node[d->depth] : SPEC_NONE;
  d->vspec = SPEC_NONE;
  if (nd >= 0) {
    for (int i = d->spec->nodes[nd].first; i >= 0; i = d->spec->keys[i].next) {
      const spec_key_t *k = &d->spec->keys[i];
      if (k->len == n && memcmp(d->spec->pool + k->off, s, n) == 0) {
        d->vspec = k->child;
        break;
      }
    }
  }
  d->last_end = dec_at(d);
  lua_pushlstring(L, (const char *)s, n);
  /* A repeated key keeps its first place (its last value wins). */
  lua_pushvalue(L, -1);
  lua_rawget(L, -4);
  if (lua_isnil(L, -1)) {
    lua_pushvalue(L, -2);
    lua_rawseti(L, -4, d->next_idx[d->depth]++);
  }
  lua_pop(L, 1);
  d->kidx[d->depth] = lua_gettop(L);
  return 1;
}

static const yajl_callbacks dec_callbacks = {
    dec_null,    dec_bool,        NULL,          NULL,
    dec_number,  dec_string,      dec_start_map, dec_key,
    dec_end_map, dec_start_array, dec_end_array,
};

/* Owns a yajl handle and the span scratch buffer so a Lua error raised
 * mid-parse (out of memory) still frees them through __gc. */
typedef struct json_hbox {
  yajl_handle h;
  char *scratch;
  size_t cap;
} json_hbox_t;

static int hbox_gc(lua_State *L) {
  json_hbox_t *b = lua_touserdata(L, 1);
  if (b->h) {
    yajl_free(b->h);
    b->h = NULL;
  }
  free(b->scratch);
  b->scratch = NULL;
  return 0;
}

/* A buffer of at least n bytes owned by b, or NULL. */
static char *json_scratch(struct json_hbox *b, size_t n) {
  if (cpx_buf_reserve(&b->scratch, 0, &b->cap, n) != 0)
    return NULL;
  return b->scratch;
}

/* Drops the whitespace outside strings of the valid JSON text s[0..n),
 * writing the result to out when out is not NULL; returns its length
 * (n when there is nothing to drop). Strings are skipped with memchr, so
 * the cost is in the structure, not the text. */
static int span_compact(const char *s, size_t n, char *out) {
  size_t i = 0, o = 0;
  while (i < n) {
    char c = s[i];
    if (c == '"') {
      const char *q = s + i + 1, *e;
      for (;;) {
        const char *b;
        e = memchr(q, '"', (size_t)(s + n - q));
        if (!e)
          e = s + n - 1; /* cannot happen in valid JSON */
        for (b = e; b > s + i + 1 && b[-1] == '\\'; b--)
          ;
        if (((e - b) & 1) == 0 || e == s + n - 1)
          break;
        q = e + 1;
      }
      if (out)
        memcpy(out + o, s + i, (size_t)(e - s) + 1 - i);
      o += (size_t)(e - s) + 1 - i;
      i = (size_t)(e - s) + 1;
      continue;
    }
    i++;
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      if (!out)
        return (int)o; /* something to drop: the caller compacts */
      continue;
    }
    if (out)
      out[o] = c;
    o++;
  }
  return (int)o;
}

/* Copies yajl's terse error ("parse error: invalid object key ...\n") into
 * err without its category prefix and newline. */
static void dec_yajl_reason(yajl_handle h, char *out, size_t outlen) {
  unsigned char *e = yajl_get_error(h, 0, NULL, 0);
  const char *s = (const char *)e;
  const char *colon = s ? strstr(s, "error: ") : NULL;
  size_t n;
  if (colon)
    s = colon + 7;
  if (!s)
    s = "invalid JSON";
  n = strcspn(s, "\n");
  while (n > 0 && (s[n - 1] == '.' || s[n - 1] == ' '))
    n--;
  snprintf(out, outlen, "%.*s", (int)n, s);
  if (e)
    yajl_free_error(h, e);
}

/* The UTF-8 sequence at p (a byte >= 0x80) as yajl's lexer checks it: the
 * lead byte gives the length, the rest must be continuation bytes (yajl
 * lets overlong forms and surrogates through; so must this, or the two
 * decodings would differ). Returns its length, or 0. */
static size_t json_long_utf8(const unsigned char *p, const unsigned char *end) {
  size_t len = (*p >> 5) == 0x6    ? 2
               : (*p >> 4) == 0xe  ? 3
               : (*p >> 3) == 0x1e ? 4
                                   : 0;
  if (!len || (size_t)(end - p) < len)
    return 0;
  for (size_t i = 1; i < len; i++)
    if ((p[i] >> 6) != 0x2)
      return 0;
  return len;
}

/* The first byte in [p, e) that is '"', '\\', below 0x20 or above 0x7f
 * (or e): sixteen bytes a compare with SSE2 (every x86-64 has it), else
 * eight with word_dirty. */
static const unsigned char *json_clean_run(const unsigned char *p,
                                           const unsigned char *e) {
#ifdef __SSE2__
  const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'),
                space = _mm_set1_epi8(0x20);
  while (e - p >= 16) {
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
    /* signed: 0x80..0xff are negative, so "< 0x20" catches them too */
    __m128i bad = _mm_or_si128(
        _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
        _mm_cmplt_epi8(v, space));
    int m = _mm_movemask_epi8(bad);
    if (m)
      return p + __builtin_ctz((unsigned)m);
    p += 16;
  }
#endif
  while (e - p >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    if (word_dirty(w))
      break;
    p += 8;
  }
  return p;
}

/* Checks the string whose opening quote is at q: 1 with *ls filled when
 * yajl would accept it and it has no \u escape, else 0 (yajl then lexes it
 * itself, and says what is wrong with it). */
static int json_long_check(const char *in, const char *q, const char *end,
                           json_long_t *ls) {
  const unsigned char *p = (const unsigned char *)q + 1,
                      *e = (const unsigned char *)end;
  int esc = 0, slash = 0;
  for (;;) {
    p = json_clean_run(p, e);
    if (p >= e)
      return 0; /* unterminated */
    if (*p == '"')
      break;
    if (*p == '\\') {
      if (e - p < 2 || !json_short_escape((char)p[1]))
        return 0; /* \u (and what JSON lacks) is yajl's */
      if (p[1] == '/')
        slash = 1; /* the encoder writes a plain / */
      esc = 1;
      p += 2;
    } else if (*p >= 0x80) {
      size_t k = json_long_utf8(p, e);
      if (!k)
        return 0;
      p += k;
    } else if (*p < 0x20) {
      return 0;
    } else {
      p++; /* a false alarm of word_dirty */
    }
  }
  ls->raw = q + 1;
  ls->rawlen = (size_t)((const char *)p - (q + 1));
  ls->quote = (size_t)(q - in);
  ls->end = (size_t)((const char *)p + 1 - in);
  ls->esc = esc;
  ls->slash = slash;
  return 1;
}

/* The next string at or after offset from that is at least min bytes long,
 * stands where yajl's previous token is complete (after { [ , or :) and
 * passes json_long_check. from must lie outside any string: then every
 * quote opens one (in valid JSON; in invalid JSON yajl fails and the
 * decode starts again without this). Returns 1 with *ls, or 0. */
static int json_long_next(const char *in, size_t n, size_t from, size_t min,
                          json_long_t *ls) {
  const char *p = in + from, *end = in + n;
  for (;;) {
    const char *q = memchr(p, '"', (size_t)(end - p)), *c;
    if (!q)
      return 0;
    if (json_long_check(in, q, end, ls)) {
      if (ls->end - ls->quote >= min) {
        const char *b = q;
        while (b > in && cpx_json_is_ws(b[-1]))
          b--;
        if (b > in &&
            (b[-1] == '{' || b[-1] == '[' || b[-1] == ',' || b[-1] == ':'))
          return 1;
      }
      p = in + ls->end;
      continue;
    }
    /* yajl's to check; go on after it */
    c = cpx_json_skip_string(q, end);
    if (!c)
      return 0;
    p = c;
  }
}

/* One pass of yajl over s. With fast set, the strings json_long_next
 * finds are not given to yajl: it gets the bytes before each, then the
 * placeholder "" while d->sub names the real one, then the bytes after.
 * yajl's per-byte string lexing is most of a decode of a long prompt; this
 * check runs a word at a time. Returns yajl's status; *at is the failing
 * offset. */
static yajl_status dec_run(json_dec_t *d, const char *s, size_t n, int fast,
                           size_t *at) {
  yajl_status st = yajl_status_ok;
  size_t pos = 0;
  json_long_t ls;
  while (fast && json_long_next(s, n, pos, cpx_json_long_min, &ls)) {
    d->base = pos;
    st = yajl_parse(d->h, (const unsigned char *)s + pos, ls.quote - pos);
    if (st != yajl_status_ok) {
      *at = dec_at(d);
      return st;
    }
    d->sub = &ls;
    st = yajl_parse(d->h, (const unsigned char *)"\"\"", 2);
    d->sub = NULL;
    if (st != yajl_status_ok) {
      *at = ls.end;
      return st;
    }
    pos = ls.end;
  }
  d->base = pos;
  st = yajl_parse(d->h, (const unsigned char *)s + pos, n - pos);
  /* bytes_consumed counts within the last call */
  *at = dec_at(d);
  if (st == yajl_status_ok) {
    st = yajl_complete_parse(d->h);
    *at = n;
  }
  return st;
}

/* Resets d for a pass over s. */
static void dec_reset(json_dec_t *d, const json_spec_t *spec, const char *s,
                      size_t n) {
  d->depth = 0;
  d->err = NULL;
  d->spec = spec;
  d->vspec = SPEC_NONE;
  d->skip = 0;
  d->span_start = 0;
  d->in = s;
  d->inlen = n;
  d->last_end = 0;
  d->base = 0;
  d->sub = NULL;
}

static int json_decode_spec(lua_State *L, const char *s, size_t n,
                            const json_spec_t *spec, char *err, size_t errlen) {
  json_dec_t d;
  json_hbox_t *box;
  yajl_status st;
  size_t at;
  int base = lua_gettop(L), fast = cpx_json_long_min > 0;
  char reason[160];

  d.L = L;
  dec_reset(&d, spec, s, n);
  if (!lua_checkstack(L, 8)) {
    snprintf(err, errlen, "json: Lua stack exhausted at byte 0");
    return CPX_EPARSE;
  }
  box = lua_newuserdata(L, sizeof(*box));
  box->h = NULL;
  box->scratch = NULL;
  box->cap = 0;
  d.box = box;
  if (luaL_newmetatable(L, "cpx.json.hbox")) {
    lua_pushcfunction(L, hbox_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  json_raw_push(L);
  d.raw = lua_gettop(L);
  for (;;) {
    box->h = yajl_alloc(&dec_callbacks, NULL, &d);
    d.h = box->h;
    if (!box->h) {
      lua_settop(L, base);
      snprintf(err, errlen, "json: out of memory at byte 0");
      return CPX_ENOMEM;
    }
    st = dec_run(&d, s, n, fast, &at);
    if (st == yajl_status_ok || !fast)
      break;
    /* A failure is reported as yajl alone finds it, from the start: the
     * same message and offset as before the long strings were split off. */
    yajl_free(box->h);
    box->h = NULL;
    lua_settop(L, d.raw);
    dec_reset(&d, spec, s, n);
    fast = 0;
  }
  if (st != yajl_status_ok) {
    if (d.err)
      snprintf(reason, sizeof(reason), "%s", d.err);
    else if (n == 0)
      snprintf(reason, sizeof(reason), "empty input");
    else
      dec_yajl_reason(box->h, reason, sizeof(reason));
    if (at > n)
      at = n;
    {
      char path[192] = "";
      dec_path(&d, path, sizeof(path));
      if (path[0])
        snprintf(err, errlen, "json: %s in %s at byte %zu", reason, path, at);
      else
        snprintf(err, errlen, "json: %s at byte %zu", reason, at);
    }
    yajl_free(box->h);
    box->h = NULL;
    free(box->scratch);
    box->scratch = NULL;
    lua_settop(L, base);
    return CPX_EPARSE;
  }
  yajl_free(box->h);
  box->h = NULL;
  free(box->scratch);
  box->scratch = NULL;
  /* stack: base, box, raw, value */
  lua_replace(L, base + 1);
  lua_settop(L, base + 1);
  return 0;
}

int cpx_json_decode_push(lua_State *L, const char *s, size_t n, char *err,
                         size_t errlen) {
  return json_decode_spec(L, s, n, NULL, err, errlen);
}

/* cpx.json.long_min([n]) -> the previous value: sets cpx_json_long_min
 * (the fuzz driver and specs compare decodes with and without). */
static int l_json_long_min(lua_State *L) {
  size_t prev = cpx_json_long_min;
  if (!lua_isnoneornil(L, 1)) {
    lua_Integer v = luaL_checkinteger(L, 1);
    luaL_argcheck(L, v >= 0, 1, "must be >= 0");
    cpx_json_long_min = (size_t)v;
  }
  lua_pushinteger(L, (lua_Integer)prev);
  return 1;
}

static int l_json_decode(lua_State *L) {
  size_t n;
  const char *s;
  char err[256];
  if (lua_type(L, 1) != LUA_TSTRING) {
    lua_pushnil(L);
    lua_pushfstring(L, "json: expected a string, got %s", luaL_typename(L, 1));
    return 2;
  }
  s = lua_tolstring(L, 1, &n);
  if (json_decode_spec(L, s, n,
                       lua_isnoneornil(L, 2) ? NULL
                                             : luaL_checkudata(L, 2, SPEC_MT),
                       err, sizeof(err)) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  return 1;
}

/* ---- JSON encode -------------------------------------------------------- */

/* Formats a finite number: integers below 2^53 without exponent or point,
 * others with the fewest of 15..17 significant digits that read back to
 * the same double. Returns the length. */
static int fmt_number(char *buf, size_t cap, double v) {
  int n;
  if (v == floor(v) && fabs(v) < JSON_INT_LIMIT)
    return snprintf(buf, cap, "%lld", (long long)v);
  for (int prec = 15; prec <= 17; prec++) {
    n = snprintf(buf, cap, "%.*g", prec, v);
    if (prec == 17 || strtod(buf, NULL) == v)
      break;
  }
  return n;
}

/* Growable output buffer. Owns p (malloc'd). */
typedef struct {
  char *p;
  size_t len, cap;
  int oom;
} jbuf_t;

static int jbuf_reserve(jbuf_t *b, size_t extra) {
  if (b->len + extra <= b->cap)
    return 0;
  if (cpx_buf_reserve(&b->p, b->len, &b->cap, extra) != 0) {
    b->oom = 1;
    return -1;
  }
  return 0;
}

static void jbuf_add(jbuf_t *b, const char *s, size_t n) {
  if (jbuf_reserve(b, n))
    return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

static void jbuf_addc(jbuf_t *b, char c) {
  if (b->len < b->cap || !jbuf_reserve(b, 1))
    b->p[b->len++] = c;
}

static void jbuf_print(void *ctx, const char *s, size_t n) {
  jbuf_add(ctx, s, n);
}

/* Encoder state. yajl_gen stops at 128 levels of nesting, below our 1000,
 * so the structure ([ , : ] and numbers) is written here and yajl_gen is
 * used for what needs care: string escaping and UTF-8 validation. It is
 * reset before each string so it always emits one top-level string, which
 * its print callback appends to out. */
typedef struct {
  lua_State *L;
  yajl_gen g;
  jbuf_t *out;
  int raw;         /* stack index of the RAW_KEY table */
  const char *err; /* static message or errbuf on failure */
  char errbuf[96];
} json_enc_t;

static int enc_value(json_enc_t *e, int idx, int depth);

static int enc_fail(json_enc_t *e, const char *msg) {
  e->err = msg;
  return -1;
}

static int enc_string(json_enc_t *e, const char *s, size_t n) {
  static const char hex[] = "0123456789ABCDEF";
  jbuf_t *out = e->out;
  size_t start = out->len, i = 0, len;
  char *p;
  yajl_gen_status st;
  /* ASCII strings (most of a prompt, most of code) are escaped here, byte
   * for byte as yajl would, sixteen clean bytes at a time: going through
   * yajl_gen_string cost a quarter of a translated request. A string with
   * any byte >= 0x80 goes to yajl, which validates its UTF-8. Room for the
   * rest of the string is kept reserved, so clean words copy unchecked;
   * the output position lives in locals (p, len) because stores through
   * out-> would have to be reloaded after every memcpy. */
  if (jbuf_reserve(out, n + 2))
    return 0; /* out->oom is reported by the caller */
  p = out->p;
  len = out->len;
  p[len++] = '"';
  while (i < n) {
    uint64_t x, y;
    unsigned char c;
    char t;
#ifdef __SSE2__
    /* One signed compare finds both the bytes below 0x20 and those from
     * 0x80 on (negative as signed chars). */
    while (i + 16 <= n) {
      __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
      __m128i bad =
          _mm_or_si128(_mm_cmplt_epi8(v, _mm_set1_epi8(0x20)),
                       _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
                                    _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))));
      if (_mm_movemask_epi8(bad))
        break;
      _mm_storeu_si128((__m128i *)(void *)(p + len), v);
      len += 16;
      i += 16;
    }
#endif
    while (i + 16 <= n) {
      memcpy(&x, s + i, 8);
      memcpy(&y, s + i + 8, 8);
      if (word_dirty(x) | word_dirty(y))
        break;
      memcpy(p + len, &x, 8);
      memcpy(p + len + 8, &y, 8);
      len += 16;
      i += 16;
    }
    if (i + 8 <= n) {
      memcpy(&x, s + i, 8);
      if (!word_dirty(x)) {
        memcpy(p + len, &x, 8);
        len += 8;
        i += 8;
        continue;
      }
    }
    if (i >= n)
      break;
    c = (unsigned char)s[i++];
    if (c >= 0x80) {
      out->len = start;
      goto via_yajl;
    }
    t = ascii_escape[c];
    if (!t) {
      p[len++] = (char)c;
      continue;
    }
    out->len = len;
    if (jbuf_reserve(out, 6 + (n - i) + 1))
      return 0;
    p = out->p;
    p[len++] = '\\';
    if (t != 'u') {
      p[len++] = t;
    } else {
      memcpy(p + len, "u00", 3);
      p[len + 3] = hex[c >> 4];
      p[len + 4] = hex[c & 15];
      len += 5;
    }
  }
  p[len++] = '"';
  out->len = len;
  return 0;
via_yajl:
  yajl_gen_reset(e->g, NULL);
  st = yajl_gen_string(e->g, (const unsigned char *)s, n);
  if (st == yajl_gen_status_ok)
    return 0;
  if (st == yajl_gen_invalid_string)
    return enc_fail(e, "invalid UTF-8 in string");
  return enc_fail(e, "generator error");
}

/* Decides how a table encodes: returns the array length n >= 0, or -1
 * for an object. */
static long enc_table_kind(lua_State *L, int idx) {
  long count = 0;
  double max = 0;
  if (lua_getmetatable(L, idx)) {
    int is_arr;
    lua_getfield(L, LUA_REGISTRYINDEX, ARRAY_MT_KEY);
    is_arr = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return is_arr ? (long)lua_objlen(L, idx) : -1;
  }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    double k;
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TNUMBER) {
      lua_pop(L, 1);
      return -1;
    }
    k = lua_tonumber(L, -1);
    if (k < 1 || k != floor(k) || k > 1e15) {
      lua_pop(L, 1);
      return -1;
    }
    if (k > max)
      max = k;
    count++;
  }
  return (count > 0 && (double)count == max) ? count : -1;
}

/* Writes the value at vidx, member kidx of a container whose raw-text
 * table is at sub (0: none): a number still equal to its input text is
 * written as that text, so 1.10 and 64-bit integers survive. */
static int enc_member(json_enc_t *e, int sub, int kidx, int vidx, int depth) {
  lua_State *L = e->L;
  if (sub && lua_type(L, vidx) == LUA_TSTRING) {
    lua_pushvalue(L, kidx);
    lua_rawget(L, sub);
    if (lua_istable(L, -1)) {
      lua_rawgeti(L, -1, 1);
      if (lua_rawequal(L, -1, vidx)) {
        size_t n;
        const char *t;
        lua_rawgeti(L, -2, 2);
        t = lua_tolstring(L, -1, &n);
        if (t)
          jbuf_add(e->out, t, n);
        lua_pop(L, 3);
        if (t)
          return 0;
      } else {
        lua_pop(L, 2);
      }
    } else {
      lua_pop(L, 1);
    }
  }
  if (sub && lua_type(L, vidx) == LUA_TNUMBER) {
    lua_pushvalue(L, kidx);
    lua_rawget(L, sub);
    if (lua_type(L, -1) == LUA_TSTRING) {
      size_t n;
      const char *t = lua_tolstring(L, -1, &n);
      if (strtod(t, NULL) == lua_tonumber(L, vidx)) {
        jbuf_add(e->out, t, n);
        lua_pop(L, 1);
        return 0;
      }
    }
    lua_pop(L, 1);
  }
  return enc_value(e, vidx, depth);
}

/* An object key as it is written; numbers are formatted into nb because
 * lua_tolstring on a key would break lua_next. */
typedef struct {
  const char *s;
  size_t n;
  double num;
  int isnum;
  char nb[32];
} enc_key_t;

static int enc_key_cmp(const void *pa, const void *pb) {
  const enc_key_t *a = pa, *b = pb;
  size_t n = a->n < b->n ? a->n : b->n;
  int c = memcmp(a->isnum ? a->nb : a->s, b->isnum ? b->nb : b->s, n);
  if (c)
    return c;
  return a->n < b->n ? -1 : a->n > b->n;
}

/* Reads the key at kidx into k. */
static int enc_key_read(json_enc_t *e, int kidx, enc_key_t *k) {
  lua_State *L = e->L;
  int kt = lua_type(L, kidx);
  if (kt == LUA_TSTRING) {
    k->s = lua_tolstring(L, kidx, &k->n);
    k->isnum = 0;
    return 0;
  }
  if (kt == LUA_TNUMBER) {
    k->num = lua_tonumber(L, kidx);
    if (!isfinite(k->num))
      return enc_fail(e, "cannot encode a non-finite number key");
    k->n = (size_t)fmt_number(k->nb, sizeof(k->nb), k->num);
    k->s = NULL;
    k->isnum = 1;
    return 0;
  }
  snprintf(e->errbuf, sizeof(e->errbuf), "cannot encode a %s key",
           lua_typename(L, kt));
  return enc_fail(e, e->errbuf);
}

/* Writes `key:value` for the key at kidx and the value at vidx. */
static int enc_pair(json_enc_t *e, int sub, int kidx, int vidx, int depth,
                    int first) {
  enc_key_t k;
  if (!first)
    jbuf_addc(e->out, ',');
  if (enc_key_read(e, kidx, &k))
    return -1;
  if (enc_string(e, k.isnum ? k.nb : k.s, k.n))
    return -1;
  jbuf_addc(e->out, ':');
  return enc_member(e, sub, kidx, vidx, depth);
}

/* Writes the members of the object at idx: first the keys its order
 * metatable (at mt, 0: none) recorded, in that order, skipping removed
 * ones; then every other key sorted by bytes, so the output never depends
 * on the hash seed. */
static int enc_object(json_enc_t *e, int idx, int mt, int sub, int depth) {
  lua_State *L = e->L;
  enc_key_t small[16], *keys = small;
  size_t olen = mt ? lua_objlen(L, mt) : 0, count = 0, nk = 0;
  int written = 0, set = 0;
  jbuf_addc(e->out, '{');
  for (size_t i = 1; i <= olen; i++) {
    lua_rawgeti(L, mt, (int)i);
    lua_pushvalue(L, -1);
    lua_rawget(L, idx);
    if (!lua_isnil(L, -1)) {
      int top = lua_gettop(L);
      if (enc_pair(e, sub, top - 1, top, depth, !written))
        return -1;
      written++;
    }
    lua_pop(L, 2);
  }
  if (!olen) {
    /* Built in Lua: most are small, collect without counting first. */
    int full = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      lua_pop(L, 1);
      if (nk == sizeof(small) / sizeof(small[0])) {
        lua_pop(L, 1);
        full = 1;
        break;
      }
      if (enc_key_read(e, lua_gettop(L), &keys[nk]))
        return -1;
      nk++;
    }
    if (!full)
      goto sorted;
    nk = 0;
  }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    count++;
  }
  if (count == (size_t)written) {
    jbuf_addc(e->out, '}');
    return 0;
  }
  /* Keys added since decoding (or a table built in Lua): collect, sort. */
  if (olen) {
    lua_createtable(L, 0, (int)olen);
    set = lua_gettop(L);
    for (size_t i = 1; i <= olen; i++) {
      lua_rawgeti(L, mt, (int)i);
      lua_pushboolean(L, 1);
      lua_rawset(L, set);
    }
  }
  if (count > sizeof(small) / sizeof(small[0]))
    keys = lua_newuserdata(L, count * sizeof(*keys)); /* freed by the GC */
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (set) {
      int dup;
      lua_pushvalue(L, -1);
      lua_rawget(L, set);
      dup = !lua_isnil(L, -1);
      lua_pop(L, 1);
      if (dup)
        continue;
    }
    if (enc_key_read(e, lua_gettop(L), &keys[nk]))
      return -1;
    nk++;
  }
sorted:
  qsort(keys, nk, sizeof(*keys), enc_key_cmp);
  for (size_t i = 0; i < nk; i++) {
    int top;
    if (keys[i].isnum)
      lua_pushnumber(L, keys[i].num);
    else
      lua_pushlstring(L, keys[i].s, keys[i].n);
    lua_pushvalue(L, -1);
    lua_rawget(L, idx);
    top = lua_gettop(L);
    if (enc_pair(e, sub, top - 1, top, depth, !written))
      return -1;
    written++;
    lua_pop(L, 2);
  }
  jbuf_addc(e->out, '}');
  return 0;
}

static int enc_table(json_enc_t *e, int idx, int depth) {
  lua_State *L = e->L;
  long n;
  int sub = 0, mt = 0, top = lua_gettop(L), rc;
  if (depth >= JSON_MAX_DEPTH)
    return enc_fail(e, "nesting too deep");
  if (!lua_checkstack(L, 12))
    return enc_fail(e, "nesting too deep for the Lua stack");
  lua_pushvalue(L, idx);
  lua_rawget(L, e->raw);
  if (lua_type(L, -1) == LUA_TSTRING) {
    /* a span: its bytes as they came (compacted) */
    size_t len;
    const char *t = lua_tolstring(L, -1, &len);
    jbuf_add(e->out, t, len);
    lua_settop(L, top);
    return 0;
  }
  if (lua_isnil(L, -1))
    lua_pop(L, 1);
  else
    sub = lua_gettop(L);
  n = enc_table_kind(L, idx);
  if (n >= 0) {
    jbuf_addc(e->out, '[');
    for (long i = 1; i <= n; i++) {
      int v;
      if (i > 1)
        jbuf_addc(e->out, ',');
      if (sub)
        lua_pushinteger(L, (lua_Integer)i);
      lua_rawgeti(L, idx, (int)i);
      v = lua_gettop(L);
      if (enc_member(e, sub, v - 1, v, depth + 1))
        return -1;
      lua_pop(L, sub ? 2 : 1);
    }
    jbuf_addc(e->out, ']');
    lua_settop(L, top);
    return 0;
  }
  if (lua_getmetatable(L, idx))
    mt = lua_gettop(L);
  rc = enc_object(e, idx, mt, sub, depth + 1);
  /* Drop sub, mt and the sort scratch: the caller pops by count. */
  lua_settop(L, top);
  return rc;
}

static int enc_value(json_enc_t *e, int idx, int depth) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    jbuf_add(e->out, "null", 4);
    return 0;
  case LUA_TBOOLEAN:
    if (lua_toboolean(L, idx))
      jbuf_add(e->out, "true", 4);
    else
      jbuf_add(e->out, "false", 5);
    return 0;
  case LUA_TNUMBER: {
    char nb[64];
    double v = lua_tonumber(L, idx);
    if (!isfinite(v))
      return enc_fail(e, "cannot encode NaN or infinity");
    jbuf_add(e->out, nb, (size_t)fmt_number(nb, sizeof(nb), v));
    return 0;
  }
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    return enc_string(e, s, n);
  }
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) {
      jbuf_add(e->out, "null", 4);
      return 0;
    }
    break;
  case LUA_TTABLE:
    return enc_table(e, idx, depth);
  default:
    break;
  }
  snprintf(e->errbuf, sizeof(e->errbuf), "cannot encode a %s",
           luaL_typename(L, idx));
  return enc_fail(e, e->errbuf);
}

/* A generator that prints into out. */
static yajl_gen enc_new_gen(jbuf_t *out) {
  yajl_gen g = yajl_gen_alloc(NULL);
  if (g) {
    yajl_gen_config(g, yajl_gen_validate_utf8, 1);
    yajl_gen_config(g, yajl_gen_print_callback, jbuf_print, (void *)out);
  }
  return g;
}

/* Runs the encoder, appending to out. The value must be at an absolute
 * index. On failure err gets the reason. */
static int enc_run(lua_State *L, yajl_gen g, jbuf_t *out, int idx, char *err,
                   size_t errlen) {
  json_enc_t e;
  int top = lua_gettop(L);
  int rc;
  e.L = L;
  e.g = g;
  e.out = out;
  e.err = NULL;
  json_raw_push(L);
  e.raw = lua_gettop(L);
  rc = enc_value(&e, idx, 0);
  lua_settop(L, top);
  if (!rc && out->oom)
    rc = enc_fail(&e, "out of memory");
  if (rc)
    snprintf(err, errlen, "json: %s", e.err ? e.err : "encode failed");
  return rc;
}

int cpx_json_encode_value(lua_State *L, int idx, char **out, size_t *outlen) {
  yajl_gen g;
  jbuf_t b = {NULL, 0, 0, 0};
  char err[128];
  if (idx < 0 && idx > LUA_REGISTRYINDEX)
    idx = lua_gettop(L) + idx + 1;
  *out = NULL;
  *outlen = 0;
  g = enc_new_gen(&b);
  if (!g)
    return CPX_ENOMEM;
  if (enc_run(L, g, &b, idx, err, sizeof(err)) || jbuf_reserve(&b, 1)) {
    int rc = b.oom ? CPX_ENOMEM : CPX_EINVAL;
    yajl_gen_free(g);
    free(b.p);
    return rc;
  }
  yajl_gen_free(g);
  b.p[b.len] = '\0';
  *out = b.p;
  *outlen = b.len;
  return 0;
}

/* The Lua-facing encoder reuses one generator and output buffer per module
 * instance, kept in a userdata upvalue that frees them on __gc. Encoding
 * never calls back into Lua (raw access only), so they cannot be
 * re-entered; a Lua error mid-encode (out of memory) only leaves stale
 * bytes that the next call discards. */
typedef struct {
  yajl_gen g;
  jbuf_t out;
} json_gbox_t;

static int gbox_gc(lua_State *L) {
  json_gbox_t *b = lua_touserdata(L, 1);
  if (b->g)
    yajl_gen_free(b->g);
  free(b->out.p);
  b->g = NULL;
  b->out.p = NULL;
  return 0;
}

static int l_json_encode(lua_State *L) {
  json_gbox_t *b = lua_touserdata(L, lua_upvalueindex(1));
  char err[128];
  int rc;
  lua_settop(L, 1);
  if (!b->g) {
    b->g = enc_new_gen(&b->out);
    if (!b->g)
      return luaL_error(L, "json: out of memory");
  }
  b->out.len = 0;
  b->out.oom = 0;
  rc = enc_run(L, b->g, &b->out, 1, err, sizeof(err));
  if (rc) {
    lua_pushnil(L);
    lua_pushstring(L, err);
  } else {
    lua_pushlstring(L, b->out.p ? b->out.p : "", b->out.len);
  }
  /* Do not keep a huge buffer alive between calls. */
  if (b->out.cap > (1u << 20)) {
    free(b->out.p);
    b->out.p = NULL;
    b->out.cap = 0;
  }
  b->out.len = 0;
  return rc ? 2 : 1;
}

static int l_json_array(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_createtable(L, 0, 0);
  } else {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
  }
  lua_getfield(L, LUA_REGISTRYINDEX, ARRAY_MT_KEY);
  lua_setmetatable(L, 1);
  return 1;
}

/* ---- spans: cpx.json.spec / cpx.json.raw ----------------------------------
 */

/* The child of node nd for key k[0..kn) (kn == (size_t)-1: array
 * elements), created as SPEC_NONE when absent; NULL when a limit is hit. */
static int *spec_child(json_spec_t *sp, int nd, const char *k, size_t kn) {
  spec_node_t *n = &sp->nodes[nd];
  spec_key_t *key;
  if (kn == (size_t)-1)
    return &n->elem;
  for (int i = n->first; i >= 0; i = sp->keys[i].next)
    if (sp->keys[i].len == kn && memcmp(sp->pool + sp->keys[i].off, k, kn) == 0)
      return &sp->keys[i].child;
  if (sp->nkeys == SPEC_MAX_KEYS || sp->used + kn > SPEC_POOL)
    return NULL;
  key = &sp->keys[sp->nkeys];
  key->next = n->first;
  n->first = sp->nkeys++;
  memcpy(sp->pool + sp->used, k, kn);
  key->off = (unsigned)sp->used;
  key->len = (unsigned)kn;
  key->child = SPEC_NONE;
  sp->used += kn;
  return &key->child;
}

/* Makes *slot a node (allocating one) and returns its index, -1 when full
 * or when the path already carries this point. */
static int spec_node_at(json_spec_t *sp, int *slot) {
  if (*slot >= 0)
    return *slot;
  if (*slot == SPEC_CARRIED || sp->nnodes == SPEC_MAX_NODES)
    return -1;
  sp->nodes[sp->nnodes].elem = SPEC_NONE;
  sp->nodes[sp->nnodes].first = -1;
  *slot = sp->nnodes;
  return sp->nnodes++;
}

/* Adds one path: members joined by '.', each followed by any number of
 * "[]" (the elements of an array), e.g. "messages[].content[].input". */
static const char *spec_add(json_spec_t *sp, const char *p, size_t n) {
  const char *end = p + n;
  int nd = 0, *slot = NULL;
  if (n == 0)
    return "empty path";
  while (p < end) {
    const char *q = p;
    while (q < end && *q != '.' && *q != '[')
      q++;
    if (q > p) {
      if (!(slot = spec_child(sp, nd, p, (size_t)(q - p))))
        return "too many keys";
    } else if (q == end || *q != '[') {
      return "empty member name";
    }
    while (q < end && *q == '[') {
      if (q + 1 >= end || q[1] != ']')
        return "'[' must be followed by ']'";
      if (slot && (nd = spec_node_at(sp, slot)) < 0)
        return "path below a carried path, or too many nodes";
      if (!(slot = spec_child(sp, nd, NULL, (size_t)-1)))
        return "too many keys";
      q += 2;
    }
    if (q < end) {
      if (*q != '.' || q + 1 == end)
        return "expected '.' and a member name";
      if ((nd = spec_node_at(sp, slot)) < 0)
        return "path below a carried path, or too many nodes";
      q++;
    }
    p = q;
  }
  if (*slot >= 0)
    return "path above another carried path";
  *slot = SPEC_CARRIED;
  return NULL;
}

/* cpx.json.spec({path, ...}) -> spec, for decode(s, spec). Misuse (not a
 * list of strings, a malformed path, limits) raises with the path. */
static int l_json_spec(lua_State *L) {
  json_spec_t *sp;
  size_t np;
  luaL_checktype(L, 1, LUA_TTABLE);
  np = lua_objlen(L, 1);
  sp = lua_newuserdata(L, sizeof(*sp));
  memset(sp, 0, sizeof(*sp));
  sp->nnodes = 1;
  sp->nodes[0].elem = SPEC_NONE;
  sp->nodes[0].first = -1;
  for (size_t i = 1; i <= np; i++) {
    size_t n;
    const char *p, *why;
    lua_rawgeti(L, 1, (int)i);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "json.spec: path %d is not a string", (int)i);
    p = lua_tolstring(L, -1, &n);
    if ((why = spec_add(sp, p, n)) != NULL)
      return luaL_error(L, "json.spec: path '%s': %s", p, why);
    lua_pop(L, 1);
  }
  luaL_getmetatable(L, SPEC_MT);
  lua_setmetatable(L, -2);
  return 1;
}

/* cpx.json.raw(text[, "object"]) -> span | nil, err: text (one JSON array
 * or object; only an object with "object") as a span, validated by yajl
 * and compacted, without building its Lua value: an OpenAI `arguments`
 * string becomes an Anthropic `input` or a Gemini `args` this way. */
static int l_json_raw(lua_State *L) {
  size_t n, i = 0, m;
  const char *s = luaL_checklstring(L, 1, &n);
  const char *want = luaL_optstring(L, 2, NULL);
  json_hbox_t *box;
  yajl_status st;
  if (want && strcmp(want, "object") != 0)
    return luaL_argerror(L, 2, "expected \"object\" or nothing");
  while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
    i++;
  if (i == n || (s[i] != '{' && (want || s[i] != '['))) {
    lua_pushnil(L);
    lua_pushstring(L, want ? "json: not an object"
                           : "json: not an object or array");
    return 2;
  }
  box = lua_newuserdata(L, sizeof(*box));
  memset(box, 0, sizeof(*box));
  luaL_getmetatable(L, "cpx.json.hbox");
  lua_setmetatable(L, -2);
  box->h = yajl_alloc(NULL, NULL, NULL); /* no callbacks: validate only */
  if (!box->h)
    return luaL_error(L, "json: out of memory");
  st = yajl_parse(box->h, (const unsigned char *)s, n);
  if (st == yajl_status_ok)
    st = yajl_complete_parse(box->h);
  if (st != yajl_status_ok) {
    char reason[160];
    dec_yajl_reason(box->h, reason, sizeof(reason));
    lua_pushnil(L);
    lua_pushfstring(L, "json: %s", reason);
    return 2;
  }
  yajl_free(box->h);
  box->h = NULL;
  lua_createtable(L, 0, 0);
  lua_getfield(L, LUA_REGISTRYINDEX, SPAN_MT_KEY);
  lua_setmetatable(L, -2);
  json_raw_push(L);
  lua_pushvalue(L, -2);
  m = (size_t)span_compact(s + i, n - i, NULL);
  if (m == n - i) {
    lua_pushlstring(L, s + i, n - i);
  } else {
    char *buf = json_scratch(box, n - i);
    if (!buf)
      return luaL_error(L, "json: out of memory");
    lua_pushlstring(L, buf, (size_t)span_compact(s + i, n - i, buf));
  }
  lua_rawset(L, -3);
  lua_pop(L, 1);
  return 1;
}

/* Pushes the json table. The array metatable is shared through the
 * registry so every module instance (and the YAML loader) agrees on it. */
static void open_json(lua_State *L) {
  json_gbox_t *b;
  lua_createtable(L, 0, 6);

  lua_getfield(L, LUA_REGISTRYINDEX, ARRAY_MT_KEY);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "array");
    lua_setfield(L, -2, "__jsontype");
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, ARRAY_MT_KEY);
  }
  lua_setfield(L, -2, "array_mt");

  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");

  /* For lib.json's copies, which carry the number texts to the copy. */
  json_raw_push(L);
  lua_setfield(L, -2, "raw_text");

  lua_getfield(L, LUA_REGISTRYINDEX, SPAN_MT_KEY);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "span");
    lua_setfield(L, -2, "__jsontype");
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, SPAN_MT_KEY);
  }
  lua_setfield(L, -2, "span_mt");
  luaL_newmetatable(L, SPEC_MT);
  lua_pop(L, 1);
  if (luaL_newmetatable(L, "cpx.json.hbox")) {
    lua_pushcfunction(L, hbox_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);

  lua_pushcfunction(L, l_json_decode);
  lua_setfield(L, -2, "decode");
  lua_pushcfunction(L, l_json_long_min);
  lua_setfield(L, -2, "long_min");
  lua_pushcfunction(L, l_json_spec);
  lua_setfield(L, -2, "spec");
  lua_pushcfunction(L, l_json_raw);
  lua_setfield(L, -2, "raw");

  b = lua_newuserdata(L, sizeof(*b));
  memset(b, 0, sizeof(*b));
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, gbox_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_pushcclosure(L, l_json_encode, 1);
  lua_setfield(L, -2, "encode");

  lua_pushcfunction(L, l_json_array);
  lua_setfield(L, -2, "array");
}

/* ---- base64, digests, random, clocks ------------------------------------ */

/* cpx.base64.encode(s[, url]): standard alphabet with padding, or with url
 * true the URL-safe alphabet without padding (JWT, PKCE). */
static int l_b64_encode(lua_State *L) {
  size_t n, outn;
  const char *s = luaL_checklstring(L, 1, &n);
  int url = lua_toboolean(L, 2);
  char *out;
  int w;
  if (n > ((size_t)INT32_MAX / 4) * 3 - 3)
    return luaL_error(L, "base64: input too large");
  outn = 4 * ((n + 2) / 3) + 1;
  out = malloc(outn);
  if (!out)
    return luaL_error(L, "base64: out of memory");
  w = EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)s, (int)n);
  if (url) {
    for (int i = 0; i < w; i++) {
      if (out[i] == '+')
        out[i] = '-';
      else if (out[i] == '/')
        out[i] = '_';
    }
    while (w > 0 && out[w - 1] == '=')
      w--;
  }
  lua_pushlstring(L, out, (size_t)w);
  free(out);
  return 1;
}

/* cpx.base64.decode(s): either alphabet, padding optional. */
static int l_b64_decode(lua_State *L) {
  size_t n, pad = 0, rem;
  const char *s = luaL_checklstring(L, 1, &n);
  char *tmp;
  unsigned char *out;
  int w;
  while (n > 0 && s[n - 1] == '=' && pad < 2) {
    n--;
    pad++;
  }
  rem = n % 4;
  if (rem == 1 || (pad && (n + pad) % 4 != 0) || n > (size_t)INT32_MAX - 4) {
    lua_pushnil(L);
    lua_pushliteral(L, "base64: invalid length");
    return 2;
  }
  tmp = malloc(n + 4);
  out = malloc(n / 4 * 3 + 3);
  if (!tmp || !out) {
    free(tmp);
    free(out);
    return luaL_error(L, "base64: out of memory");
  }
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '-')
      c = '+';
    else if (c == '_')
      c = '/';
    else if (c == '=' || c == ' ' || c == '\t' || c == '\r' || c == '\n')
      c = '!'; /* EVP_DecodeBlock would accept these inside the text */
    tmp[i] = c;
  }
  pad = rem ? 4 - rem : 0;
  memset(tmp + n, '=', pad);
  w = n + pad ? EVP_DecodeBlock(out, (unsigned char *)tmp, (int)(n + pad)) : 0;
  free(tmp);
  if (w < 0) {
    free(out);
    lua_pushnil(L);
    lua_pushliteral(L, "base64: invalid character");
    return 2;
  }
  /* EVP_DecodeBlock counts the padding as zero bytes. */
  lua_pushlstring(L, (const char *)out, (size_t)w - pad);
  free(out);
  return 1;
}

static void push_hex(lua_State *L, const unsigned char *d, size_t n) {
  static const char hx[] = "0123456789abcdef";
  char out[2 * EVP_MAX_MD_SIZE];
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = hx[d[i] >> 4];
    out[2 * i + 1] = hx[d[i] & 15];
  }
  lua_pushlstring(L, out, 2 * n);
}

static int do_digest(lua_State *L, const EVP_MD *alg, const char *name,
                     int hex) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (!EVP_Digest(s, n, md, &mdlen, alg, NULL))
    return luaL_error(L, "%s: OpenSSL failure", name);
  if (hex)
    push_hex(L, md, mdlen);
  else
    lua_pushlstring(L, (const char *)md, mdlen);
  return 1;
}

static int l_sha256(lua_State *L) {
  return do_digest(L, EVP_sha256(), "sha256", 0);
}

static int l_sha256_hex(lua_State *L) {
  return do_digest(L, EVP_sha256(), "sha256", 1);
}

/* SHA-1 only for name-based UUIDs (RFC 9562 version 5), which are defined
 * over it; never for anything that needs collision resistance. */
static int l_sha1(lua_State *L) {
  return do_digest(L, EVP_sha1(), "sha1", 0);
}

static int do_hmac(lua_State *L, int hex) {
  size_t kn, n;
  const char *k = luaL_checklstring(L, 1, &kn);
  const char *s = luaL_checklstring(L, 2, &n);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (kn > INT32_MAX ||
      !HMAC(EVP_sha256(), k, (int)kn, (const unsigned char *)s, n, md, &mdlen))
    return luaL_error(L, "hmac_sha256: OpenSSL failure");
  if (hex)
    push_hex(L, md, mdlen);
  else
    lua_pushlstring(L, (const char *)md, mdlen);
  return 1;
}

static int l_hmac_sha256(lua_State *L) {
  return do_hmac(L, 0);
}

static int l_hmac_sha256_hex(lua_State *L) {
  return do_hmac(L, 1);
}

/* UUIDs come from a per-thread pool of CSPRNG bytes, refilled 4 KiB at a
 * time: the same generator as one RAND_bytes call per id, and every byte
 * is used once, but one call per request cost about 25 us on a cold
 * request path (the record id of every request; 1.8 us warm) against
 * 0.1 us for a copy out of the pool. Threads do not share a pool, and the
 * process never forks after it has drawn from one. */
#define UUID_POOL 4096

int cpx_uuid_v4(char out[37]) {
  static _Thread_local unsigned char pool[UUID_POOL];
  static _Thread_local size_t left;
  unsigned char b[16];
  static const char hx[] = "0123456789abcdef";
  int o = 0;
  if (left < sizeof(b)) {
    if (RAND_bytes(pool, sizeof(pool)) != 1)
      return CPX_EIO;
    left = sizeof(pool);
  }
  memcpy(b, pool + sizeof(pool) - left, sizeof(b));
  /* wiped as it is taken: what is left in the pool is never handed out
   * twice, and what was handed out does not stay behind */
  OPENSSL_cleanse(pool + sizeof(pool) - left, sizeof(b));
  left -= sizeof(b);
  b[6] = (unsigned char)((b[6] & 0x0F) | 0x40); /* version 4 */
  b[8] = (unsigned char)((b[8] & 0x3F) | 0x80); /* RFC 4122 variant */
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10)
      out[o++] = '-';
    out[o++] = hx[b[i] >> 4];
    out[o++] = hx[b[i] & 15];
  }
  out[36] = '\0';
  return 0;
}

static int l_uuid(lua_State *L) {
  char out[37];
  if (cpx_uuid_v4(out) != 0)
    return luaL_error(L, "uuid: RAND_bytes failed");
  lua_pushlstring(L, out, 36);
  return 1;
}

#define RANDOM_BYTES_MAX (1 << 20)

static int l_random_bytes(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  unsigned char *b;
  if (n < 0 || n > RANDOM_BYTES_MAX)
    return luaL_argerror(L, 1, "must be 0..1048576");
  b = malloc((size_t)n + 1);
  if (!b)
    return luaL_error(L, "random_bytes: out of memory");
  if (n > 0 && RAND_bytes(b, (int)n) != 1) {
    free(b);
    return luaL_error(L, "random_bytes: RAND_bytes failed");
  }
  lua_pushlstring(L, (const char *)b, (size_t)n);
  free(b);
  return 1;
}

static int l_now(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
  return 1;
}

static int l_monotonic(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
  return 1;
}

/* ---- framers ------------------------------------------------------------ */

/* Userdata for cpx.sse.new / cpx.jsonarr.new. The parser owns its buffers;
 * __gc (or a failed feed) frees them. */
typedef struct {
  cpx_sse_t p;
  int err; /* sticky: last error code, 0 while usable */
  int freed;
} l_sse_t;

typedef struct {
  cpx_jsonarr_t p;
  int err;
  int freed;
} l_jsonarr_t;

/* Feed state: the Lua list being filled sits at index list on the stack. */
typedef struct {
  lua_State *L;
  int list;
  int n;
} l_feed_t;

static size_t check_max(lua_State *L, int idx) {
  lua_Number m = luaL_optnumber(L, idx, 0);
  if (m < 0 || m > (lua_Number)SIZE_MAX / 2)
    luaL_argerror(L, idx, "invalid size limit");
  return (size_t)m;
}

static int sse_push_event(void *ud, const cpx_sse_event_t *ev) {
  l_feed_t *f = ud;
  lua_State *L = f->L;
  lua_createtable(L, 0, 4);
  lua_pushlstring(L, ev->data.p, ev->data.n);
  lua_setfield(L, -2, "data");
  if (ev->event.n) {
    lua_pushlstring(L, ev->event.p, ev->event.n);
    lua_setfield(L, -2, "event");
  }
  if (ev->id.n) {
    lua_pushlstring(L, ev->id.p, ev->id.n);
    lua_setfield(L, -2, "id");
  }
  if (ev->retry >= 0) {
    lua_pushnumber(L, (lua_Number)ev->retry);
    lua_setfield(L, -2, "retry");
  }
  lua_rawseti(L, f->list, ++f->n);
  return 0;
}

static int push_feed_error(lua_State *L, const char *what, int rc) {
  lua_pushnil(L);
  if (rc == CPX_ELIMIT)
    lua_pushfstring(L, "%s: size limit exceeded", what);
  else if (rc == CPX_EPARSE)
    lua_pushfstring(L, "%s: malformed stream", what);
  else if (rc == CPX_ENOMEM)
    lua_pushfstring(L, "%s: out of memory", what);
  else
    lua_pushfstring(L, "%s: error %d", what, rc);
  return 2;
}

static int l_sse_new(lua_State *L) {
  size_t max = check_max(L, 1);
  l_sse_t *u = lua_newuserdata(L, sizeof(*u));
  cpx_sse_init(&u->p, max);
  u->err = 0;
  u->freed = 0;
  luaL_getmetatable(L, SSE_MT);
  lua_setmetatable(L, -2);
  return 1;
}

/* framer:feed(bytes) -> list of {data=, event=?, id=?, retry=?} | nil, err.
 * event, id and retry are absent when the stream did not set them (event
 * absent means the WHATWG default type "message"). */
static int l_sse_feed(lua_State *L) {
  l_sse_t *u = luaL_checkudata(L, 1, SSE_MT);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  l_feed_t f;
  int rc;
  if (u->err || u->freed)
    return push_feed_error(L, "sse", u->err ? u->err : CPX_ESTATE);
  lua_settop(L, 2);
  lua_newtable(L);
  f.L = L;
  f.list = 3;
  f.n = 0;
  rc = cpx_sse_feed(&u->p, s, n, sse_push_event, &f);
  if (rc) {
    u->err = rc;
    cpx_sse_free(&u->p);
    u->freed = 1;
    return push_feed_error(L, "sse", rc);
  }
  return 1;
}

static int l_sse_gc(lua_State *L) {
  l_sse_t *u = luaL_checkudata(L, 1, SSE_MT);
  if (!u->freed) {
    cpx_sse_free(&u->p);
    u->freed = 1;
  }
  return 0;
}

static int jsonarr_push_elem(void *ud, const char *elem, size_t len) {
  l_feed_t *f = ud;
  lua_pushlstring(f->L, elem, len);
  lua_rawseti(f->L, f->list, ++f->n);
  return 0;
}

static int l_jsonarr_new(lua_State *L) {
  size_t max = check_max(L, 1);
  l_jsonarr_t *u = lua_newuserdata(L, sizeof(*u));
  cpx_jsonarr_init(&u->p, max);
  u->err = 0;
  u->freed = 0;
  luaL_getmetatable(L, JSONARR_MT);
  lua_setmetatable(L, -2);
  return 1;
}

/* framer:feed(bytes) -> list of element strings | nil, err */
static int l_jsonarr_feed(lua_State *L) {
  l_jsonarr_t *u = luaL_checkudata(L, 1, JSONARR_MT);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  l_feed_t f;
  int rc;
  if (u->err || u->freed)
    return push_feed_error(L, "jsonarr", u->err ? u->err : CPX_ESTATE);
  lua_settop(L, 2);
  lua_newtable(L);
  f.L = L;
  f.list = 3;
  f.n = 0;
  rc = cpx_jsonarr_feed(&u->p, s, n, jsonarr_push_elem, &f);
  if (rc) {
    u->err = rc;
    cpx_jsonarr_free(&u->p);
    u->freed = 1;
    return push_feed_error(L, "jsonarr", rc);
  }
  return 1;
}

static int l_jsonarr_gc(lua_State *L) {
  l_jsonarr_t *u = luaL_checkudata(L, 1, JSONARR_MT);
  if (!u->freed) {
    cpx_jsonarr_free(&u->p);
    u->freed = 1;
  }
  return 0;
}

/* Registers a framer metatable (methods in __index) and pushes the
 * constructor table {new = ctor}. */
static void open_framer(lua_State *L, const char *mt, lua_CFunction ctor,
                        lua_CFunction feed, lua_CFunction gc) {
  if (luaL_newmetatable(L, mt)) {
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, feed);
    lua_setfield(L, -2, "feed");
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, ctor);
  lua_setfield(L, -2, "new");
}

/* ---- module ------------------------------------------------------------- */

int cpx_lua_util_open(lua_State *L) {
  luaL_checkstack(L, 8, "cpx_lua_util_open");
  lua_createtable(L, 0, 16);
  open_json(L);
  lua_setfield(L, -2, "json");

  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, l_b64_encode);
  lua_setfield(L, -2, "encode");
  lua_pushcfunction(L, l_b64_decode);
  lua_setfield(L, -2, "decode");
  lua_setfield(L, -2, "base64");

  lua_pushcfunction(L, l_sha256);
  lua_setfield(L, -2, "sha256");
  lua_pushcfunction(L, l_sha256_hex);
  lua_setfield(L, -2, "sha256_hex");
  lua_pushcfunction(L, l_sha1);
  lua_setfield(L, -2, "sha1");
  lua_pushcfunction(L, l_hmac_sha256);
  lua_setfield(L, -2, "hmac_sha256");
  lua_pushcfunction(L, l_hmac_sha256_hex);
  lua_setfield(L, -2, "hmac_sha256_hex");
  lua_pushcfunction(L, l_uuid);
  lua_setfield(L, -2, "uuid");
  lua_pushcfunction(L, l_random_bytes);
  lua_setfield(L, -2, "random_bytes");
  lua_pushcfunction(L, l_now);
  lua_setfield(L, -2, "now");
  lua_pushcfunction(L, l_monotonic);
  lua_setfield(L, -2, "monotonic");

  open_framer(L, SSE_MT, l_sse_new, l_sse_feed, l_sse_gc);
  lua_setfield(L, -2, "sse");
  open_framer(L, JSONARR_MT, l_jsonarr_new, l_jsonarr_feed, l_jsonarr_gc);
  lua_setfield(L, -2, "jsonarr");
  return 1;
}
