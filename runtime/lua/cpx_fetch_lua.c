/* cpx_fetch_lua.c: cpx.fetch and the fetch object (status, headers, body,
 * peek, close): upstream transfers started from a request's or a task's
 * coroutine, and the events that resume it.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx_fetch_opts.h"
#include "cpx_lua_int.h"

/* Reads a header table at idx: { name = value | {values...} } or an array
 * of {name, value}. The strings stay owned by Lua (the table must stay on
 * the stack while the result is used). Returns the count or -1. */
int cpx__read_headers(lua_State *L, int idx, cpx_header_t *out, int max) {
  int n = 0;
  if (lua_isnoneornil(L, idx))
    return 0;
  if (!lua_istable(L, idx))
    return -1;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
      if (n < max) {
        out[n].name.p = lua_tolstring(L, -2, &out[n].name.n);
        out[n].value.p = lua_tolstring(L, -1, &out[n].value.n);
        n++;
      }
    } else if (lua_type(L, -1) == LUA_TTABLE) {
      int len = (int)lua_objlen(L, -1);
      if (lua_type(L, -2) == LUA_TSTRING) {
        for (int i = 1; i <= len && n < max; i++) {
          lua_rawgeti(L, -1, i);
          if (lua_type(L, -1) == LUA_TSTRING) {
            out[n].name.p = lua_tolstring(L, -3, &out[n].name.n);
            out[n].value.p = lua_tolstring(L, -1, &out[n].value.n);
            n++;
          }
          lua_pop(L, 1); /* the string stays referenced by the table */
        }
      } else if (len == 2 && n < max) {
        lua_rawgeti(L, -1, 1);
        lua_rawgeti(L, -2, 2);
        if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING) {
          out[n].name.p = lua_tolstring(L, -2, &out[n].name.n);
          out[n].value.p = lua_tolstring(L, -1, &out[n].value.n);
          n++;
        }
        lua_pop(L, 2);
      }
    }
    lua_pop(L, 1);
  }
  return n;
}

/* Parses "name: value\r\n" lines into a table with lower-case names;
 * repeated names are joined with ", ". Pushes the table. */
static void push_header_table(lua_State *L, const char *buf, size_t len) {
  const char *p = buf, *end = buf + len;
  char name[256];
  lua_newtable(L);
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *le = eol ? eol : end;
    const char *colon = memchr(p, ':', (size_t)(le - p));
    if (colon && colon > p && (size_t)(colon - p) < sizeof(name)) {
      size_t nn = (size_t)(colon - p);
      for (size_t i = 0; i < nn; i++) {
        char c = p[i];
        name[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
      }
      const char *v = colon + 1;
      const char *ve = le;
      while (v < ve && (*v == ' ' || *v == '\t'))
        v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
        ve--;
      lua_pushlstring(L, name, nn);
      lua_pushvalue(L, -1);
      lua_rawget(L, -3);
      if (lua_isstring(L, -1)) {
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      }
      lua_rawset(L, -3);
    }
    p = eol ? eol + 1 : end;
  }
}

/* ---- fetch lifecycle ---------------------------------------------------- */

void cpx__lfetch_release(lfetch_t *lf) {
  lreq_t *lr = lf->lr;
  lfetch_t **pp = &lr->fetches;
  while (*pp && *pp != lf)
    pp = &(*pp)->next;
  if (*pp)
    *pp = lf->next;
  if (lf->box)
    lf->box->lf = NULL;
  if (lr->pipe == lf)
    lr->pipe = NULL;
  if (lr->wait_fetch == lf)
    lr->wait_fetch = NULL;
  {
    lua_State *L = lr->vm->L;
    lr->vm->host++;
    lua_pushlightuserdata(L, lf);
    lua_pushnil(L);
    lua_rawset(L, LUA_REGISTRYINDEX);
    if (lf->peeking) {
      cpx_sse_free(&lf->peek);
      luaL_unref(L, LUA_REGISTRYINDEX, lf->peek_ref);
      lf->peeking = 0;
    }
    lr->vm->host--;
  }
  /* The transfer goes first: it may still be sending the anchored body. */
  cpx_fetch_free(lf->f);
  luaL_unref(lr->vm->L, LUA_REGISTRYINDEX, lf->body_ref);
  free(lf);
}

static void push_fetch_error(lua_State *L, cpx_fetch_t *f) {
  lua_pushnil(L);
  if (f->errmsg[0])
    lua_pushstring(L, f->errmsg);
  else
    lua_pushstring(L, cpx_strerror(f->result));
}

static void on_fetch_event_inner(cpx_fetch_t *f, int ev);

/* SSE callback of the peek parser: appends {event=, data=} to the queue. */
static int on_peek_event(void *ud, const cpx_sse_event_t *ev) {
  lfetch_t *lf = ud;
  lua_State *L = lf->lr->vm->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, lf->peek_ref);
  lua_createtable(L, 0, 2);
  if (ev->event.n) {
    lua_pushlstring(L, ev->event.p, ev->event.n);
    lua_setfield(L, -2, "event");
  }
  lua_pushlstring(L, ev->data.p, ev->data.n);
  lua_setfield(L, -2, "data");
  lua_rawseti(L, -2, ++lf->peek_tail);
  lua_pop(L, 1);
  return 0;
}

/* Feeds the held bytes not yet seen to the peek parser. Host work. */
static void peek_feed(lfetch_t *lf) {
  cpx_fetch_t *f = lf->f;
  if (lf->peek_fed < f->body_len) {
    if (cpx_sse_feed(&lf->peek, f->body + lf->peek_fed,
                     f->body_len - lf->peek_fed, on_peek_event, lf) != 0)
      f->paused = 1; /* an oversized event: report the end of peeking */
    lf->peek_fed = f->body_len;
  }
}

/* Pushes the next queued event onto L and returns 1, or returns 0. */
static int peek_pop(lua_State *L, lfetch_t *lf) {
  if (lf->peek_head > lf->peek_tail)
    return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, lf->peek_ref);
  lua_rawgeti(L, -1, lf->peek_head);
  lua_pushnil(L);
  lua_rawseti(L, -3, lf->peek_head++);
  lua_remove(L, -2);
  return 1;
}

/* Values pushed onto a suspended coroutine are host work: no cap. */
static void on_fetch_event(cpx_fetch_t *f, int ev) {
  lfetch_t *lf = f->data;
  cpx_vm_t *vm = lf->lr->vm;
  cpx_vm_ref(vm);
  vm->host++;
  on_fetch_event_inner(f, ev);
  vm->host--;
  cpx_vm_unref(vm);
}

static void on_fetch_event_inner(cpx_fetch_t *f, int ev) {
  lfetch_t *lf = f->data;
  lreq_t *lr = lf->lr;

  if (lr->piping && lr->pipe == lf) {
    if (ev == CPX_FETCH_DONE)
      cpx__pipe_end(
          lr, f->result ? (f->errmsg[0] ? f->errmsg : cpx_strerror(f->result))
                        : NULL);
    return;
  }
  if (lr->wait_fetch != lf || lr->running)
    return;
  if (lr->wait == W_PEEK) {
    peek_feed(lf);
    if (peek_pop(lr->co, lf)) {
      lr->wait = W_NONE;
      lr->wait_fetch = NULL;
      f->notify_data = 0;
      cpx__lreq_resume(lr, 1);
    } else if (ev == CPX_FETCH_DONE || f->paused) {
      /* The stream ended, failed, or filled the hold buffer without a
       * complete event: nothing more to peek at. */
      lr->wait = W_NONE;
      lr->wait_fetch = NULL;
      f->notify_data = 0;
      lua_pushnil(lr->co);
      if (f->done && f->result != 0)
        lua_pushstring(lr->co,
                       f->errmsg[0] ? f->errmsg : cpx_strerror(f->result));
      else
        lua_pushstring(lr->co,
                       f->done ? "end of stream" : "no complete event yet");
      cpx__lreq_resume(lr, 2);
    }
    return;
  }
  if (lr->wait == W_HEADERS) {
    if (ev == CPX_FETCH_HEADERS || (ev == CPX_FETCH_DONE && f->result == 0)) {
      lr->wait = W_NONE;
      lr->wait_fetch = NULL;
      /* cpx.fetch returns the fetch object, parked in the registry under
       * its lfetch_t while the coroutine waited. */
      lua_pushlightuserdata(lr->co, lf);
      lua_rawget(lr->co, LUA_REGISTRYINDEX);
      lua_pushlightuserdata(lr->co, lf);
      lua_pushnil(lr->co);
      lua_rawset(lr->co, LUA_REGISTRYINDEX);
      cpx__lreq_resume(lr, 1);
    } else if (ev == CPX_FETCH_DONE) {
      lr->wait = W_NONE;
      lr->wait_fetch = NULL;
      push_fetch_error(lr->co, f);
      cpx__lreq_resume(lr, 2);
    }
  } else if (lr->wait == W_BODY && ev == CPX_FETCH_DONE) {
    lr->wait = W_NONE;
    lr->wait_fetch = NULL;
    if (f->result == 0)
      lua_pushlstring(lr->co, f->body ? f->body : "", f->body_len);
    else
      push_fetch_error(lr->co, f);
    cpx__lreq_resume(lr, f->result == 0 ? 1 : 2);
  }
}

/* ---- Lua: cpx.fetch and the fetch object -------------------------------- */

lfetch_t *cpx__check_fetch(lua_State *L, int idx) {
  fetch_box_t *b = luaL_checkudata(L, idx, MT_FETCH);
  if (!b->lf)
    luaL_error(L, "fetch object is closed");
  return b->lf;
}

/* cpx.fetch{method=, url=, headers=, body=, proxy=, connect_timeout=,
 * first_byte_timeout=, idle_timeout= (seconds), max_body=} -> fetch | nil,
 * err. Yields until the status and headers arrive. */
static int l_fetch(lua_State *L) {
  lreq_t *lr = cpx__co_current(L);
  cpx_header_t hdrs[MAX_HEADERS];
  cpx_fetch_opts_t o;
  cpx_fetch_defaults_t d;
  cpx_settings_t *s;
  lfetch_t *lf;
  int rc, body_idx;

  if (!lr)
    return luaL_error(
        L, "cpx.fetch can only run in a request's handler or a task");
  luaL_checktype(L, 1, LUA_TTABLE);
  if (cpx__push_refusal(L, lr))
    return 2;
  s = &lr->vm->settings;
  d.connect_timeout_ms = s->upstream_connect_ms;
  d.first_byte_timeout_ms = s->upstream_first_byte_ms;
  d.idle_timeout_ms = s->upstream_idle_ms;
  d.max_body = s->upstream_max_body;
  /* the reader leaves url, method, body, proxy and headers pushed, in that
   * order: the body's slot is the third above the current top */
  body_idx = lua_gettop(L) + 3;
  cpx_lua_fetch_opts(L, 1, "cpx.fetch", &d, &o, hdrs, MAX_HEADERS);
  if (o.body)
    o.body_borrowed = 1; /* anchored below (body_ref) */

  lf = calloc(1, sizeof(*lf));
  if (!lf)
    return luaL_error(L, "out of memory");
  lf->lr = lr;
  lf->body_ref = LUA_NOREF;
  if (o.body) {
    /* the string in the stack slot tolstring read (a number converted
     * there is a new string, not the table's value) */
    lua_pushvalue(L, body_idx);
    lf->body_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  rc = cpx_fetch_start(&lr->w->upstream, &o, on_fetch_event, lf, &lf->f);
  if (rc != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, lf->body_ref);
    free(lf);
    lua_pushnil(L);
    lua_pushstring(L, cpx_strerror(rc));
    return 2;
  }
  lf->next = lr->fetches;
  lr->fetches = lf;
  lf->box = lua_newuserdata(L, sizeof(fetch_box_t));
  lf->box->lf = lf;
  luaL_getmetatable(L, MT_FETCH);
  lua_setmetatable(L, -2);
  /* Park the object in the registry under lf until the resume hands it
   * back as cpx.fetch's result. */
  lua_pushlightuserdata(L, lf);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);
  lr->wait = W_HEADERS;
  lr->wait_fetch = lf;
  return lua_yield(L, 0);
}

static int l_fetch_status(lua_State *L) {
  lfetch_t *lf = cpx__check_fetch(L, 1);
  lua_pushinteger(L, lf->f->status);
  return 1;
}

static int l_fetch_headers(lua_State *L) {
  lfetch_t *lf = cpx__check_fetch(L, 1);
  push_header_table(L, lf->f->resp_headers ? lf->f->resp_headers : "",
                    lf->f->resp_headers_len);
  return 1;
}

/* fetch:body() -> string | nil, err. Yields until the transfer ends. */
static int l_fetch_body(lua_State *L) {
  lfetch_t *lf = cpx__check_fetch(L, 1);
  lreq_t *lr = lf->lr;
  if (lr->co != L)
    return luaL_error(L,
                      "fetch:body can only run in the coroutine that fetched");
  if (!lf->f->done && cpx__push_refusal(L, lr))
    return 2;
  if (lf->f->done) {
    if (lf->f->result == 0) {
      lua_pushlstring(L, lf->f->body ? lf->f->body : "", lf->f->body_len);
      return 1;
    }
    push_fetch_error(L, lf->f);
    return 2;
  }
  cpx_fetch_buffer(lf->f);
  if (lf->f->done) {
    lua_pushlstring(L, lf->f->body ? lf->f->body : "", lf->f->body_len);
    return 1;
  }
  lr->wait = W_BODY;
  lr->wait_fetch = lf;
  return lua_yield(L, 0);
}

/* fetch:peek() -> {event=, data=} | nil, why. Yields until the next SSE
 * event of the upstream body is complete, without consuming it: a later
 * req:pipe still delivers every byte. This is how the pipeline holds the
 * client's headers until the first real upstream event (so an error in it
 * can still fail over to another account). Only before a mode is chosen. */
static int l_fetch_peek(lua_State *L) {
  lfetch_t *lf = cpx__check_fetch(L, 1);
  lreq_t *lr = lf->lr;
  cpx_fetch_t *f = lf->f;

  if (lr->co != L)
    return luaL_error(L,
                      "fetch:peek can only run in the coroutine that fetched");
  if (f->mode != 0)
    return luaL_error(L, "fetch:peek: the body is already being read");
  if (!f->done && cpx__push_refusal(L, lr))
    return 2;
  if (!lf->peeking) {
    cpx_sse_init(&lf->peek, 1024 * 1024);
    lua_newtable(L);
    lf->peek_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lf->peek_head = 1;
    lf->peek_tail = 0;
    lf->peek_fed = 0;
    lf->peeking = 1;
  }
  peek_feed(lf);
  if (peek_pop(L, lf))
    return 1;
  if (f->done || f->paused) {
    lua_pushnil(L);
    if (f->done && f->result != 0)
      lua_pushstring(L, f->errmsg[0] ? f->errmsg : cpx_strerror(f->result));
    else
      lua_pushstring(L, f->done ? "end of stream" : "no complete event yet");
    return 2;
  }
  f->notify_data = 1;
  lr->wait = W_PEEK;
  lr->wait_fetch = lf;
  return lua_yield(L, 0);
}

static int l_fetch_close(lua_State *L) {
  fetch_box_t *b = luaL_checkudata(L, 1, MT_FETCH);
  if (b->lf && !(b->lf->lr->piping && b->lf->lr->pipe == b->lf))
    cpx__lfetch_release(b->lf);
  return 0;
}

static int l_fetch_gc(lua_State *L) {
  fetch_box_t *b = luaL_checkudata(L, 1, MT_FETCH);
  if (b->lf)
    b->lf->box = NULL; /* the request still owns and frees the fetch */
  return 0;
}

void cpx__fetch_lua_register(lua_State *L, int t) {
  static const luaL_Reg fetch_methods[] = {
      {"status", l_fetch_status}, {"headers", l_fetch_headers},
      {"body", l_fetch_body},     {"peek", l_fetch_peek},
      {"close", l_fetch_close},   {NULL, NULL}};

  luaL_newmetatable(L, MT_FETCH);
  lua_newtable(L);
  luaL_register(L, NULL, fetch_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_fetch_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_fetch);
  lua_setfield(L, t, "fetch");
}
