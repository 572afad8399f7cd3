/* cpx_yaml_lua.c: YAML (runtime/core/cpx_yaml.c's checked events) to Lua
 * tables, and the byte spans of a document's nodes (see cpx_yaml_lua.h).
 *
 * A recursive walk over the event array builds the Lua values inside
 * lua_cpcall. An alias is just a second walk over the anchored node's
 * events, so the Lua tables are never shared; every node such a walk
 * creates counts against a budget that stops "billion laughs" documents.
 * Running under lua_cpcall means an allocation error in Lua unwinds to us
 * and the C memory (events, path buffer) is freed on every path.
 */
#include "cpx_yaml_lua.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <yaml.h>

#include "cpx.h"
#include "cpx_bindings.h"
#include "cpx_buf.h"
#include "cpx_yaml.h"

#define TAG_PREFIX "tag:yaml.org,2002:"
#define MERGE_KEY "<<"

/* Conversion state for one load: the parsed document (freed with
 * cpx_yaml_doc_free) and the key path buffer (freed by yctx_free). */
typedef struct {
  cpx_yaml_doc_t d;
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
} yctx;

static void yctx_free(yctx *c) {
  cpx_yaml_doc_free(&c->d);
  free(c->path);
  c->path = NULL;
}

/* ---- phase 2: Lua values ------------------------------------------------ */

/* Path stack: push appends ".seg" (or "seg" at the root) and returns the old
 * length for pop. */
static int path_push(yctx *c, const char *seg, size_t n, size_t *old) {
  *old = c->plen;
  if (cpx_buf_reserve(&c->path, c->plen, &c->pcap, n + 1) != 0)
    return cpx_yaml_errorf(&c->d, CPX_ENOMEM, 0, 0, "out of memory");
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
        return cpx_yaml_errorf_at(&c->d, CPX_EPARSE, e,
                                  "cannot decode '%.*s' as !!%s",
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
  while (c->d.ev[i].type == YAML_ALIAS_EVENT)
    i = c->d.target[i];
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
  int rc, replaying = c->d.ev[vi].type == YAML_ALIAS_EVENT;

  if (c->d.ev[r].type != YAML_MAPPING_START_EVENT &&
      c->d.ev[r].type != YAML_SEQUENCE_START_EVENT)
    return cpx_yaml_errorf_at(&c->d, CPX_EPARSE, &c->d.ev[vi], "%s", bad);
  c->merge++;
  if (c->d.ev[r].type == YAML_MAPPING_START_EVENT) {
    rc = convert(c, vi);
    if (rc == 0)
      merge_into(c->L, t, s);
    c->merge--;
    return rc;
  }
  /* A sequence reached through an alias: its own elements are replayed. */
  c->replay += replaying;
  rc = 0;
  for (j = r + 1; c->d.ev[j].type != YAML_SEQUENCE_END_EVENT; j = c->d.end[j]) {
    if (c->d.ev[resolve(c, j)].type != YAML_MAPPING_START_EVENT) {
      rc = cpx_yaml_errorf_at(&c->d, CPX_EPARSE, &c->d.ev[j], "%s", bad);
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
  for (j = i + 1; c->d.ev[j].type != YAML_MAPPING_END_EVENT; j = c->d.end[vi]) {
    ki = j;
    vi = c->d.end[ki];
    k = &c->d.ev[resolve(c, ki)];
    if (k->type != YAML_SCALAR_EVENT)
      return cpx_yaml_errorf_at(&c->d, CPX_EPARSE, &c->d.ev[ki],
                                "mapping keys must be scalars");
    if (c->d.ev[ki].type == YAML_ALIAS_EVENT &&
        ++c->alias_nodes > CPX_YAML_MAX_ALIAS_NODES)
      return cpx_yaml_errorf_at(&c->d, CPX_ELIMIT, &c->d.ev[ki],
                                "aliases expand to more than %d nodes",
                                CPX_YAML_MAX_ALIAS_NODES);
    lua_pushlstring(L, (const char *)k->data.scalar.value,
                    k->data.scalar.length);
    lua_pushvalue(L, -1);
    lua_rawget(L, s);
    if (!lua_isnil(L, -1))
      return cpx_yaml_errorf_at(
          &c->d, CPX_EPARSE, &c->d.ev[ki],
          "duplicate key '%.*s' (first at line %d)",
          (int)(k->data.scalar.length < 64 ? k->data.scalar.length : 64),
          (const char *)k->data.scalar.value, (int)lua_tointeger(L, -1));
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_pushinteger(L, (lua_Integer)c->d.ev[ki].start_mark.line + 1);
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
    set_line(c, &c->d.ev[ki]);
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
  for (j = i + 1; c->d.ev[j].type != YAML_SEQUENCE_END_EVENT; j = c->d.end[j]) {
    n++;
    snprintf(idx, sizeof(idx), "%d", n);
    if ((rc = path_push(c, idx, strlen(idx), &old)) != 0)
      return rc;
    set_line(c, &c->d.ev[j]);
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
  const yaml_event_t *e = &c->d.ev[i];
  int rc;

  if (c->replay > 0 && ++c->alias_nodes > CPX_YAML_MAX_ALIAS_NODES)
    return cpx_yaml_errorf_at(&c->d, CPX_ELIMIT, e,
                              "aliases expand to more than %d nodes",
                              CPX_YAML_MAX_ALIAS_NODES);
  switch (e->type) {
  case YAML_ALIAS_EVENT:
    c->replay++;
    rc = convert(c, c->d.target[i]);
    c->replay--;
    return rc;
  case YAML_SCALAR_EVENT:
    return push_scalar(c, e);
  case YAML_SEQUENCE_START_EVENT:
  case YAML_MAPPING_START_EVENT:
    /* Aliases can nest deeper than the text did. */
    if (c->depth >= CPX_YAML_MAX_DEPTH || !lua_checkstack(c->L, 8))
      return cpx_yaml_errorf_at(&c->d, CPX_ELIMIT, e,
                                "nesting deeper than %d levels",
                                CPX_YAML_MAX_DEPTH);
    c->depth++;
    rc = e->type == YAML_MAPPING_START_EVENT ? convert_mapping(c, i)
                                             : convert_sequence(c, i);
    c->depth--;
    return rc;
  default:
    return cpx_yaml_errorf_at(&c->d, CPX_EPARSE, e, "unexpected event");
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

  root = c->d.nev > 0 ? &c->d.ev[0] : NULL;
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
    cpx_yaml_errorf_at(&c->d, CPX_EPARSE, root,
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
  int st, rc;

  memset(&c, 0, sizeof(c));
  c.doc_ref = c.lines_ref = LUA_NOREF;
  if ((rc = cpx_yaml_parse(&c.d, name, s, n, err, errlen)) != 0)
    return rc;
  st = lua_cpcall(L, load_cp, &c);
  if (st != 0) {
    /* Only an allocation error can get here: load_cp raises nothing. */
    snprintf(err, errlen, "%s: %s", c.d.name,
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "Lua error");
    lua_pop(L, 1);
    yctx_free(&c);
    return st == LUA_ERRMEM ? CPX_ENOMEM : CPX_EPARSE;
  }
  yctx_free(&c);
  if (c.d.rc != 0)
    return c.d.rc;
  lua_rawgeti(L, LUA_REGISTRYINDEX, c.doc_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c.lines_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, c.doc_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, c.lines_ref);
  return 0;
}

int cpx_yaml_load_file(lua_State *L, const char *path, char *err,
                       size_t errlen) {
  char *buf;
  size_t n;
  int rc = cpx_yaml_read_file(path, &buf, &n, err, errlen);
  if (rc != 0)
    return rc;
  rc = cpx_yaml_load_string(L, path, buf, n, err, errlen);
  free(buf);
  return rc;
}

/* ---- byte spans (for editing the text in place) ------------------------- */

/* The end of a node's text without the whitespace libyaml counts into it
 * (block scalars keep their line breaks, block collections end where the
 * next token starts). */
static size_t trim_end(const yctx *c, size_t s, size_t e) {
  while (e > s && (c->d.src[e - 1] == ' ' || c->d.src[e - 1] == '\t' ||
                   c->d.src[e - 1] == '\n' || c->d.src[e - 1] == '\r'))
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
  const yaml_event_t *e = &c->d.ev[i];
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
    for (j = i + 1; c->d.ev[j].type != YAML_MAPPING_END_EVENT;
         j = c->d.end[c->d.end[j]]) {
      const yaml_event_t *k = &c->d.ev[j];
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
      if ((rc = span_node(c, c->d.end[j], k, &cend)) != 0)
        return rc;
      c->plen = old;
      end = cend;
    }
    if (flow)
      end = c->d.ev[c->d.end[i] - 1].end_mark.index;
    break;
  case YAML_SEQUENCE_START_EVENT:
    kind = "seq";
    flow = e->data.sequence_start.style == YAML_FLOW_SEQUENCE_STYLE;
    for (j = i + 1; c->d.ev[j].type != YAML_SEQUENCE_END_EVENT;
         j = c->d.end[j]) {
      if (n++ == 0)
        ccol = c->d.ev[j].start_mark.column;
      snprintf(idx, sizeof(idx), "%zu", n);
      if ((rc = path_push(c, idx, strlen(idx), &old)) != 0)
        return rc;
      if ((rc = span_node(c, j, NULL, &cend)) != 0)
        return rc;
      c->plen = old;
      end = cend;
    }
    if (flow)
      end = c->d.ev[c->d.end[i] - 1].end_mark.index;
    break;
  default:
    return cpx_yaml_errorf_at(&c->d, CPX_EPARSE, e, "unexpected event");
  }
  if (!empty)
    end = trim_end(c, s, end);
  *endb = end;
  if (!lua_checkstack(L, 4))
    return cpx_yaml_errorf(&c->d, CPX_ENOMEM, 0, 0, "out of memory");
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
  lua_pushboolean(L, cpx_yaml_event_anchor(e) != NULL);
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
  if (c->d.nev > 0 && c->d.ev[0].type == YAML_MAPPING_START_EVENT &&
      span_node(c, 0, NULL, &endb) != 0)
    return 0;
  c->lines_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

int cpx_yaml_spans(lua_State *L, const char *s, size_t n, char *err,
                   size_t errlen) {
  yctx c;
  int st, rc;

  memset(&c, 0, sizeof(c));
  c.sep = '\x1f';
  c.doc_ref = c.lines_ref = LUA_NOREF;
  if ((rc = cpx_yaml_parse(&c.d, "<string>", s, n, err, errlen)) != 0)
    return rc;
  st = lua_cpcall(L, spans_cp, &c);
  yctx_free(&c);
  if (st != 0) {
    lua_pop(L, 1);
    snprintf(err, errlen, "out of memory");
    return CPX_ENOMEM;
  }
  if (c.d.rc != 0)
    return c.d.rc;
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
  static const luaL_Reg fns[] = {
      {"decode", l_yaml_decode}, {"spans", l_yaml_spans}, {NULL, NULL}};
  cpx_lua_register_table(L, "yaml", fns);
}
