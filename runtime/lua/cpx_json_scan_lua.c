/* cpx_json_scan_lua.c: the Lua side of the passthrough scanner
 * (runtime/core/cpx_json_scan.c).
 *
 * Reads and edits top-level members without decoding the document:
 *
 *   cpx.json.peek(s, key...)       -> value... | nil, err
 *       string values are decoded, numbers and booleans converted, null is
 *       nil, objects and arrays are reported as true
 *   cpx.json.has(s, key...)        -> bool... | nil, err
 *       whether each key is a top-level member (null included): one pass
 *       where a plain search per word would stop at every quote
 *   cpx.json.set_string(s, key, v) -> new string with the top-level key's
 *       value replaced by the JSON string v (the key is added when absent)
 *   cpx.json.member(s, key)        -> the top-level member's value as
 *       written (JSON text) | nil (absent) | nil, err (malformed)
 *   cpx.json.first_event(fmt, event, data) -> "error" | "handshake" | false
 *       what an upstream stream's first event says (cpx_stream_event_kind)
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx.h"
#include "cpx_bindings.h"
#include "cpx_errbody.h"
#include "cpx_json_scan.h"
#include "cpx_lua_util.h"

typedef struct {
  lua_State *L;
  int nkeys;
  int first_key; /* stack index of the first key argument */
  cpx_json_member_t found[16];
  int have[16];
} peek_t;

static int peek_cb(void *ud, const cpx_json_member_t *e) {
  peek_t *pk = ud;
  for (int i = 0; i < pk->nkeys; i++) {
    size_t kn;
    const char *k = lua_tolstring(pk->L, pk->first_key + i, &kn);
    /* Duplicate keys: the last one wins, as in the full decoder. */
    if (kn == e->kn && memcmp(k, e->kp, kn) == 0) {
      pk->found[i] = *e;
      pk->have[i] = 1;
    }
  }
  return 0;
}

static void push_value(lua_State *L, const cpx_json_member_t *e) {
  char err[64];
  const char *v = e->vp;
  if (*v == '{' || *v == '[') {
    lua_pushboolean(L, 1);
    return;
  }
  if (*v == '"' && !memchr(v, '\\', e->vn)) {
    lua_pushlstring(L, v + 1, e->vn - 2);
    return;
  }
  /* Escaped strings, numbers and literals: the real decoder, on just this
   * value. */
  if (cpx_json_decode_push(L, v, e->vn, err, sizeof(err)) != 0) {
    lua_pushnil(L);
    return;
  }
  if (lua_type(L, -1) == LUA_TLIGHTUSERDATA) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
}

/* (doc, key...) on the Lua stack: scans doc's top-level members for the
 * keys into *pk. Returns 0, or 2 with nil, err pushed for a malformed doc. */
static int scan_keys(lua_State *L, const char *fn, peek_t *pk) {
  size_t n, at = 0;
  const char *s = luaL_checklstring(L, 1, &n);
  const char *close;

  memset(pk, 0, sizeof(*pk));
  pk->L = L;
  pk->first_key = 2;
  pk->nkeys = lua_gettop(L) - 1;
  if (pk->nkeys > 16)
    return luaL_error(L, "%s: at most 16 keys", fn);
  for (int i = 0; i < pk->nkeys; i++)
    luaL_checkstring(L, 2 + i);
  if (cpx_json_scan_top(s, n, peek_cb, pk, &at, &close) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "json: malformed document at byte %d", (int)at);
    return 2;
  }
  return 0;
}

static int l_peek(lua_State *L) {
  peek_t pk;
  int rc = scan_keys(L, "json.peek", &pk);

  if (rc)
    return rc;
  for (int i = 0; i < pk.nkeys; i++) {
    if (pk.have[i])
      push_value(L, &pk.found[i]);
    else
      lua_pushnil(L);
  }
  return pk.nkeys;
}

static int l_has(lua_State *L) {
  peek_t pk;
  int rc = scan_keys(L, "json.has", &pk);

  if (rc)
    return rc;
  for (int i = 0; i < pk.nkeys; i++)
    lua_pushboolean(L, pk.have[i]);
  return pk.nkeys;
}

typedef struct {
  const char *k;
  size_t kn;
  cpx_json_member_t found;
  int have;
} find_t;

static int find_cb(void *ud, const cpx_json_member_t *e) {
  find_t *f = ud;
  if (e->kn == f->kn && memcmp(e->kp, f->k, f->kn) == 0) {
    f->found = *e;
    f->have = 1;
  }
  return 0;
}

static int l_set_string(lua_State *L) {
  size_t n, at = 0, pre, post, total;
  const char *s = luaL_checklstring(L, 1, &n);
  const char *close, *tail;
  char *enc, *out, *o;
  size_t enclen;
  find_t f;

  memset(&f, 0, sizeof(f));
  f.k = luaL_checklstring(L, 2, &f.kn);
  luaL_checkstring(L, 3);
  if (cpx_json_scan_top(s, n, find_cb, &f, &at, &close) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "json: malformed document at byte %d", (int)at);
    return 2;
  }
  if (cpx_json_encode_value(L, 3, &enc, &enclen) != 0)
    return luaL_error(L, "json.set_string: cannot encode value");
  /* One allocation and one copy: luaL_Buffer would copy a 78 KB body byte
   * by byte through 8 KiB pieces. */
  if (f.have) {
    pre = (size_t)(f.found.vp - s);
    tail = f.found.vp + f.found.vn;
    post = n - (size_t)(tail - s);
    total = pre + enclen + post;
  } else {
    const char *brace = memchr(s, '{', n);
    const char *after = cpx_json_skip_ws(brace + 1, s + n);
    int empty = after < s + n && *after == '}';
    pre = (size_t)(brace + 1 - s);
    tail = brace + 1;
    post = n - pre;
    total = pre + 1 + f.kn + 2 + enclen + (empty ? 0 : 1) + post;
    out = malloc(total);
    if (!out) {
      free(enc);
      return luaL_error(L, "out of memory");
    }
    o = out;
    memcpy(o, s, pre);
    o += pre;
    *o++ = '"';
    memcpy(o, f.k, f.kn);
    o += f.kn;
    *o++ = '"';
    *o++ = ':';
    memcpy(o, enc, enclen);
    o += enclen;
    if (!empty)
      *o++ = ',';
    memcpy(o, tail, post);
    free(enc);
    lua_pushlstring(L, out, total);
    free(out);
    return 1;
  }
  out = malloc(total);
  if (!out) {
    free(enc);
    return luaL_error(L, "out of memory");
  }
  memcpy(out, s, pre);
  memcpy(out + pre, enc, enclen);
  memcpy(out + pre + enclen, tail, post);
  free(enc);
  lua_pushlstring(L, out, total);
  free(out);
  return 1;
}

/* ---- top-level reads and edits without a decode ---------------------------
 *
 *   cpx.json.top(s, {key, ...}) -> {key = value} | nil, err
 *       like peek, but objects and arrays are decoded too (with their key
 *       order and number texts), for the few members a fix-up reads; null
 *       is cpx.json.null, absent members are left out; a document whose
 *       top-level keys use escapes answers nil, "json: escaped key"
 *   cpx.json.edit(s, set, drop) -> new string | nil, err
 *       the top-level members named in the list drop removed, those in the
 *       table set replaced in place by their encoded value (the first
 *       occurrence; later duplicates dropped) or, when absent, appended in
 *       byte order of their keys -- where the encoder puts keys a decoded
 *       object did not have, so the result equals decode, edit, encode for
 *       compact input. Every other member is copied as it was written. A
 *       document whose top-level keys use escapes answers nil, "escaped
 *       key" (the caller decodes instead). */

typedef struct {
  cpx_json_member_t *v;
  size_t n, cap;
  int escaped; /* a top-level key has a backslash */
  int oom;
} members_t;

static int members_cb(void *ud, const cpx_json_member_t *e) {
  members_t *m = ud;
  if (m->n == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 32;
    cpx_json_member_t *nv = realloc(m->v, cap * sizeof(*nv));
    if (!nv) {
      m->oom = 1;
      return 1; /* stops the scan */
    }
    m->v = nv;
    m->cap = cap;
  }
  if (memchr(e->kp, '\\', e->kn))
    m->escaped = 1;
  m->v[m->n++] = *e;
  return 0;
}

/* Owns the members array of one top/edit call, so a Lua error (out of
 * memory while pushing) still frees it through __gc. */
typedef struct {
  members_t m;
  char *out;
} edit_box_t;

static int edit_box_gc(lua_State *L) {
  edit_box_t *b = lua_touserdata(L, 1);
  free(b->m.v);
  free(b->out);
  b->m.v = NULL;
  b->out = NULL;
  return 0;
}

/* Scans s (argument 1) into a new box pushed on the stack. Returns 0, or
 * 2 with nil, err pushed. */
static int members_scan(lua_State *L, const char *s, size_t n,
                        edit_box_t **out) {
  edit_box_t *b = lua_newuserdata(L, sizeof(*b));
  size_t at = 0;
  const char *close;
  int rc;
  memset(b, 0, sizeof(*b));
  if (luaL_newmetatable(L, "cpx.json.edit_box")) {
    lua_pushcfunction(L, edit_box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  *out = b;
  rc = cpx_json_scan_top(s, n, members_cb, &b->m, &at, &close);
  if (b->m.oom)
    return luaL_error(L, "json: out of memory");
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "json: malformed document at byte %d", (int)at);
    return 2;
  }
  return 0;
}

static int l_top(lua_State *L) {
  size_t n, nkeys;
  const char *s = luaL_checklstring(L, 1, &n);
  int rc;
  edit_box_t *b;
  char err[128];
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  nkeys = lua_objlen(L, 2);
  if ((rc = members_scan(L, s, n, &b)) != 0)
    return rc;
  if (b->m.escaped) {
    lua_pushnil(L);
    lua_pushliteral(L, "json: escaped key");
    return 2;
  }
  lua_createtable(L, 0, (int)nkeys); /* 4: the result */
  for (size_t i = 1; i <= nkeys; i++) {
    size_t kn;
    const char *k;
    const cpx_json_member_t *hit = NULL;
    lua_rawgeti(L, 2, (int)i);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "json.top: keys must be strings");
    k = lua_tolstring(L, -1, &kn);
    for (size_t j = 0; j < b->m.n; j++) /* the last duplicate wins */
      if (b->m.v[j].kn == kn && memcmp(b->m.v[j].kp, k, kn) == 0)
        hit = &b->m.v[j];
    if (!hit) {
      lua_pop(L, 1);
      continue;
    }
    if (cpx_json_decode_push(L, hit->vp, hit->vn, err, sizeof(err)) != 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "%s (member %s)", err, k);
      return 2;
    }
    lua_rawset(L, 4);
  }
  lua_settop(L, 4);
  return 1;
}

typedef struct {
  const char *k;
  size_t kn;
  char *enc; /* encoded value, malloc'd; NULL for a dropped key */
  size_t encn;
  int done;
} edit_key_t;

static int edit_key_cmp(const void *pa, const void *pb) {
  const edit_key_t *a = pa, *b = pb;
  size_t n = a->kn < b->kn ? a->kn : b->kn;
  int c = memcmp(a->k, b->k, n);
  if (c)
    return c;
  return a->kn < b->kn ? -1 : a->kn > b->kn;
}

static int l_edit(lua_State *L) {
  size_t n, nk = 0, total, o = 0;
  const char *s = luaL_checklstring(L, 1, &n);
  edit_box_t *b;
  edit_key_t *keys;
  int rc, written = 0;
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!lua_isnoneornil(L, 3))
    luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  if ((rc = members_scan(L, s, n, &b)) != 0)
    return rc;
  if (b->m.escaped) {
    lua_pushnil(L);
    lua_pushliteral(L, "json: escaped key");
    return 2;
  }
  /* count the edits: set's keys, then drop's */
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    size_t kn;
    const char *k;
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "json.edit: set's keys must be strings");
    /* written without escaping: plain member names only */
    k = lua_tolstring(L, -1, &kn);
    for (size_t i = 0; i < kn; i++)
      if (k[i] == '"' || k[i] == '\\' || (unsigned char)k[i] < 0x20)
        return luaL_error(L, "json.edit: key '%s' needs escaping", k);
    nk++;
  }
  if (!lua_isnil(L, 3))
    nk += lua_objlen(L, 3);
  keys = lua_newuserdata(L, (nk ? nk : 1) * sizeof(*keys)); /* GC frees */
  memset(keys, 0, (nk ? nk : 1) * sizeof(*keys));
  nk = 0;
  total = n + 2;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    edit_key_t *k = &keys[nk++];
    k->k = lua_tolstring(L, -2, &k->kn);
    if (cpx_json_encode_value(L, -1, &k->enc, &k->encn) != 0) {
      for (size_t i = 0; i < nk - 1; i++)
        free(keys[i].enc);
      lua_pushnil(L);
      lua_pushfstring(L, "json.edit: cannot encode the value of '%s'", k->k);
      return 2;
    }
    total += k->kn + k->encn + 4;
    lua_pop(L, 1);
  }
  if (!lua_isnil(L, 3)) {
    size_t nd = lua_objlen(L, 3);
    for (size_t i = 1; i <= nd; i++) {
      edit_key_t *k = &keys[nk];
      lua_rawgeti(L, 3, (int)i);
      if (lua_type(L, -1) != LUA_TSTRING) {
        for (size_t j = 0; j < nk; j++)
          free(keys[j].enc);
        return luaL_error(L, "json.edit: drop must list strings");
      }
      k->k = lua_tostring(L, -1); /* anchored by the drop table */
      k->kn = lua_objlen(L, -1);
      lua_pop(L, 1);
      nk++;
    }
  }
  qsort(keys, nk, sizeof(*keys), edit_key_cmp);
  b->out = malloc(total);
  if (!b->out) {
    for (size_t j = 0; j < nk; j++)
      free(keys[j].enc);
    return luaL_error(L, "json.edit: out of memory");
  }
  b->out[o++] = '{';
  for (size_t j = 0; j < b->m.n; j++) {
    const cpx_json_member_t *e = &b->m.v[j];
    edit_key_t probe = {e->kp, e->kn, NULL, 0, 0}, *k;
    k = nk ? bsearch(&probe, keys, nk, sizeof(*keys), edit_key_cmp) : NULL;
    if (k) {
      /* a key both set and dropped is set: take the entry with a value */
      while (k > keys && edit_key_cmp(k - 1, &probe) == 0)
        k--;
      for (edit_key_t *q = k; q < keys + nk && edit_key_cmp(q, &probe) == 0;
           q++)
        if (q->enc)
          k = q;
      if (!k->enc || k->done) {
        k->done = 1;
        continue;
      }
      k->done = 1;
      if (written++)
        b->out[o++] = ',';
      memcpy(b->out + o, e->kp - 1, e->kn + 2);
      o += e->kn + 2;
      b->out[o++] = ':';
      memcpy(b->out + o, k->enc, k->encn);
      o += k->encn;
      continue;
    }
    if (written++)
      b->out[o++] = ',';
    memcpy(b->out + o, e->kp - 1, e->kn + 2);
    o += e->kn + 2;
    b->out[o++] = ':';
    memcpy(b->out + o, e->vp, e->vn);
    o += e->vn;
  }
  for (size_t j = 0; j < nk; j++) {
    edit_key_t *k = &keys[j];
    if (k->enc && !k->done) {
      if (written++)
        b->out[o++] = ',';
      b->out[o++] = '"';
      memcpy(b->out + o, k->k, k->kn); /* set's keys are plain (no escapes) */
      o += k->kn;
      b->out[o++] = '"';
      b->out[o++] = ':';
      memcpy(b->out + o, k->enc, k->encn);
      o += k->encn;
    }
  }
  b->out[o++] = '}';
  for (size_t j = 0; j < nk; j++)
    free(keys[j].enc);
  lua_pushlstring(L, b->out, o);
  free(b->out);
  b->out = NULL;
  return 1;
}

/* The raw text of one member: a record's usage object is decoded alone,
 * not the whole answer around it. */
static int l_member(lua_State *L) {
  size_t n, at = 0;
  const char *s = luaL_checklstring(L, 1, &n);
  const char *close;
  find_t f;

  memset(&f, 0, sizeof(f));
  f.k = luaL_checklstring(L, 2, &f.kn);
  if (cpx_json_scan_top(s, n, find_cb, &f, &at, &close) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "json: malformed document at byte %d", (int)at);
    return 2;
  }
  if (!f.have) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlstring(L, f.found.vp, f.found.vn);
  return 1;
}

static int l_first_event(lua_State *L) {
  size_t fn, en, dn;
  const char *f = luaL_checklstring(L, 1, &fn);
  const char *e = luaL_optlstring(L, 2, "", &en);
  const char *d = luaL_optlstring(L, 3, "", &dn);
  int fmt = cpx_fmt_parse(f, fn);
  switch (cpx_stream_event_kind(fmt < 0 ? CPX_FMT_OPENAI_CHAT : fmt, e, en, d,
                                dn)) {
  case CPX_EV_ERROR:
    lua_pushliteral(L, "error");
    break;
  case CPX_EV_HANDSHAKE:
    lua_pushliteral(L, "handshake");
    break;
  default:
    lua_pushboolean(L, 0);
  }
  return 1;
}

/* Adds peek, has and set_string to the cpx.json table of the cpx table at the
 * top of the stack. */
void cpx_json_scan_lua_register(lua_State *L) {
  lua_getfield(L, -1, "json");
  lua_pushcfunction(L, l_peek);
  lua_setfield(L, -2, "peek");
  lua_pushcfunction(L, l_set_string);
  lua_setfield(L, -2, "set_string");
  lua_pushcfunction(L, l_has);
  lua_setfield(L, -2, "has");
  lua_pushcfunction(L, l_top);
  lua_setfield(L, -2, "top");
  lua_pushcfunction(L, l_edit);
  lua_setfield(L, -2, "edit");
  lua_pushcfunction(L, l_member);
  lua_setfield(L, -2, "member");
  lua_pushcfunction(L, l_first_event);
  lua_setfield(L, -2, "first_event");
  lua_pop(L, 1);
}
