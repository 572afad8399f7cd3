/* cpx_yaml.c: YAML (libyaml events) to Lua tables (see cpx_yaml.h).
 *
 * Two phases. First, libyaml's parser events of the first document are kept
 * in an array, and for every node the index just past it is recorded, and
 * every alias is resolved to the index of the node its anchor names (as the
 * anchors stood at that point of the document). No Lua is involved, so a
 * syntax error costs nothing to unwind.
 *
 * Second, inside lua_cpcall, a recursive walk over that array builds the Lua
 * values. An alias is just a second walk over the anchored node's events, so
 * the Lua tables are never shared; every node such a walk creates counts
 * against a budget that stops "billion laughs" documents. Running under
 * lua_cpcall means an allocation error in Lua unwinds to us and the C memory
 * (events, path buffer) is freed on every path.
 */
#include "cpx_yaml.h"

#include "cpx.h"

#include <errno.h>
#include <lauxlib.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <yaml.h>

/* Nodes created by replaying aliases, across the whole document. A config
 * has a handful; the classic nine-level bomb wants a billion. */
#define YAML_MAX_ALIAS_NODES 10000
/* Anchors and alias uses in the document; each alias lookup scans the
 * anchors, so both are bounded to keep that scan cheap. */
#define YAML_MAX_ANCHORS 10000
/* Nesting of mappings and sequences. */
#define YAML_MAX_DEPTH 512
/* Config files are small; this only stops reading a wrong, huge file. */
#define YAML_MAX_FILE (16 * 1024 * 1024)

#define TAG_PREFIX "tag:yaml.org,2002:"
#define MERGE_KEY "<<"

/* Parse and conversion state for one load. Owns ev[] (each event deleted with
 * yaml_event_delete), end[], target[], anchors[] and path; all are freed by
 * yctx_free. The strings in anchors[] point into the events. */
typedef struct {
  const char *name; /* file name for messages */
  const char *src;  /* the input, to turn a reader error offset into a line */
  size_t srclen;
  yaml_event_t *ev;
  size_t nev, cap;
  size_t *end;    /* end[i]: index just past the node starting at i */
  size_t *target; /* target[i]: for an alias at i, its anchored node */
  struct {
    const char *name;
    size_t index;
  } * anchors;
  size_t nanchors, capanchors;
  size_t nalias;

  /* Conversion. */
  lua_State *L;
  char *path; /* the current key path, "a.b.1.c" */
  size_t plen, pcap;
  size_t alias_nodes; /* budget used so far */
  int replay;         /* > 0 while walking an alias's target */
  int merge;          /* > 0 while converting a << source */
  int depth;
  int mt_idx;    /* stack index of cpx.json.array_mt, or 0 */
  int lines_idx; /* stack index of the line table */
  char sep;      /* path separator: '.' for lines, '\x1f' for spans */
  int doc_ref, lines_ref;

  char *err;
  size_t errlen;
  int rc;
} yctx;

static int errorf(yctx *c, int code, size_t line, size_t col, const char *fmt,
                  ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (c->err != NULL && c->errlen > 0)
    snprintf(c->err, c->errlen, "%s:%zu:%zu: %s", c->name, line + 1, col + 1,
             msg);
  c->rc = code;
  return code;
}

static int errorf_at(yctx *c, int code, const yaml_event_t *e, const char *fmt,
                     ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  return errorf(c, code, e->start_mark.line, e->start_mark.column, "%s", msg);
}

static void yctx_free(yctx *c) {
  size_t i;
  for (i = 0; i < c->nev; i++)
    yaml_event_delete(&c->ev[i]);
  free(c->ev);
  free(c->end);
  free(c->target);
  free(c->anchors);
  free(c->path);
}

/* ---- phase 1: events ---------------------------------------------------- */

static int grow(yctx *c) {
  size_t ncap = c->cap ? c->cap * 2 : 256;
  void *p;
  if ((p = realloc(c->ev, ncap * sizeof(*c->ev))) == NULL)
    return CPX_ENOMEM;
  c->ev = p;
  if ((p = realloc(c->end, ncap * sizeof(*c->end))) == NULL)
    return CPX_ENOMEM;
  c->end = p;
  if ((p = realloc(c->target, ncap * sizeof(*c->target))) == NULL)
    return CPX_ENOMEM;
  c->target = p;
  c->cap = ncap;
  return 0;
}

static int parser_error(yctx *c, yaml_parser_t *p) {
  size_t line = p->problem_mark.line, col = p->problem_mark.column, i;
  const char *problem = p->problem ? p->problem : "syntax error";

  if (p->error == YAML_MEMORY_ERROR)
    return errorf(c, CPX_ENOMEM, 0, 0, "out of memory");
  if (p->error == YAML_READER_ERROR) {
    /* Reader errors carry a byte offset, not a mark. */
    line = col = 0;
    for (i = 0; i < p->problem_offset && i < c->srclen; i++) {
      if (c->src[i] == '\n') {
        line++;
        col = 0;
      } else {
        col++;
      }
    }
  }
  if (p->context != NULL)
    return errorf(c, CPX_EPARSE, line, col, "%s (%s at line %zu)", problem,
                  p->context, (size_t)p->context_mark.line + 1);
  return errorf(c, CPX_EPARSE, line, col, "%s", problem);
}

static const char *event_anchor(const yaml_event_t *e) {
  switch (e->type) {
  case YAML_SCALAR_EVENT:
    return (const char *)e->data.scalar.anchor;
  case YAML_SEQUENCE_START_EVENT:
    return (const char *)e->data.sequence_start.anchor;
  case YAML_MAPPING_START_EVENT:
    return (const char *)e->data.mapping_start.anchor;
  default:
    return NULL;
  }
}

/* Reads the events of the first document into c->ev. */
static int collect(yctx *c, const char *s, size_t n) {
  yaml_parser_t parser;
  yaml_event_t e;
  size_t open[YAML_MAX_DEPTH + 1];
  size_t nopen = 0, i, k;
  int rc = 0, in_doc = 0;
  const char *anchor;

  if (!yaml_parser_initialize(&parser))
    return errorf(c, CPX_ENOMEM, 0, 0, "out of memory");
  yaml_parser_set_input_string(&parser, (const unsigned char *)s, n);
  for (;;) {
    if (!yaml_parser_parse(&parser, &e)) {
      rc = parser_error(c, &parser);
      break;
    }
    if (e.type == YAML_STREAM_END_EVENT || e.type == YAML_DOCUMENT_END_EVENT) {
      yaml_event_delete(&e);
      break;
    }
    if (e.type == YAML_STREAM_START_EVENT ||
        e.type == YAML_DOCUMENT_START_EVENT) {
      in_doc = e.type == YAML_DOCUMENT_START_EVENT;
      yaml_event_delete(&e);
      continue;
    }
    if (!in_doc) { /* cannot happen with libyaml; be safe */
      yaml_event_delete(&e);
      continue;
    }
    if (c->nev == c->cap && (rc = grow(c)) != 0) {
      yaml_event_delete(&e);
      errorf(c, rc, 0, 0, "out of memory");
      break;
    }
    i = c->nev++;
    c->ev[i] = e; /* c->ev owns the event's strings from here */
    c->end[i] = i + 1;
    c->target[i] = 0;

    anchor = event_anchor(&c->ev[i]);
    if (anchor != NULL) {
      if (c->nanchors == YAML_MAX_ANCHORS) {
        rc = errorf_at(c, CPX_ELIMIT, &c->ev[i], "more than %d anchors",
                       YAML_MAX_ANCHORS);
        break;
      }
      if (c->nanchors == c->capanchors) {
        size_t ncap = c->capanchors ? c->capanchors * 2 : 16;
        void *p = realloc(c->anchors, ncap * sizeof(*c->anchors));
        if (p == NULL) {
          rc = errorf(c, CPX_ENOMEM, 0, 0, "out of memory");
          break;
        }
        c->anchors = p;
        c->capanchors = ncap;
      }
      c->anchors[c->nanchors].name = anchor;
      c->anchors[c->nanchors].index = i;
      c->nanchors++;
    }

    switch (c->ev[i].type) {
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
      if (nopen == YAML_MAX_DEPTH) {
        rc = errorf_at(c, CPX_ELIMIT, &c->ev[i],
                       "nesting deeper than %d levels", YAML_MAX_DEPTH);
        goto out;
      }
      open[nopen++] = i;
      break;
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
      if (nopen > 0) /* libyaml guarantees balance */
        c->end[open[--nopen]] = i + 1;
      break;
    case YAML_ALIAS_EVENT: {
      const char *name = (const char *)c->ev[i].data.alias.anchor;
      if (++c->nalias > YAML_MAX_ALIAS_NODES) {
        rc = errorf_at(c, CPX_ELIMIT, &c->ev[i], "more than %d aliases",
                       YAML_MAX_ALIAS_NODES);
        goto out;
      }
      /* The latest definition wins: anchors may be redefined. */
      for (k = c->nanchors; k > 0; k--)
        if (strcmp(c->anchors[k - 1].name, name) == 0)
          break;
      if (k == 0) {
        rc = errorf_at(c, CPX_EPARSE, &c->ev[i], "unknown anchor '%s'", name);
        goto out;
      }
      c->target[i] = c->anchors[k - 1].index;
      /* The anchored node is still open: it would contain itself. */
      if (c->end[c->target[i]] == c->target[i] + 1 &&
          c->ev[c->target[i]].type != YAML_SCALAR_EVENT) {
        rc = errorf_at(c, CPX_EPARSE, &c->ev[i],
                       "anchor '%s' value contains itself", name);
        goto out;
      }
      break;
    }
    default:
      break;
    }
  }
out:
  yaml_parser_delete(&parser);
  return rc;
}

/* ---- phase 2: Lua values ------------------------------------------------ */

/* Path stack: push appends ".seg" (or "seg" at the root) and returns the old
 * length for pop. */
static int path_push(yctx *c, const char *seg, size_t n, size_t *old) {
  size_t need = c->plen + n + 2;
  *old = c->plen;
  if (need > c->pcap) {
    size_t ncap = need * 2;
    char *p = realloc(c->path, ncap);
    if (p == NULL)
      return errorf(c, CPX_ENOMEM, 0, 0, "out of memory");
    c->path = p;
    c->pcap = ncap;
  }
  if (c->plen > 0)
    c->path[c->plen++] = c->sep ? c->sep : '.';
  memcpy(c->path + c->plen, seg, n);
  c->plen += n;
  return 0;
}

/* lines[path] = line (1-based). While a << source is converted the entries
 * are only filled in, since keys written in the mapping itself win. */
static void set_line(yctx *c, const yaml_event_t *e) {
  lua_State *L = c->L;
  lua_pushlstring(L, c->path, c->plen);
  if (c->merge > 0) {
    lua_pushvalue(L, -1);
    lua_rawget(L, c->lines_idx);
    if (!lua_isnil(L, -1)) {
      lua_pop(L, 2);
      return;
    }
    lua_pop(L, 1);
  }
  lua_pushinteger(L, (lua_Integer)e->start_mark.line + 1);
  lua_rawset(L, c->lines_idx);
}

static int is_digits(const char *s, const char *e, int base) {
  if (s == e)
    return 0;
  for (; s < e; s++) {
    int ch = (unsigned char)*s;
    if (base == 8    ? (ch < '0' || ch > '7')
        : base == 16 ? !((ch >= '0' && ch <= '9') ||
                         ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f'))
                     : (ch < '0' || ch > '9'))
      return 0;
  }
  return 1;
}

/* [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )? */
static int is_float(const char *s, const char *e) {
  const char *d;
  if (s < e && (*s == '-' || *s == '+'))
    s++;
  d = s;
  while (s < e && *s >= '0' && *s <= '9')
    s++;
  if (s < e && *s == '.') {
    const char *f = ++s;
    while (s < e && *s >= '0' && *s <= '9')
      s++;
    if (f == s && f - 1 == d) /* "." alone */
      return 0;
  } else if (s == d) {
    return 0;
  }
  if (s < e && (*s == 'e' || *s == 'E')) {
    s++;
    if (s < e && (*s == '-' || *s == '+'))
      s++;
    if (!is_digits(s, e, 10))
      return 0;
    return 1;
  }
  return s == e;
}

static int eq(const char *s, size_t n, const char *lit) {
  return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

enum { T_ANY, T_NULL, T_BOOL, T_INT, T_FLOAT };

/* Pushes a plain scalar typed by the YAML 1.2 core schema. `want` narrows
 * it for an explicit !!null/!!bool/!!int/!!float tag; returns -1 when the
 * text is not of that type. Numbers become Lua numbers (doubles): integers
 * beyond 2^53 lose precision, as in JSON. */
static int push_plain(lua_State *L, const char *s, size_t n, int want) {
  const char *e = s + n;
  char tmp[128];
  unsigned long long u;
  char *endp;

  if (want == T_ANY || want == T_NULL) {
    if (n == 0 || eq(s, n, "~") || eq(s, n, "null") || eq(s, n, "Null") ||
        eq(s, n, "NULL")) {
      lua_pushnil(L);
      return 0;
    }
  }
  if (want == T_ANY || want == T_BOOL) {
    if (eq(s, n, "true") || eq(s, n, "True") || eq(s, n, "TRUE")) {
      lua_pushboolean(L, 1);
      return 0;
    }
    if (eq(s, n, "false") || eq(s, n, "False") || eq(s, n, "FALSE")) {
      lua_pushboolean(L, 0);
      return 0;
    }
  }
  /* strtod and strtoull need a terminated string; numbers are short. */
  if (n < sizeof(tmp) && (want == T_ANY || want == T_INT || want == T_FLOAT)) {
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o') &&
        is_digits(s + 2, e, s[1] == 'x' ? 16 : 8) && want != T_FLOAT) {
      errno = 0;
      u = strtoull(tmp + 2, &endp, s[1] == 'x' ? 16 : 8);
      if (errno == 0) {
        lua_pushnumber(L, (lua_Number)u);
        return 0;
      }
    } else if (is_digits(s + (*s == '-' || *s == '+'), e, 10) ||
               (want != T_INT && is_float(s, e))) {
      /* The pattern was checked above, so strtod sees only plain decimal
       * text (the runtime never changes LC_NUMERIC from "C"). */
      lua_pushnumber(L, strtod(tmp, NULL));
      return 0;
    }
    if (want != T_INT) {
      const char *t = tmp + (*tmp == '-' || *tmp == '+');
      if (strcmp(t, ".inf") == 0 || strcmp(t, ".Inf") == 0 ||
          strcmp(t, ".INF") == 0) {
        lua_pushnumber(L, *tmp == '-' ? -HUGE_VAL : HUGE_VAL);
        return 0;
      }
      if (strcmp(tmp, ".nan") == 0 || strcmp(tmp, ".NaN") == 0 ||
          strcmp(tmp, ".NAN") == 0) {
        lua_pushnumber(L, NAN);
        return 0;
      }
    }
  }
  if (want != T_ANY)
    return -1;
  lua_pushlstring(L, s, n);
  return 0;
}

static int push_scalar(yctx *c, const yaml_event_t *e) {
  const char *s = (const char *)e->data.scalar.value;
  size_t n = e->data.scalar.length;
  const char *tag = (const char *)e->data.scalar.tag;
  int want = T_ANY;

  if (tag != NULL && strncmp(tag, TAG_PREFIX, strlen(TAG_PREFIX)) == 0) {
    const char *t = tag + strlen(TAG_PREFIX);
    if (strcmp(t, "str") == 0) {
      lua_pushlstring(c->L, s, n);
      return 0;
    }
    want = strcmp(t, "null") == 0    ? T_NULL
           : strcmp(t, "bool") == 0  ? T_BOOL
           : strcmp(t, "int") == 0   ? T_INT
           : strcmp(t, "float") == 0 ? T_FLOAT
                                     : T_ANY;
    if (want != T_ANY) {
      if (push_plain(c->L, s, n, want) != 0)
        return errorf_at(c, CPX_EPARSE, e, "cannot decode '%.*s' as !!%s",
                         (int)(n < 64 ? n : 64), s, t);
      /* !!float 1 is 1.0: Lua has one number type, nothing to do. */
      return 0;
    }
  }
  /* Quoted and block scalars, and the non-specific tag "!", are strings;
   * other tags are unknown to us and ignored. */
  if (e->data.scalar.style != YAML_PLAIN_SCALAR_STYLE ||
      (tag != NULL && strcmp(tag, "!") == 0)) {
    lua_pushlstring(c->L, s, n);
    return 0;
  }
  return push_plain(c->L, s, n, T_ANY);
}

static int convert(yctx *c, size_t i);

/* Follows aliases from i to the node they name; counts as replayed. */
static size_t resolve(yctx *c, size_t i) {
  while (c->ev[i].type == YAML_ALIAS_EVENT)
    i = c->target[i];
  return i;
}

/* Copies into the mapping at t every pair of the table on top that the
 * mapping has neither set explicitly (seen at s) nor got from an earlier
 * merge source, then pops that table. */
static void merge_into(lua_State *L, int t, int s) {
  lua_pushnil(L);
  while (lua_next(L, -2) != 0) {
    lua_pushvalue(L, -2);
    lua_rawget(L, s);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushvalue(L, -2);
      lua_rawget(L, t);
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, t);
        continue;
      }
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
}

/* The value of a << key: a mapping, or a sequence of mappings (earlier ones
 * win), each possibly an alias. Its keys land under the current path. */
static int do_merge(yctx *c, size_t vi, int t, int s) {
  const char *bad = "'<<' needs a mapping or a sequence of mappings";
  size_t r = resolve(c, vi), j;
  int rc, replaying = c->ev[vi].type == YAML_ALIAS_EVENT;

  if (c->ev[r].type != YAML_MAPPING_START_EVENT &&
      c->ev[r].type != YAML_SEQUENCE_START_EVENT)
    return errorf_at(c, CPX_EPARSE, &c->ev[vi], "%s", bad);
  c->merge++;
  if (c->ev[r].type == YAML_MAPPING_START_EVENT) {
    rc = convert(c, vi);
    if (rc == 0)
      merge_into(c->L, t, s);
    c->merge--;
    return rc;
  }
  /* A sequence reached through an alias: its own elements are replayed. */
  c->replay += replaying;
  rc = 0;
  for (j = r + 1; c->ev[j].type != YAML_SEQUENCE_END_EVENT; j = c->end[j]) {
    if (c->ev[resolve(c, j)].type != YAML_MAPPING_START_EVENT) {
      rc = errorf_at(c, CPX_EPARSE, &c->ev[j], "%s", bad);
      break;
    }
    if ((rc = convert(c, j)) != 0)
      break;
    merge_into(c->L, t, s);
  }
  c->replay -= replaying;
  c->merge--;
  return rc;
}

static int convert_mapping(yctx *c, size_t i) {
  lua_State *L = c->L;
  int t, s, rc;
  size_t j, ki, vi, old;
  const yaml_event_t *k;

  lua_newtable(L);
  t = lua_gettop(L);
  lua_newtable(L); /* key -> line of the keys written in this mapping */
  s = t + 1;
  for (j = i + 1; c->ev[j].type != YAML_MAPPING_END_EVENT; j = c->end[vi]) {
    ki = j;
    vi = c->end[ki];
    k = &c->ev[resolve(c, ki)];
    if (k->type != YAML_SCALAR_EVENT)
      return errorf_at(c, CPX_EPARSE, &c->ev[ki],
                       "mapping keys must be scalars");
    if (c->ev[ki].type == YAML_ALIAS_EVENT &&
        ++c->alias_nodes > YAML_MAX_ALIAS_NODES)
      return errorf_at(c, CPX_ELIMIT, &c->ev[ki],
                       "aliases expand to more than %d nodes",
                       YAML_MAX_ALIAS_NODES);
    lua_pushlstring(L, (const char *)k->data.scalar.value,
                    k->data.scalar.length);
    lua_pushvalue(L, -1);
    lua_rawget(L, s);
    if (!lua_isnil(L, -1))
      return errorf_at(
          c, CPX_EPARSE, &c->ev[ki], "duplicate key '%.*s' (first at line %d)",
          (int)(k->data.scalar.length < 64 ? k->data.scalar.length : 64),
          (const char *)k->data.scalar.value, (int)lua_tointeger(L, -1));
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_pushinteger(L, (lua_Integer)c->ev[ki].start_mark.line + 1);
    lua_rawset(L, s); /* stack: t s key */

    if (k->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
        eq((const char *)k->data.scalar.value, k->data.scalar.length,
           MERGE_KEY)) {
      lua_pop(L, 1);
      if ((rc = do_merge(c, vi, t, s)) != 0)
        return rc;
      continue;
    }

    if ((rc = path_push(c, (const char *)k->data.scalar.value,
                        k->data.scalar.length, &old)) != 0)
      return rc;
    set_line(c, &c->ev[ki]);
    if ((rc = convert(c, vi)) != 0)
      return rc;
    c->plen = old;
    /* An explicit null removes a merged value too: the mapping's own
     * keys win over << whatever their order. */
    lua_rawset(L, t);
  }
  lua_pop(L, 1);
  return 0;
}

static int convert_sequence(yctx *c, size_t i) {
  lua_State *L = c->L;
  size_t j, old;
  int n = 0, rc;
  char idx[24];

  lua_newtable(L);
  if (c->mt_idx != 0) {
    lua_pushvalue(L, c->mt_idx);
    lua_setmetatable(L, -2);
  }
  for (j = i + 1; c->ev[j].type != YAML_SEQUENCE_END_EVENT; j = c->end[j]) {
    n++;
    snprintf(idx, sizeof(idx), "%d", n);
    if ((rc = path_push(c, idx, strlen(idx), &old)) != 0)
      return rc;
    set_line(c, &c->ev[j]);
    if ((rc = convert(c, j)) != 0)
      return rc;
    c->plen = old;
    /* A hole would end the Lua sequence early: null is the sentinel. */
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushlightuserdata(L, NULL);
    }
    lua_rawseti(L, -2, n);
  }
  return 0;
}

/* Pushes the value of the node at i (nil for null). */
static int convert(yctx *c, size_t i) {
  const yaml_event_t *e = &c->ev[i];
  int rc;

  if (c->replay > 0 && ++c->alias_nodes > YAML_MAX_ALIAS_NODES)
    return errorf_at(c, CPX_ELIMIT, e, "aliases expand to more than %d nodes",
                     YAML_MAX_ALIAS_NODES);
  switch (e->type) {
  case YAML_ALIAS_EVENT:
    c->replay++;
    rc = convert(c, c->target[i]);
    c->replay--;
    return rc;
  case YAML_SCALAR_EVENT:
    return push_scalar(c, e);
  case YAML_SEQUENCE_START_EVENT:
  case YAML_MAPPING_START_EVENT:
    /* Aliases can nest deeper than the text did. */
    if (c->depth >= YAML_MAX_DEPTH || !lua_checkstack(c->L, 8))
      return errorf_at(c, CPX_ELIMIT, e, "nesting deeper than %d levels",
                       YAML_MAX_DEPTH);
    c->depth++;
    rc = e->type == YAML_MAPPING_START_EVENT ? convert_mapping(c, i)
                                             : convert_sequence(c, i);
    c->depth--;
    return rc;
  default:
    return errorf_at(c, CPX_EPARSE, e, "unexpected event");
  }
}

/* lua_cpcall body: [ud] -> refs in c->doc_ref and c->lines_ref. */
static int load_cp(lua_State *L) {
  yctx *c = lua_touserdata(L, 1);
  const yaml_event_t *root;

  c->L = L;
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.json.array_mt");
  if (lua_istable(L, -1)) {
    c->mt_idx = lua_gettop(L);
  } else {
    lua_pop(L, 1);
  }
  lua_newtable(L);
  c->lines_idx = lua_gettop(L);

  root = c->nev > 0 ? &c->ev[0] : NULL;
  if (root == NULL || (root->type == YAML_SCALAR_EVENT &&
                       root->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                       root->data.scalar.tag == NULL &&
                       (root->data.scalar.length == 0 ||
                        eq((const char *)root->data.scalar.value,
                           root->data.scalar.length, "~") ||
                        eq((const char *)root->data.scalar.value,
                           root->data.scalar.length, "null")))) {
    lua_newtable(L); /* empty file, comments only, or a null document */
  } else if (root->type == YAML_SCALAR_EVENT) {
    errorf_at(c, CPX_EPARSE, root,
              "the document is a scalar; expected a mapping");
    return 0;
  } else if (convert(c, 0) != 0) {
    return 0;
  }
  c->doc_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  c->lines_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

int cpx_yaml_load_string(lua_State *L, const char *name, const char *s,
                         size_t n, char *err, size_t errlen) {
  yctx c;
  int st;

  memset(&c, 0, sizeof(c));
  c.name = name ? name : "<string>";
  c.src = s;
  c.srclen = n;
  c.err = err;
  c.errlen = errlen;
  c.doc_ref = c.lines_ref = LUA_NOREF;
  if (err != NULL && errlen > 0)
    err[0] = '\0';

  if (collect(&c, s, n) != 0) {
    yctx_free(&c);
    return c.rc;
  }
  st = lua_cpcall(L, load_cp, &c);
  if (st != 0) {
    /* Only an allocation error can get here: load_cp raises nothing. */
    snprintf(err, errlen, "%s: %s", c.name,
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "Lua error");
    lua_pop(L, 1);
    yctx_free(&c);
    return st == LUA_ERRMEM ? CPX_ENOMEM : CPX_EPARSE;
  }
  yctx_free(&c);
  if (c.rc != 0)
    return c.rc;
  lua_rawgeti(L, LUA_REGISTRYINDEX, c.doc_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c.lines_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, c.doc_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, c.lines_ref);
  return 0;
}

int cpx_yaml_load_file(lua_State *L, const char *path, char *err,
                       size_t errlen) {
  FILE *f;
  struct stat st;
  char *buf;
  size_t n;
  int rc, e;

  f = fopen(path, "rb");
  if (f == NULL) {
    e = errno;
    snprintf(err, errlen, "%s: %s", path, strerror(e));
    return -e;
  }
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    fclose(f);
    snprintf(err, errlen, "%s: not a regular file", path);
    return CPX_EINVAL;
  }
  if (st.st_size > YAML_MAX_FILE) {
    fclose(f);
    snprintf(err, errlen, "%s: larger than %d bytes", path, YAML_MAX_FILE);
    return CPX_ELIMIT;
  }
  buf = malloc((size_t)st.st_size + 1);
  if (buf == NULL) {
    fclose(f);
    snprintf(err, errlen, "%s: out of memory", path);
    return CPX_ENOMEM;
  }
  n = fread(buf, 1, (size_t)st.st_size, f);
  if (ferror(f)) {
    e = errno;
    fclose(f);
    free(buf);
    snprintf(err, errlen, "%s: %s", path, strerror(e));
    return e ? -e : CPX_EIO;
  }
  fclose(f);
  rc = cpx_yaml_load_string(L, path, buf, n, err, errlen);
  free(buf);
  return rc;
}

/* ---- byte spans (for editing the text in place) ------------------------- */

/* The end of a node's text without the whitespace libyaml counts into it
 * (block scalars keep their line breaks, block collections end where the
 * next token starts). */
static size_t trim_end(const yctx *c, size_t s, size_t e) {
  while (e > s && (c->src[e - 1] == ' ' || c->src[e - 1] == '\t' ||
                   c->src[e - 1] == '\n' || c->src[e - 1] == '\r'))
    e--;
  return e;
}

static void set_int(lua_State *L, const char *k, size_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

/* Records the node at i (and its children) in the table at c->lines_idx;
 * *endb gets the end byte of its text. key is the key event of a mapping
 * value, or NULL. */
static int span_node(yctx *c, size_t i, const yaml_event_t *key, size_t *endb) {
  lua_State *L = c->L;
  const yaml_event_t *e = &c->ev[i];
  size_t s = e->start_mark.index, end = e->end_mark.index, j, old;
  size_t n = 0, ccol = 0, cend;
  const char *kind = "scalar";
  int flow = 0, empty = 0, rc;
  char idx[24];

  switch (e->type) {
  case YAML_SCALAR_EVENT:
    empty = e->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
            e->data.scalar.length == 0;
    break;
  case YAML_ALIAS_EVENT:
    kind = "alias";
    break;
  case YAML_MAPPING_START_EVENT:
    kind = "map";
    flow = e->data.mapping_start.style == YAML_FLOW_MAPPING_STYLE;
    for (j = i + 1; c->ev[j].type != YAML_MAPPING_END_EVENT;
         j = c->end[c->end[j]]) {
      const yaml_event_t *k = &c->ev[j];
      if (n++ == 0)
        ccol = k->start_mark.column;
      if (k->type == YAML_SCALAR_EVENT) {
        rc = path_push(c, (const char *)k->data.scalar.value,
                       k->data.scalar.length, &old);
      } else {
        rc = path_push(c, "?", 1, &old);
      }
      if (rc != 0)
        return rc;
      if ((rc = span_node(c, c->end[j], k, &cend)) != 0)
        return rc;
      c->plen = old;
      end = cend;
    }
    if (flow)
      end = c->ev[c->end[i] - 1].end_mark.index;
    break;
  case YAML_SEQUENCE_START_EVENT:
    kind = "seq";
    flow = e->data.sequence_start.style == YAML_FLOW_SEQUENCE_STYLE;
    for (j = i + 1; c->ev[j].type != YAML_SEQUENCE_END_EVENT; j = c->end[j]) {
      if (n++ == 0)
        ccol = c->ev[j].start_mark.column;
      snprintf(idx, sizeof(idx), "%zu", n);
      if ((rc = path_push(c, idx, strlen(idx), &old)) != 0)
        return rc;
      if ((rc = span_node(c, j, NULL, &cend)) != 0)
        return rc;
      c->plen = old;
      end = cend;
    }
    if (flow)
      end = c->ev[c->end[i] - 1].end_mark.index;
    break;
  default:
    return errorf_at(c, CPX_EPARSE, e, "unexpected event");
  }
  if (!empty)
    end = trim_end(c, s, end);
  *endb = end;
  if (!lua_checkstack(L, 4))
    return errorf(c, CPX_ENOMEM, 0, 0, "out of memory");
  lua_pushlstring(L, c->path, c->plen);
  lua_createtable(L, 0, 12);
  /* 1-based, inclusive, as string.sub takes them */
  set_int(L, "s", s + 1);
  set_int(L, "e", end);
  set_int(L, "line", e->start_mark.line + 1);
  set_int(L, "col", e->start_mark.column);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushboolean(L, flow);
  lua_setfield(L, -2, "flow");
  lua_pushboolean(L, empty);
  lua_setfield(L, -2, "empty");
  set_int(L, "n", n);
  if (n > 0)
    set_int(L, "ccol", ccol);
  /* An anchor or an explicit tag sits inside the node's span (and a block
   * collection with one starts on its key's line): editors leave such
   * nodes alone. */
  lua_pushboolean(L, event_anchor(e) != NULL);
  lua_setfield(L, -2, "anchor");
  lua_pushboolean(L, (e->type == YAML_SCALAR_EVENT && e->data.scalar.tag &&
                      !e->data.scalar.plain_implicit &&
                      !e->data.scalar.quoted_implicit) ||
                         (e->type == YAML_MAPPING_START_EVENT &&
                          !e->data.mapping_start.implicit) ||
                         (e->type == YAML_SEQUENCE_START_EVENT &&
                          !e->data.sequence_start.implicit));
  lua_setfield(L, -2, "tag");
  if (key) {
    set_int(L, "ks", key->start_mark.index + 1);
    set_int(L, "ke", key->end_mark.index);
    set_int(L, "kcol", key->start_mark.column);
    set_int(L, "kline", key->start_mark.line + 1);
  }
  lua_rawset(L, c->lines_idx);
  return 0;
}

static int spans_cp(lua_State *L) {
  yctx *c = lua_touserdata(L, 1);
  size_t endb;
  c->L = L;
  lua_newtable(L);
  c->lines_idx = lua_gettop(L);
  if (c->nev > 0 && c->ev[0].type == YAML_MAPPING_START_EVENT &&
      span_node(c, 0, NULL, &endb) != 0)
    return 0;
  c->lines_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

int cpx_yaml_spans(lua_State *L, const char *s, size_t n, char *err,
                   size_t errlen) {
  yctx c;
  int st;

  memset(&c, 0, sizeof(c));
  c.name = "<string>";
  c.src = s;
  c.srclen = n;
  c.err = err;
  c.errlen = errlen;
  c.sep = '\x1f';
  c.doc_ref = c.lines_ref = LUA_NOREF;
  if (collect(&c, s, n) != 0) {
    yctx_free(&c);
    return c.rc;
  }
  st = lua_cpcall(L, spans_cp, &c);
  yctx_free(&c);
  if (st != 0) {
    lua_pop(L, 1);
    snprintf(err, errlen, "out of memory");
    return CPX_ENOMEM;
  }
  if (c.rc != 0)
    return c.rc;
  lua_rawgeti(L, LUA_REGISTRYINDEX, c.lines_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, c.lines_ref);
  return 0;
}

/* cpx.yaml.decode(text[, name]) -> doc, lines | nil, err */
static int l_yaml_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  const char *name = luaL_optstring(L, 2, "config.yaml");
  char err[1024];
  if (cpx_yaml_load_string(L, name, s, n, err, sizeof(err)) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  return 2;
}

/* cpx.yaml.spans(text) -> { [path] = span } | nil, err; path segments are
 * joined with "\31" (keys may hold dots). */
static int l_yaml_spans(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  char err[1024];
  if (cpx_yaml_spans(L, s, n, err, sizeof(err)) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  return 1;
}

void cpx_yaml_lua_register(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, l_yaml_decode);
  lua_setfield(L, -2, "decode");
  lua_pushcfunction(L, l_yaml_spans);
  lua_setfield(L, -2, "spans");
  lua_setfield(L, -2, "yaml");
}
