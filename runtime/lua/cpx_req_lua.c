/* cpx_req_lua.c: the request object a handler answers through (respond,
 * start, write, finish, keepalive, closed, sent, status) and req:pipe, which
 * hands the rest of an upstream body to the client through a Lua handler.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx_log.h"
#include "cpx_lua_int.h"

/* ---- pipe: upstream events to the client -------------------------------- */

static int call_handler(lreq_t *lr, const char *fn, int nargs, int *failed) {
  lua_State *L = lr->vm->L;
  int base = lua_gettop(L) - nargs;
  int rc;
  /* stack: args... -> traceback handler fn args */
  lr->vm->host++;
  lua_rawgeti(L, LUA_REGISTRYINDEX, lr->handler_ref);
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
  if (!lua_isfunction(L, -1)) {
    lua_settop(L, base);
    lr->vm->host--;
    return 0;
  }
  lua_insert(L, base + 1);
  lua_getglobal(L, "debug");
  lua_getfield(L, -1, "traceback");
  lua_remove(L, -2);
  lua_insert(L, base + 1);
  lr->vm->host--;
  cpx_vm_enter(lr->vm);
  rc = lua_pcall(L, nargs, 1, base + 1);
  cpx_vm_leave(lr->vm);
  if (rc != 0) {
    lr->vm->host++;
    cpx_log_error(lr->r->rid, "stream handler %s failed: %s", fn,
                  lua_tostring(L, -1));
    *failed = 1;
    lua_settop(L, base);
    lr->vm->host--;
    return 0;
  }
  /* stack: traceback result */
  lua_remove(L, base + 1);
  return 1;
}

static int write_result(lreq_t *lr) {
  lua_State *L = lr->vm->L;
  size_t n;
  int rc = 0;
  lr->last_write = uv_now(lr->w->loop);
  if (lua_type(L, -1) == LUA_TSTRING) {
    const char *s = lua_tolstring(L, -1, &n);
    rc = cpx_request_write(lr->r, s, n);
  } else if (lua_istable(L, -1)) {
    int len = (int)lua_objlen(L, -1);
    for (int i = 1; i <= len && rc == 0; i++) {
      lua_rawgeti(L, -1, i);
      if (lua_type(L, -1) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, -1, &n);
        rc = cpx_request_write(lr->r, s, n);
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return rc;
}

/* Pushes {event=, data=} (event only when the stream gave one). */
static void push_event(lreq_t *lr, const char *event, size_t elen,
                       const char *data, size_t dlen) {
  lua_State *L = lr->vm->L;
  lr->vm->host++;
  lua_createtable(L, 0, 2);
  if (event) {
    lua_pushlstring(L, event, elen);
    lua_setfield(L, -2, "event");
  }
  lua_pushlstring(L, data, dlen);
  lua_setfield(L, -2, "data");
  lr->vm->host--;
}

static int deliver_event(lreq_t *lr, const char *event, size_t elen,
                         const char *data, size_t dlen) {
  int failed = 0;
  push_event(lr, event, elen, data, dlen);
  if (call_handler(lr, "on_event", 1, &failed))
    return write_result(lr) == CPX_ECLOSED ? 1 : 0;
  if (failed) {
    lr->handler_failed = 1;
    return 1;
  }
  return 0;
}

/* Batched delivery: appends {event=, data=} to the table on the top of the
 * main stack (pipe_batch put it there). */
static int gather_event(lreq_t *lr, const char *event, size_t elen,
                        const char *data, size_t dlen) {
  push_event(lr, event, elen, data, dlen);
  lua_rawseti(lr->vm->L, -2, ++lr->batch_n);
  return 0;
}

static int on_sse_event(void *ud, const cpx_sse_event_t *ev) {
  lreq_t *lr = ud;
  if (lr->batch)
    return gather_event(lr, ev->event.n ? ev->event.p : NULL, ev->event.n,
                        ev->data.p, ev->data.n);
  return deliver_event(lr, ev->event.n ? ev->event.p : NULL, ev->event.n,
                       ev->data.p, ev->data.n);
}

static int on_json_elem(void *ud, const char *elem, size_t len) {
  lreq_t *lr = ud;
  if (lr->batch)
    return gather_event(lr, NULL, 0, elem, len);
  return deliver_event(lr, NULL, 0, elem, len);
}

/* One upstream read through the framer with handler.on_events: the events
 * it completes are gathered and handed to Lua in one call, whose answer is
 * written at once (one pcall and one write per read instead of per event:
 * a burst of small deltas is common). The bytes the client gets are the
 * same as through on_event. Returns as the framer does, or 1 to stop. */
static int pipe_batch(lreq_t *lr, const char *data, size_t len) {
  lua_State *L = lr->vm->L;
  int failed = 0, rc;
  lr->vm->host++;
  lua_newtable(L);
  lr->vm->host--;
  lr->batch_n = 0;
  if (lr->framing == FRAME_SSE)
    rc = cpx_sse_feed(&lr->sse, data, len, on_sse_event, lr);
  else
    rc = cpx_jsonarr_feed(&lr->ja, data, len, on_json_elem, lr);
  if (lr->batch_n == 0) {
    lua_pop(L, 1);
    return rc;
  }
  if (call_handler(lr, "on_events", 1, &failed)) {
    if (write_result(lr) == CPX_ECLOSED)
      return 1;
  } else if (failed) {
    lr->handler_failed = 1;
    return 1;
  }
  return rc;
}

/* Keeps the first and the last cap_max bytes: at most two copies of
 * cap_max bytes per write, whatever the stream's length. */
static void capture(lreq_t *lr, const char *data, size_t len) {
  size_t max = lr->cap_max;
  if (!max)
    return;
  if (lr->cap_head_len < max) {
    size_t n = max - lr->cap_head_len < len ? max - lr->cap_head_len : len;
    memcpy(lr->cap_head + lr->cap_head_len, data, n);
    lr->cap_head_len += n;
    data += n;
    len -= n;
  }
  if (len >= max) {
    memcpy(lr->cap_tail, data + len - max, max);
    lr->cap_tail_len = max;
  } else if (len > 0) {
    size_t keep = lr->cap_tail_len + len > max ? max - len : lr->cap_tail_len;
    memmove(lr->cap_tail, lr->cap_tail + lr->cap_tail_len - keep, keep);
    memcpy(lr->cap_tail + keep, data, len);
    lr->cap_tail_len = keep + len;
  }
}

/* Pushes the captured bytes: head, a blank line, tail. */
static void push_capture(lreq_t *lr, lua_State *L) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, lr->cap_head, lr->cap_head_len);
  if (lr->cap_tail_len) {
    luaL_addlstring(&b, "\n\n", 2);
    luaL_addlstring(&b, lr->cap_tail, lr->cap_tail_len);
  }
  luaL_pushresult(&b);
}

static int pipe_sink(cpx_fetch_t *f, const char *data, size_t len) {
  lfetch_t *lf = f->data;
  lreq_t *lr = lf->lr;
  cpx_request_t *r = lr->r;
  int rc;

  if (lr->aborted || !r->conn || lr->pipe_ended)
    return CPX_ECLOSED;
  if (cpx_request_congested(r))
    return CPX_EAGAIN;
  capture(lr, data, len);
  if (lr->batch && lr->framing != FRAME_RAW) {
    rc = pipe_batch(lr, data, len);
    return rc == 0 ? 0 : rc < 0 ? rc : CPX_ESCRIPT;
  }
  switch (lr->framing) {
  case FRAME_SSE:
    rc = cpx_sse_feed(&lr->sse, data, len, on_sse_event, lr);
    break;
  case FRAME_JSONARR:
    rc = cpx_jsonarr_feed(&lr->ja, data, len, on_json_elem, lr);
    break;
  default:
    rc = cpx_request_write(r, data, len);
    lr->last_write = uv_now(lr->w->loop);
    break;
  }
  if (rc != 0)
    return rc < 0 ? rc : CPX_ESCRIPT;
  return 0;
}

/* The client left mid-stream: the handler's on_abort(why, captured), if
 * any, may note it (rt.record); it cannot write. */
void cpx__pipe_note_abort(lreq_t *lr, const char *why) {
  lua_State *L = lr->vm->L;
  int failed = 0;
  if (lr->handler_ref == LUA_NOREF)
    return;
  lr->vm->host++;
  lua_pushstring(L, why ? why : "client closed request");
  if (lr->cap_max)
    push_capture(lr, L);
  lr->vm->host--;
  if (call_handler(lr, "on_abort", lr->cap_max ? 2 : 1, &failed))
    lua_pop(L, 1);
}

void cpx__pipe_end(lreq_t *lr, const char *err) {
  lua_State *L = lr->vm->L;
  int failed = 0;

  if (lr->pipe_ended)
    return;
  lr->pipe_ended = 1;
  cpx__ka_stop(lr);
  if (lr->handler_failed && !err)
    err = "stream translation failed";
  if (!lr->aborted && lr->r->conn) {
    lr->vm->host++;
    if (err)
      lua_pushstring(L, err);
    else
      lua_pushnil(L);
    if (lr->cap_max)
      push_capture(lr, L);
    lr->vm->host--;
    if (call_handler(lr, "on_end", lr->cap_max ? 2 : 1, &failed))
      write_result(lr);
    cpx_request_finish(lr->r);
  } else {
    cpx__pipe_note_abort(lr, err);
  }
  if (lr->pipe)
    cpx__lfetch_release(lr->pipe);
  cpx__lreq_maybe_release(lr);
}

/* ---- Lua: the request object -------------------------------------------- */

static lreq_t *check_req(lua_State *L, int idx) {
  req_box_t *b = luaL_checkudata(L, idx, MT_REQUEST);
  if (!b->lr)
    luaL_error(L, "request is finished");
  return b->lr;
}

static int push_write_rc(lua_State *L, int rc) {
  if (rc == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushnil(L);
  lua_pushstring(L, rc == CPX_ECLOSED ? "closed" : cpx_strerror(rc));
  return 2;
}

/* The answer after keep-alive blank lines: the status line is gone (200),
 * only the body can follow. */
static int nka_finish(lua_State *L, lreq_t *lr, int status, const char *body,
                      size_t blen) {
  int rc;
  cpx__ka_stop(lr);
  if (status != 200)
    cpx_log_info(lr->r->rid,
                 "status %d sent as 200 after keep-alive blank lines (body "
                 "keeps the error)",
                 status);
  rc = blen ? cpx_request_write(lr->r, body, blen) : 0;
  if (rc == 0)
    rc = cpx_request_finish(lr->r);
  return push_write_rc(L, rc);
}

/* req:respond(status, headers, body) */
static int l_req_respond(lua_State *L) {
  lreq_t *lr = check_req(L, 1);
  int status = (int)luaL_checkinteger(L, 2);
  cpx_header_t hdrs[MAX_HEADERS];
  size_t blen = 0;
  const char *body = luaL_optlstring(L, 4, "", &blen);
  int nh = cpx__read_headers(L, 3, hdrs, MAX_HEADERS);
  if (nh < 0)
    return luaL_argerror(L, 3, "headers must be a table");
  if (status < 100 || status > 999)
    return luaL_argerror(L, 2, "invalid status");
  if (lr->nka_started)
    return nka_finish(L, lr, status, body, blen);
  if (lr->nka)
    cpx__ka_stop(lr);
  if (lr->r->headers_sent)
    return push_write_rc(L, CPX_ESTATE);
  return push_write_rc(
      L, cpx_request_respond(lr->r, status, hdrs, (size_t)nh, body, blen));
}

/* req:start(status, headers) starts a streamed response. */
static int l_req_start(lua_State *L) {
  lreq_t *lr = check_req(L, 1);
  int status = (int)luaL_checkinteger(L, 2);
  cpx_header_t hdrs[MAX_HEADERS];
  int nh = cpx__read_headers(L, 3, hdrs, MAX_HEADERS);
  if (nh < 0)
    return luaL_argerror(L, 3, "headers must be a table");
  return push_write_rc(L, cpx_request_start(lr->r, status, hdrs, (size_t)nh));
}

static int l_req_write(lua_State *L) {
  lreq_t *lr = check_req(L, 1);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  return push_write_rc(L, cpx_request_write(lr->r, s, n));
}

static int l_req_finish(lua_State *L) {
  lreq_t *lr = check_req(L, 1);
  size_t n = 0;
  const char *s = luaL_optlstring(L, 2, NULL, &n);
  if (s && n)
    cpx_request_write(lr->r, s, n);
  return push_write_rc(L, cpx_request_finish(lr->r));
}

static void on_ka_closed(uv_handle_t *h) {
  free(h);
}

void cpx__ka_stop(lreq_t *lr) {
  if (lr->ka) {
    uv_close((uv_handle_t *)lr->ka, on_ka_closed);
    lr->ka = NULL;
  }
  free(lr->ka_frame);
  lr->ka_frame = NULL;
  lr->nka = 0;
}

/* nonstream-keepalive-interval: while a non-stream answer is awaited, a
 * blank line every interval (JSON parsers skip leading whitespace); the
 * first one starts the response. */
static void on_nka(uv_timer_t *t) {
  lreq_t *lr = t->data;
  cpx_request_t *r = lr->r;
  if (lr->aborted || !r->conn || r->finished)
    return;
  if (!r->headers_sent) {
    if (cpx_request_start(r, 200, cpx_json_headers, CPX_JSON_HEADERS_N) != 0)
      return;
    lr->nka_started = 1;
  }
  if (lr->nka_started && !cpx_request_congested(r))
    cpx_request_write(r, "\n", 1);
}

/* req:keepalive(seconds) -> true | nil, err */
static int l_req_keepalive(lua_State *L) {
  lreq_t *lr = check_req(L, 1);
  double sec = luaL_checknumber(L, 2);
  if (lr->r->headers_sent || lr->ka)
    return push_write_rc(L, CPX_ESTATE);
  if (sec <= 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lr->ka = malloc(sizeof(uv_timer_t));
  if (!lr->ka)
    return push_write_rc(L, CPX_ENOMEM);
  lr->nka = 1;
  lr->ka_ms = (uint64_t)(sec * 1000);
  uv_timer_init(lr->w->loop, lr->ka);
  lr->ka->data = lr;
  uv_timer_start(lr->ka, on_nka, lr->ka_ms, lr->ka_ms);
  lua_pushboolean(L, 1);
  return 1;
}

static void on_ka(uv_timer_t *t) {
  lreq_t *lr = t->data;
  uint64_t now = uv_now(lr->w->loop);
  if (lr->pipe_ended || lr->aborted || !lr->r->conn)
    return;
  /* Only a quiet stream gets a keep-alive; never while the client is
   * behind (the queue is the signal that it is still reading). */
  if (now - lr->last_write >= lr->ka_ms && !cpx_request_congested(lr->r)) {
    cpx_request_write(lr->r, lr->ka_frame, lr->ka_len);
    lr->last_write = now;
  }
}

/* req:pipe(fetch, handler, framing) hands the rest of the upstream body to
 * the client: framing "raw" (bytes as they come; handler optional, its
 * on_end(err) may add a last frame), "sse" or "jsonarr" (handler.on_event
 * receives {event=, data=} and returns the bytes to write). The response
 * must have been started with req:start. */
static int l_req_pipe(lua_State *L) {
  lreq_t *lr = check_req(L, 1);
  lfetch_t *lf = cpx__check_fetch(L, 2);
  const char *framing = luaL_optstring(L, 4, "raw");

  if (lr->piping)
    return luaL_error(L, "req:pipe: already piping");
  if (!lr->r->streaming)
    return luaL_error(L, "req:pipe: call req:start first");
  if (lf->lr != lr)
    return luaL_error(L, "req:pipe: fetch belongs to another request");
  if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3))
    return luaL_argerror(L, 3, "handler must be a table");
  if (strcmp(framing, "sse") == 0) {
    lr->framing = FRAME_SSE;
    cpx_sse_init(&lr->sse, 8u * 1024 * 1024);
  } else if (strcmp(framing, "jsonarr") == 0) {
    lr->framing = FRAME_JSONARR;
    cpx_jsonarr_init(&lr->ja, 8u * 1024 * 1024);
  } else if (strcmp(framing, "raw") == 0) {
    lr->framing = FRAME_RAW;
  } else {
    return luaL_argerror(L, 4, "framing must be raw, sse or jsonarr");
  }
  if (lr->framing != FRAME_RAW && !lua_istable(L, 3))
    return luaL_error(L, "req:pipe: framing %s needs a handler", framing);
  if (lua_istable(L, 3)) {
    lua_getfield(L, 3, "on_events");
    lr->batch = lua_isfunction(L, -1);
    lua_pop(L, 1);
    lua_pushvalue(L, 3);
    lr->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  if (lua_istable(L, 5)) {
    /* opts: keepalive = seconds, keepalive_frame = bytes */
    double sec;
    size_t fl = 0;
    const char *frame;
    lua_getfield(L, 5, "keepalive");
    sec = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
    lua_getfield(L, 5, "keepalive_frame");
    frame = lua_tolstring(L, -1, &fl);
    if (sec > 0 && frame && fl > 0) {
      lr->ka = malloc(sizeof(uv_timer_t));
      lr->ka_frame = malloc(fl);
      if (lr->ka && lr->ka_frame) {
        memcpy(lr->ka_frame, frame, fl);
        lr->ka_len = fl;
        lr->ka_ms = (uint64_t)(sec * 1000);
        lr->last_write = uv_now(lr->w->loop);
        uv_timer_init(lr->w->loop, lr->ka);
        lr->ka->data = lr;
        uv_timer_start(lr->ka, on_ka, lr->ka_ms, lr->ka_ms);
      } else {
        free(lr->ka);
        free(lr->ka_frame);
        lr->ka = NULL;
        lr->ka_frame = NULL;
      }
    }
    lua_pop(L, 2);
    lua_getfield(L, 5, "capture");
    sec = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
    lua_pop(L, 1);
    if (sec >= 1 && sec <= 65536) {
      lr->cap_head = malloc((size_t)sec);
      lr->cap_tail = malloc((size_t)sec);
      if (lr->cap_head && lr->cap_tail) {
        lr->cap_max = (size_t)sec;
      } else {
        free(lr->cap_head);
        free(lr->cap_tail);
        lr->cap_head = lr->cap_tail = NULL;
      }
    }
  }
  lr->piping = 1;
  lr->pipe = lf;
  if (lr->aborted) {
    lr->pipe_ended = 1;
  } else {
    cpx_fetch_sink(lf->f, pipe_sink);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_req_closed(lua_State *L) {
  req_box_t *b = luaL_checkudata(L, 1, MT_REQUEST);
  lua_pushboolean(L, !b->lr || b->lr->aborted || !b->lr->r->conn);
  return 1;
}

static int l_req_sent(lua_State *L) {
  lreq_t *lr = check_req(L, 1);
  lua_pushboolean(L, lr->r->headers_sent);
  return 1;
}

static int l_req_status(lua_State *L) {
  lreq_t *lr = check_req(L, 1);
  if (!lr->r->headers_sent)
    return 0;
  lua_pushinteger(L, lr->r->status);
  return 1;
}

void cpx__req_lua_register(lua_State *L) {
  static const luaL_Reg req_methods[] = {
      {"respond", l_req_respond},     {"start", l_req_start},
      {"write", l_req_write},         {"finish", l_req_finish},
      {"pipe", l_req_pipe},           {"closed", l_req_closed},
      {"sent", l_req_sent},           {"status", l_req_status},
      {"keepalive", l_req_keepalive}, {NULL, NULL}};

  luaL_newmetatable(L, MT_REQUEST);
  lua_newtable(L);
  luaL_register(L, NULL, req_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
