/* cpx_lua_api.c: request coroutines and the request-bound part of the `cpx`
 * Lua API (fetch, sleep, respond, stream, pipe, log).
 *
 * Per request there is one lreq_t (C heap) tying together the server
 * request, the coroutine running rt.server's handler, the upstream fetches
 * it started and, for streamed answers, the pipe that carries upstream
 * events to the client through a Lua handler. A background task's run
 * (cpx_task.c) is an lreq_t without a request (r == NULL): the same
 * coroutine, fetch, sleep and wait machinery, no client to answer.
 *
 * Yielding functions (cpx.fetch, fetch:body, cpx.sleep) may only run in the
 * request's own coroutine; stream handlers run under lua_pcall on the main
 * state and can never yield. Coroutines are resumed from loop callbacks
 * only, never from inside a curl callback.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "cpx_errbody.h"
#include "cpx_log.h"
#include "cpx_lane.h"
#include "cpx_lua.h"
#include "cpx_sse.h"
#include "cpx_task.h"
#include "cpx_tokens.h"

#define MT_REQUEST "cpx.request"
#define MT_FETCH "cpx.fetch"
#define REG_THREADS "cpx.threads"
#define REG_SPARE "cpx.spare_threads"
#define MAX_HEADERS 128

typedef struct lreq_s lreq_t;
typedef struct lfetch_s lfetch_t;

typedef struct {
  lfetch_t *lf; /* NULL once the fetch is released */
} fetch_box_t;

typedef struct {
  lreq_t *lr; /* NULL once the request is released */
} req_box_t;

enum { W_NONE = 0, W_HEADERS, W_BODY, W_SLEEP, W_WORK, W_PEEK, W_POLL };
enum { FRAME_RAW = 0, FRAME_SSE, FRAME_JSONARR };

/* One upstream transfer started from Lua. Owned by its lreq_t; freed with
 * it, or earlier by fetch:close(). */
struct lfetch_s {
  cpx_fetch_t *f;
  lreq_t *lr;
  fetch_box_t *box; /* the userdata, or NULL after it was collected */
  lfetch_t *next;
  int headers_seen;
  int done_seen;
  /* fetch:peek(): a private SSE parser over the held bytes (which stay
   * held, so a later pipe replays them) and a queue of parsed events. */
  int peeking;
  cpx_sse_t peek;
  size_t peek_fed;
  int peek_ref;  /* registry ref of the queue table */
  int peek_head; /* next index to hand out */
  int peek_tail; /* last index stored */
};

/* Owned by the worker from dispatch until released (see lreq_release). */
struct lreq_s {
  cpx_vm_t *vm; /* one reference */
  cpx_worker_t *w;
  cpx_request_t *r;   /* one reference; NULL for a task's coroutine */
  cpx_task_t *task;   /* the task this coroutine runs, or NULL */
  const char *refuse; /* static: why yielding calls now return nil, err */
  int refusals;
  void *locks; /* held locks (cpx_task.c), released at the end */
  /* W_POLL: cpx__co_wait_poll's callbacks (the sleep timer repeats) */
  int (*poll)(lua_State *co, void *ud);
  void (*poll_cleanup)(void *ud);
  void *poll_ud;
  lua_State *co;
  int co_ref;
  int co_done;
  int co_failed; /* the coroutine ended with an error: never reuse it */
  int running;   /* inside lua_resume */
  req_box_t *box;
  int box_ref;
  int wait;
  lfetch_t *wait_fetch;
  uv_timer_t *sleep; /* heap; freed in its close callback */
  lfetch_t *fetches;
  /* pipe */
  lfetch_t *pipe;
  int piping, pipe_ended;
  int handler_ref;
  int framing;
  cpx_sse_t sse;
  cpx_jsonarr_t ja;
  int handler_failed;
  /* streaming.keepalive-seconds: a frame written when the stream has been
   * quiet that long (heap timer, freed in its close callback). */
  uv_timer_t *ka;
  char *ka_frame; /* owned */
  size_t ka_len;
  uint64_t ka_ms;
  uint64_t last_write;
  /* nonstream-keepalive-interval: the ka timer belongs to req:keepalive;
   * nka_started once it has started the response (200, JSON). */
  int nka, nka_started;
  /* req:pipe opts.capture (rt.record reads usage out of relayed bytes):
   * the first and the last cap_max bytes the upstream sent (owned). */
  char *cap_head, *cap_tail;
  size_t cap_head_len, cap_tail_len, cap_max;
  /* state */
  int pending_work; /* threadpool jobs that still point at this request */
  int aborted;
  int released;
  int resume_queued;
  lreq_t *next_resume;
};

static void lreq_resume(lreq_t *lr, int nargs);
static void lreq_maybe_release(lreq_t *lr);
static void pipe_end(lreq_t *lr, const char *err);
static void pipe_note_abort(lreq_t *lr, const char *why);
static void ka_stop(lreq_t *lr);

/* ---- helpers ------------------------------------------------------------ */

static lreq_t *current_lreq(lua_State *L) {
  lreq_t *lr;
  lua_getfield(L, LUA_REGISTRYINDEX, REG_THREADS);
  lua_pushthread(L);
  lua_rawget(L, -2);
  lr = lua_touserdata(L, -1);
  lua_pop(L, 2);
  return lr;
}

/* Reads a header table at idx: { name = value | {values...} } or an array
 * of {name, value}. The strings stay owned by Lua (the table must stay on
 * the stack while the result is used). Returns the count or -1. */
static int read_headers(lua_State *L, int idx, cpx_header_t *out, int max) {
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

static void lfetch_release(lfetch_t *lf) {
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
  cpx_fetch_free(lf->f);
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

  if (ev == CPX_FETCH_HEADERS)
    lf->headers_seen = 1;
  if (ev == CPX_FETCH_DONE)
    lf->done_seen = 1;

  if (lr->piping && lr->pipe == lf) {
    if (ev == CPX_FETCH_DONE)
      pipe_end(lr, f->result
                       ? (f->errmsg[0] ? f->errmsg : cpx_strerror(f->result))
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
      lreq_resume(lr, 1);
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
      lreq_resume(lr, 2);
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
      lreq_resume(lr, 1);
    } else if (ev == CPX_FETCH_DONE) {
      lr->wait = W_NONE;
      lr->wait_fetch = NULL;
      push_fetch_error(lr->co, f);
      lreq_resume(lr, 2);
    }
  } else if (lr->wait == W_BODY && ev == CPX_FETCH_DONE) {
    lr->wait = W_NONE;
    lr->wait_fetch = NULL;
    if (f->result == 0)
      lua_pushlstring(lr->co, f->body ? f->body : "", f->body_len);
    else
      push_fetch_error(lr->co, f);
    lreq_resume(lr, f->result == 0 ? 1 : 2);
  }
}

/* ---- deferred resumes --------------------------------------------------- */

/* Ends whatever the coroutine waits for without an answer (the caller
 * pushes the error it resumes with). */
static void end_wait(lreq_t *lr) {
  if (lr->wait == W_POLL) {
    void (*cleanup)(void *) = lr->poll_cleanup;
    void *ud = lr->poll_ud;
    lr->poll = NULL;
    lr->poll_cleanup = NULL;
    lr->poll_ud = NULL;
    if (cleanup)
      cleanup(ud);
  }
  if (lr->sleep)
    uv_timer_stop(lr->sleep);
  lr->wait = W_NONE;
  lr->wait_fetch = NULL;
}

static void on_resume_idle(uv_idle_t *h) {
  cpx_worker_t *w = h->data;
  lreq_t *list = w->resume_queue;
  w->resume_queue = NULL;
  uv_idle_stop(h);
  while (list) {
    lreq_t *lr = list;
    list = lr->next_resume;
    lr->resume_queued = 0;
    lr->next_resume = NULL;
    if (lr->released || lr->co_done || lr->wait == W_NONE)
      continue;
    end_wait(lr);
    lr->vm->host++;
    lua_pushnil(lr->co);
    lua_pushstring(lr->co, lr->aborted ? "client closed request" : lr->refuse);
    lr->vm->host--;
    lreq_resume(lr, 2);
  }
}

static void queue_abort_resume(lreq_t *lr) {
  if (lr->resume_queued)
    return;
  lr->resume_queued = 1;
  lr->next_resume = lr->w->resume_queue;
  lr->w->resume_queue = lr;
  uv_idle_start(&lr->w->resume_idle, on_resume_idle);
}

/* ---- request lifecycle -------------------------------------------------- */

static void on_sleep_closed(uv_handle_t *h) {
  free(h);
}

static void lreq_release(lreq_t *lr) {
  lua_State *L = lr->vm->L;
  lr->released = 1;
  if (lr->wait == W_POLL)
    end_wait(lr);
  cpx__co_release_locks(lr);
  lr->vm->host++;
  while (lr->fetches)
    lfetch_release(lr->fetches);
  if (lr->sleep) {
    uv_close((uv_handle_t *)lr->sleep, on_sleep_closed);
    lr->sleep = NULL;
  }
  ka_stop(lr);
  if (lr->framing == FRAME_SSE)
    cpx_sse_free(&lr->sse);
  else if (lr->framing == FRAME_JSONARR)
    cpx_jsonarr_free(&lr->ja);
  lr->framing = FRAME_RAW;
  free(lr->cap_head);
  free(lr->cap_tail);
  lr->cap_head = lr->cap_tail = NULL;
  lr->cap_max = 0;
  if (lr->box)
    lr->box->lr = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, lr->handler_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, lr->box_ref);
  /* Forget the thread -> request mapping, then let the thread go. */
  lua_getfield(L, LUA_REGISTRYINDEX, REG_THREADS);
  lua_rawgeti(L, LUA_REGISTRYINDEX, lr->co_ref);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  /* A coroutine that returned normally is dead but reusable: keep a few
   * for the next requests instead of allocating a thread and its stack
   * each time. */
  if (!lr->co_failed && lua_status(lr->co) == 0) {
    lua_settop(lr->co, 0);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_SPARE);
    int n = (int)lua_objlen(L, -1);
    if (n < 64) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, lr->co_ref);
      lua_rawseti(L, -2, n + 1);
    }
    lua_pop(L, 1);
  }
  luaL_unref(L, LUA_REGISTRYINDEX, lr->co_ref);
  lr->vm->host--;
  if (lr->r) {
    lr->r->handler_data = NULL;
    cpx_request_unref(lr->r);
  }
  if (lr->task)
    cpx__task_co_done(lr->task, lr);
  if (lr->resume_queued) {
    lreq_t **pp = (lreq_t **)&lr->w->resume_queue;
    while (*pp && *pp != lr)
      pp = &(*pp)->next_resume;
    if (*pp)
      *pp = lr->next_resume;
  }
  cpx_vm_unref(lr->vm);
  free(lr);
}

static void respond_internal_error(lreq_t *lr, const char *msg) {
  cpx_request_t *r = lr->r;
  if (!r || r->finished)
    return;
  /* A stream's framing is the script's (an SSE event or a JSON array), so
   * an event of ours could break it: end the stream as it is. */
  if (r->streaming) {
    cpx_request_finish(r);
    return;
  }
  cpx_errbody_respond(r, 500, "server_error", "internal_server_error", msg);
}

static void lreq_maybe_release(lreq_t *lr) {
  if (lr->released || lr->running || lr->pending_work > 0)
    return;
  if (!lr->co_done)
    return;
  if (lr->piping && !lr->pipe_ended)
    return;
  if (lr->r && !lr->r->finished) {
    if (lr->aborted)
      return; /* cannot happen: the server finishes aborted requests */
    respond_internal_error(lr, "handler returned without a response");
  }
  lreq_release(lr);
}

static void lreq_resume(lreq_t *lr, int nargs) {
  lua_State *co = lr->co;
  int rc;

  cpx_vm_t *vm = lr->vm;
  int saved_host = vm->host;

  lr->running = 1;
  vm->host = 0;
  rc = lua_resume(co, nargs);
  vm->host = saved_host + 1;
  lr->running = 0;
  if (rc == LUA_YIELD) {
    vm->host--;
    if (lr->wait == W_NONE && !lr->r) {
      /* A bare coroutine.yield() out of a task: nothing would ever resume
       * it. Stop it instead of keeping it (and its generation) forever. */
      cpx_log_error(NULL,
                    "task failed (worker %d, generation %u): "
                    "coroutine.yield outside a coroutine of its own",
                    lr->w->id, vm->gen);
      lr->co_failed = 1;
      lr->co_done = 1;
      lreq_maybe_release(lr);
    }
    return;
  }
  if (rc != 0) {
    const char *msg = lua_tostring(co, -1);
    lr->co_failed = 1;
    if (rc == LUA_ERRMEM)
      lua_gc(vm->L, LUA_GCCOLLECT, 0);
    luaL_traceback(vm->L, co, msg ? msg : "(error object)", 0);
    if (lr->r)
      cpx_log_error(lr->r->rid, "request handler failed: %s",
                    lua_tostring(vm->L, -1));
    else
      cpx_log_error(NULL, "task failed (worker %d, generation %u): %s",
                    lr->w->id, vm->gen, lua_tostring(vm->L, -1));
    lua_pop(vm->L, 1);
    respond_internal_error(
        lr, rc == LUA_ERRMEM ? "script ran out of memory (lua.memory-limit-mb)"
                             : "internal error in request handler");
  }
  vm->host--;
  lr->co_done = 1;
  lr->wait = W_NONE;
  lreq_maybe_release(lr);
}

static void on_req_abort(cpx_request_t *r) {
  lreq_t *lr = r->handler_data;
  if (!lr || lr->released)
    return;
  lr->aborted = 1;
  /* Locks go at once: the client is gone, whatever the handler still does
   * with them is wasted work another coroutine is waiting behind. */
  cpx__co_release_locks(lr);
  /* Cancel every upstream transfer at once: nobody will read it. */
  if (lr->piping && !lr->pipe_ended) {
    lr->pipe_ended = 1;
    pipe_note_abort(lr, "client closed request");
  }
  while (lr->fetches)
    lfetch_release(lr->fetches);
  if (lr->sleep) {
    uv_timer_stop(lr->sleep);
  }
  if (!lr->co_done && lr->wait != W_NONE && !lr->running)
    queue_abort_resume(lr);
  else
    lreq_maybe_release(lr);
}

static void on_req_drain(cpx_request_t *r) {
  lreq_t *lr = r->handler_data;
  if (!lr || lr->released || !lr->pipe)
    return;
  cpx_fetch_resume(lr->pipe->f);
}

static void on_req_shutdown(cpx_request_t *r) {
  lreq_t *lr = r->handler_data;
  if (!lr || lr->released)
    return;
  if (lr->piping && !lr->pipe_ended) {
    pipe_end(lr, "server shutting down");
    return;
  }
  if (!lr->co_done && lr->wait != W_NONE && !lr->running) {
    while (lr->fetches)
      lfetch_release(lr->fetches);
    end_wait(lr); /* a lock wait's state, the sleep timer */
    lr->vm->host++;
    lua_pushnil(lr->co);
    lua_pushliteral(lr->co, "server shutting down");
    lr->vm->host--;
    lreq_resume(lr, 2);
  }
}

static void push_request_info(lua_State *L, cpx_request_t *r) {
  const cpx_http_request_t *h = &r->http;
  const char *target = h->buf + h->url_off;
  const char *q = memchr(target, '?', h->url_len);
  size_t plen = q ? (size_t)(q - target) : h->url_len;

  lua_createtable(L, 0, 10);
  lua_pushstring(L, h->method ? h->method : "GET");
  lua_setfield(L, -2, "method");
  lua_pushlstring(L, target, h->url_len);
  lua_setfield(L, -2, "target");
  lua_pushlstring(L, target, plen);
  lua_setfield(L, -2, "path");
  if (q)
    lua_pushlstring(L, q + 1, h->url_len - plen - 1);
  else
    lua_pushliteral(L, "");
  lua_setfield(L, -2, "query");
  lua_createtable(L, 0, (int)h->nfields);
  for (size_t i = 0; i < h->nfields; i++) {
    const cpx_http_field_t *f = &h->fields[i];
    lua_pushlstring(L, h->buf + f->name_off, f->name_len);
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    if (lua_isstring(L, -1)) {
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, h->buf + f->value_off, f->value_len);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushlstring(L, h->buf + f->value_off, f->value_len);
    }
    lua_rawset(L, -3);
  }
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, h->body ? h->body : "", h->body_len);
  lua_setfield(L, -2, "body");
  lua_pushstring(L, r->remote);
  lua_setfield(L, -2, "remote");
  lua_pushstring(L, r->rid);
  lua_setfield(L, -2, "id");
  lua_pushfstring(L, "%d.%d", h->http_major, h->http_minor);
  lua_setfield(L, -2, "http_version");
}

void cpx_lua_on_request(cpx_server_t *srv, cpx_request_t *r) {
  cpx_worker_t *w = srv->data;
  if (w->vm->lane && cpx_lane_try(w, r))
    return;
  cpx__lua_start(w, w->vm, r, NULL, NULL);
}

/* A new lreq_t with its coroutine (a spare one when there is one),
 * registered as the owner of that thread. Host work: the caller holds
 * vm->host. */
static lreq_t *lreq_new(cpx_worker_t *w, cpx_vm_t *vm) {
  lua_State *L = vm->L;
  lreq_t *lr = calloc(1, sizeof(*lr));

  if (!lr)
    return NULL;
  lr->vm = vm;
  cpx_vm_ref(vm);
  lr->w = w;
  lr->handler_ref = LUA_NOREF;
  lr->box_ref = LUA_NOREF;
  lua_getfield(L, LUA_REGISTRYINDEX, REG_SPARE);
  {
    int n = (int)lua_objlen(L, -1);
    if (n > 0) {
      lua_rawgeti(L, -1, n);
      lua_pushnil(L);
      lua_rawseti(L, -3, n);
      lr->co = lua_tothread(L, -1);
    } else {
      lr->co = lua_newthread(L);
    }
  }
  lr->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, REG_THREADS);
  lua_rawgeti(L, LUA_REGISTRYINDEX, lr->co_ref);
  lua_pushlightuserdata(L, lr);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  return lr;
}

void cpx__lua_start(cpx_worker_t *w, cpx_vm_t *vm, cpx_request_t *r,
                    void (*push_extra)(lua_State *L, void *ud), void *ud) {
  lreq_t *lr;

  vm->host++;
  lr = lreq_new(w, vm);
  if (!lr) {
    vm->host--;
    cpx_errbody_respond(r, 503, "server_error", NULL, "out of memory");
    return;
  }
  lr->r = r;
  cpx_request_ref(r);
  r->handler_data = lr;
  r->on_abort = on_req_abort;
  r->on_drain = on_req_drain;
  r->on_shutdown = on_req_shutdown;

  lr->box = lua_newuserdata(lr->co, sizeof(req_box_t));
  lr->box->lr = lr;
  luaL_getmetatable(lr->co, MT_REQUEST);
  lua_setmetatable(lr->co, -2);
  lua_pushvalue(lr->co, -1);
  lr->box_ref = luaL_ref(lr->co, LUA_REGISTRYINDEX);
  /* co stack: box */
  lua_rawgeti(lr->co, LUA_REGISTRYINDEX, vm->handle_ref);
  lua_insert(lr->co, -2);
  push_request_info(lr->co, r);
  if (push_extra)
    push_extra(lr->co, ud);
  vm->host--;
  lreq_resume(lr, 2);
}

/* ---- coroutines without a request (cpx_task.h) -------------------------- */

int cpx__co_spawn(cpx_worker_t *w, cpx_vm_t *vm, int nargs, cpx_task_t *t,
                  const char *refuse) {
  lreq_t *lr;

  vm->host++;
  lr = lreq_new(w, vm);
  if (!lr) {
    lua_pop(vm->L, nargs + 1);
    vm->host--;
    return CPX_ENOMEM;
  }
  lr->task = t;
  lr->refuse = refuse;
  lua_xmove(vm->L, lr->co, nargs + 1);
  vm->host--;
  if (t)
    cpx__task_co_started(t, lr);
  lreq_resume(lr, nargs);
  return 0;
}

void cpx__co_cancel(lreq_t *lr, const char *reason) {
  if (lr->released || lr->co_done)
    return;
  if (!lr->refuse)
    lr->refuse = reason;
  if (lr->running || lr->wait == W_NONE)
    return;
  /* Cut the wait short now: the caller runs on the loop, outside any
   * resume of this coroutine. Its transfers are cancelled (nobody will
   * read them). */
  while (lr->fetches)
    lfetch_release(lr->fetches);
  end_wait(lr);
  lr->vm->host++;
  lua_pushnil(lr->co);
  lua_pushstring(lr->co, lr->refuse);
  lr->vm->host--;
  lreq_resume(lr, 2);
}

lreq_t *cpx__co_current(lua_State *L) {
  lreq_t *lr = current_lreq(L);
  return lr && lr->co == L && !lr->released ? lr : NULL;
}

const char *cpx__co_refusal(lua_State *L, lreq_t *lr) {
  const char *why = lr->aborted ? "client closed request" : lr->refuse;
  if (!why)
    return NULL;
  /* A loop that ignores the answer would spin on the loop thread forever
   * (nothing ever waits): after a few refusals the call raises. */
  if (++lr->refusals > 8)
    luaL_error(L, "%s", why);
  return why;
}

/* Pushes nil, why when co may not wait; returns 2 then, else 0. */
static int push_refusal(lua_State *L, lreq_t *lr) {
  const char *why = cpx__co_refusal(L, lr);
  if (!why)
    return 0;
  lua_pushnil(L);
  lua_pushstring(L, why);
  return 2;
}

static void on_sleep_done(uv_timer_t *t);

int cpx__co_wait_poll(lua_State *L, lreq_t *lr, uint64_t interval_ms,
                      int (*poll)(lua_State *co_L, void *ud),
                      void (*cleanup)(void *ud), void *ud) {
  if (!lr->sleep) {
    lr->sleep = malloc(sizeof(uv_timer_t));
    if (!lr->sleep) {
      if (cleanup)
        cleanup(ud);
      return luaL_error(L, "out of memory");
    }
    uv_timer_init(lr->w->loop, lr->sleep);
    lr->sleep->data = lr;
  }
  lr->poll = poll;
  lr->poll_cleanup = cleanup;
  lr->poll_ud = ud;
  lr->wait = W_POLL;
  uv_timer_start(lr->sleep, on_sleep_done, interval_ms, interval_ms);
  return lua_yield(L, 0);
}

void **cpx__co_locks(lreq_t *lr) {
  return &lr->locks;
}

uv_loop_t *cpx__co_loop(lreq_t *lr) {
  return lr->w->loop;
}

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
  rc = lua_pcall(L, nargs, 1, base + 1);
  if (rc != 0) {
    lr->vm->host++;
    if (rc == LUA_ERRMEM)
      lua_gc(L, LUA_GCCOLLECT, 0);
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

static int deliver_event(lreq_t *lr, const char *event, size_t elen,
                         const char *data, size_t dlen) {
  lua_State *L = lr->vm->L;
  int failed = 0;
  lr->vm->host++;
  lua_createtable(L, 0, 2);
  if (event) {
    lua_pushlstring(L, event, elen);
    lua_setfield(L, -2, "event");
  }
  lua_pushlstring(L, data, dlen);
  lua_setfield(L, -2, "data");
  lr->vm->host--;
  if (call_handler(lr, "on_event", 1, &failed))
    return write_result(lr) == CPX_ECLOSED ? 1 : 0;
  if (failed) {
    lr->handler_failed = 1;
    return 1;
  }
  return 0;
}

static int on_sse_event(void *ud, const cpx_sse_event_t *ev) {
  lreq_t *lr = ud;
  return deliver_event(lr, ev->event.n ? ev->event.p : NULL, ev->event.n,
                       ev->data.p, ev->data.n);
}

static int on_json_elem(void *ud, const char *elem, size_t len) {
  return deliver_event(ud, NULL, 0, elem, len);
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
static void pipe_note_abort(lreq_t *lr, const char *why) {
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

static void pipe_end(lreq_t *lr, const char *err) {
  lua_State *L = lr->vm->L;
  int failed = 0;

  if (lr->pipe_ended)
    return;
  lr->pipe_ended = 1;
  ka_stop(lr);
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
    pipe_note_abort(lr, err);
  }
  if (lr->pipe)
    lfetch_release(lr->pipe);
  lreq_maybe_release(lr);
}

/* ---- Lua: cpx.fetch and the fetch object -------------------------------- */

static double opt_num(lua_State *L, int idx, const char *k, double dflt) {
  double v;
  lua_getfield(L, idx, k);
  v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : dflt;
  lua_pop(L, 1);
  return v;
}

static lfetch_t *check_fetch(lua_State *L, int idx) {
  fetch_box_t *b = luaL_checkudata(L, idx, MT_FETCH);
  if (!b->lf)
    luaL_error(L, "fetch object is closed");
  return b->lf;
}

/* cpx.fetch{method=, url=, headers=, body=, proxy=, connect_timeout=,
 * first_byte_timeout=, idle_timeout= (seconds), max_body=} -> fetch | nil,
 * err. Yields until the status and headers arrive. */
static int l_fetch(lua_State *L) {
  lreq_t *lr = current_lreq(L);
  cpx_header_t hdrs[MAX_HEADERS];
  cpx_fetch_opts_t o;
  cpx_settings_t *s;
  lfetch_t *lf;
  int nh, rc;

  if (!lr || lr->co != L || lr->released)
    return luaL_error(
        L, "cpx.fetch can only run in a request's handler or a task");
  luaL_checktype(L, 1, LUA_TTABLE);
  if (push_refusal(L, lr))
    return 2;
  s = &lr->vm->settings;
  memset(&o, 0, sizeof(o));
  lua_getfield(L, 1, "url");
  o.url = lua_tostring(L, -1);
  lua_getfield(L, 1, "method");
  o.method = lua_tostring(L, -1);
  lua_getfield(L, 1, "body");
  if (lua_isstring(L, -1))
    o.body = lua_tolstring(L, -1, &o.body_len);
  lua_getfield(L, 1, "proxy");
  o.proxy = lua_tostring(L, -1);
  lua_getfield(L, 1, "headers");
  if (!o.url)
    return luaL_error(L, "cpx.fetch: url is required");
  nh = read_headers(L, lua_gettop(L), hdrs, MAX_HEADERS);
  if (nh < 0)
    return luaL_error(L, "cpx.fetch: headers must be a table");
  o.headers = hdrs;
  o.nheaders = (size_t)nh;
  o.connect_timeout_ms = (uint64_t)(opt_num(L, 1, "connect_timeout",
                                            s->upstream_connect_ms / 1000.0) *
                                    1000);
  o.first_byte_timeout_ms =
      (uint64_t)(opt_num(L, 1, "first_byte_timeout",
                         s->upstream_first_byte_ms / 1000.0) *
                 1000);
  o.idle_timeout_ms =
      (uint64_t)(opt_num(L, 1, "idle_timeout", s->upstream_idle_ms / 1000.0) *
                 1000);
  o.max_body = (size_t)opt_num(L, 1, "max_body", (double)s->upstream_max_body);

  lf = calloc(1, sizeof(*lf));
  if (!lf)
    return luaL_error(L, "out of memory");
  lf->lr = lr;
  rc = cpx_fetch_start(&lr->w->upstream, &o, on_fetch_event, lf, &lf->f);
  if (rc != 0) {
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
  lfetch_t *lf = check_fetch(L, 1);
  lua_pushinteger(L, lf->f->status);
  return 1;
}

static int l_fetch_headers(lua_State *L) {
  lfetch_t *lf = check_fetch(L, 1);
  push_header_table(L, lf->f->resp_headers ? lf->f->resp_headers : "",
                    lf->f->resp_headers_len);
  return 1;
}

/* fetch:body() -> string | nil, err. Yields until the transfer ends. */
static int l_fetch_body(lua_State *L) {
  lfetch_t *lf = check_fetch(L, 1);
  lreq_t *lr = lf->lr;
  if (lr->co != L)
    return luaL_error(L, "fetch:body can only run in a request's handler");
  if (!lf->f->done && push_refusal(L, lr))
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
  lfetch_t *lf = check_fetch(L, 1);
  lreq_t *lr = lf->lr;
  cpx_fetch_t *f = lf->f;

  if (lr->co != L)
    return luaL_error(L, "fetch:peek can only run in a request's handler");
  if (f->mode != 0)
    return luaL_error(L, "fetch:peek: the body is already being read");
  if (!f->done && push_refusal(L, lr))
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
    lfetch_release(b->lf);
  return 0;
}

static int l_fetch_gc(lua_State *L) {
  fetch_box_t *b = luaL_checkudata(L, 1, MT_FETCH);
  if (b->lf)
    b->lf->box = NULL; /* the request still owns and frees the fetch */
  return 0;
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

static void ka_stop(lreq_t *lr);

/* The answer after keep-alive blank lines: the status line is gone (200),
 * only the body can follow. */
static int nka_finish(lua_State *L, lreq_t *lr, int status, const char *body,
                      size_t blen) {
  int rc;
  ka_stop(lr);
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
  int nh = read_headers(L, 3, hdrs, MAX_HEADERS);
  if (nh < 0)
    return luaL_argerror(L, 3, "headers must be a table");
  if (status < 100 || status > 999)
    return luaL_argerror(L, 2, "invalid status");
  if (lr->nka_started)
    return nka_finish(L, lr, status, body, blen);
  if (lr->nka)
    ka_stop(lr);
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
  int nh = read_headers(L, 3, hdrs, MAX_HEADERS);
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

static void ka_stop(lreq_t *lr) {
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
  lfetch_t *lf = check_fetch(L, 2);
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

/* ---- Lua: misc ---------------------------------------------------------- */

static void on_sleep_done(uv_timer_t *t) {
  lreq_t *lr = t->data;
  if (lr->wait == W_POLL && !lr->running && !lr->released) {
    int n;
    lr->vm->host++;
    n = lr->poll(lr->co, lr->poll_ud);
    lr->vm->host--;
    if (n > 0) {
      uv_timer_stop(t);
      lr->wait = W_NONE;
      lr->poll = NULL;
      lr->poll_cleanup = NULL;
      lr->poll_ud = NULL;
      lreq_resume(lr, n);
    }
    return;
  }
  if (lr->wait != W_SLEEP)
    return;
  lr->wait = W_NONE;
  lua_pushboolean(lr->co, 1);
  lreq_resume(lr, 1);
}

static int l_sleep(lua_State *L) {
  lreq_t *lr = current_lreq(L);
  double sec = luaL_checknumber(L, 1);
  if (!lr || lr->co != L)
    return luaL_error(
        L, "cpx.sleep can only run in a request's handler or a task");
  if (push_refusal(L, lr))
    return 2;
  if (!lr->sleep) {
    lr->sleep = malloc(sizeof(uv_timer_t));
    if (!lr->sleep)
      return luaL_error(L, "out of memory");
    uv_timer_init(lr->w->loop, lr->sleep);
    lr->sleep->data = lr;
  }
  uv_timer_start(lr->sleep, on_sleep_done, sec > 0 ? (uint64_t)(sec * 1000) : 0,
                 0);
  lr->wait = W_SLEEP;
  return lua_yield(L, 0);
}

/* ---- Lua: token counting in the threadpool ------------------------------ */

/* Counting a large body takes milliseconds; on the loop it would stall
 * every other request of the worker, so the request phase counts in libuv's
 * threadpool. The text stays anchored in the registry while a thread reads
 * it (Lua strings never move). */
typedef struct {
  uv_work_t req;
  lreq_t *lr;
  const char *text;
  size_t len;
  int ref;
  char enc[32];
  size_t count;
  int rc;
} count_work_t;

static void count_work(uv_work_t *req) {
  count_work_t *w = cpx_container_of(req, count_work_t, req);
  w->rc = cpx_tokens_count(w->enc, w->text, w->len, &w->count);
}

static void count_done(uv_work_t *req, int status) {
  count_work_t *w = cpx_container_of(req, count_work_t, req);
  lreq_t *lr = w->lr;
  cpx_vm_t *vm = lr->vm;

  vm->host++;
  luaL_unref(vm->L, LUA_REGISTRYINDEX, w->ref);
  vm->host--;
  lr->pending_work--;
  if (!lr->released && lr->wait == W_WORK && !lr->running) {
    int nres = 1;
    lr->wait = W_NONE;
    vm->host++;
    if (status == 0 && w->rc == 0) {
      lua_pushnumber(lr->co, (lua_Number)w->count);
    } else {
      lua_pushnil(lr->co);
      lua_pushstring(lr->co,
                     status ? uv_strerror(status) : cpx_strerror(w->rc));
      nres = 2;
    }
    vm->host--;
    free(w);
    lreq_resume(lr, nres);
    return;
  }
  free(w);
  lreq_maybe_release(lr);
}

/* cpx.tokens.count_async(text[, encoding]) -> n | nil, err. Yields in the
 * request phase (elsewhere it counts synchronously). */
static int l_count_async(lua_State *L) {
  lreq_t *lr = current_lreq(L);
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *enc = luaL_optstring(L, 2, "o200k_base");
  count_work_t *w;

  /* Outside a coroutine, or in one that may no longer wait (a premature
   * task): count here and now. */
  if (!lr || lr->co != L || lr->released || lr->refuse || lr->aborted) {
    size_t n;
    int rc = cpx_tokens_count(enc, text, len, &n);
    if (rc != 0) {
      lua_pushnil(L);
      lua_pushstring(L, cpx_strerror(rc));
      return 2;
    }
    lua_pushnumber(L, (lua_Number)n);
    return 1;
  }
  w = calloc(1, sizeof(*w));
  if (!w)
    return luaL_error(L, "out of memory");
  w->lr = lr;
  w->text = text;
  w->len = len;
  snprintf(w->enc, sizeof(w->enc), "%s", enc);
  lua_pushvalue(L, 1);
  w->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (uv_queue_work(lr->w->loop, &w->req, count_work, count_done) != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, w->ref);
    free(w);
    lua_pushnil(L);
    lua_pushliteral(L, "cannot queue the count");
    return 2;
  }
  lr->pending_work++;
  lr->wait = W_WORK;
  return lua_yield(L, 0);
}

/* ---- generic threadpool jobs (cpx_lua_await) ---------------------------- */

static lreq_t *request_of(lua_State *L) {
  lreq_t *lr;
  /* The plain-LuaJIT module (busted) has no request table. */
  lua_getfield(L, LUA_REGISTRYINDEX, REG_THREADS);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  lua_pop(L, 1);
  lr = current_lreq(L);
  return lr && lr->co == L && !lr->released ? lr : NULL;
}

int cpx_lua_in_request(lua_State *L) {
  return request_of(L) != NULL;
}

static void job_work(uv_work_t *req) {
  cpx_lua_job_t *job = cpx_container_of(req, cpx_lua_job_t, req);
  job->work(job);
}

static void job_done(uv_work_t *req, int status) {
  cpx_lua_job_t *job = cpx_container_of(req, cpx_lua_job_t, req);
  lreq_t *lr = job->lr;
  cpx_vm_t *vm = lr->vm;

  lr->pending_work--;
  if (!lr->released && lr->wait == W_WORK && !lr->running) {
    int nres;
    lr->wait = W_NONE;
    vm->host++;
    if (status == 0) {
      nres = job->push(lr->co, job);
    } else {
      lua_pushnil(lr->co);
      lua_pushstring(lr->co, uv_strerror(status));
      nres = 2;
    }
    vm->host--;
    job->done(job);
    lreq_resume(lr, nres);
    return;
  }
  job->done(job);
  lreq_maybe_release(lr);
}

int cpx_lua_await(lua_State *L, cpx_lua_job_t *job) {
  lreq_t *lr = request_of(L);
  int n;

  if (!lr) {
    job->work(job);
    n = job->push(L, job);
    job->done(job);
    return n;
  }
  job->lr = lr;
  if (uv_queue_work(lr->w->loop, &job->req, job_work, job_done) != 0) {
    job->done(job);
    lua_pushnil(L);
    lua_pushliteral(L, "cannot queue the job");
    return 2;
  }
  lr->pending_work++;
  lr->wait = W_WORK;
  return lua_yield(L, 0);
}

static int l_log(lua_State *L) {
  const char *lvl = luaL_checkstring(L, 1);
  int level = cpx_log_level_from_name(lvl);
  const char *rid = NULL;
  lreq_t *lr;
  int n = lua_gettop(L);
  if (level < 0)
    return luaL_argerror(L, 1, "level must be debug, info, warn or error");
  if (level < cpx_log_get_level())
    return 0;
  lr = current_lreq(L);
  if (lr && !lr->released && lr->r)
    rid = lr->r->rid;
  for (int i = 2; i <= n; i++) {
    lua_getglobal(L, "tostring");
    lua_pushvalue(L, i);
    lua_call(L, 1, 1);
    if (i > 2) {
      lua_pushliteral(L, " ");
      lua_insert(L, -2);
    }
  }
  lua_concat(L, n > 1 ? 2 * (n - 1) - 1 : 0);
  if (n <= 1)
    lua_pushliteral(L, "");
  cpx_log(level, rid, "%s", lua_tostring(L, -1));
  return 0;
}

/* cpx.secure_compare(a, b): equal in time that depends on neither value:
 * both sides go through HMAC-SHA256 under a per-process random key first,
 * so even the lengths do not leak. */
/* HMAC both sides with a per-process random key, then compare the digests
 * with CRYPTO_memcmp: neither the bytes nor the length of the secret leak
 * through timing. */
static unsigned char secure_key[32];
static uv_once_t secure_once = UV_ONCE_INIT;
static int secure_ready;

static void secure_init(void) {
  secure_ready = RAND_bytes(secure_key, sizeof(secure_key)) == 1;
}

int cpx_secure_equal(const char *a, size_t na, const char *b, size_t nb) {
  unsigned char ha[32], hb[32];
  unsigned int la = 0, lb = 0;
  uv_once(&secure_once, secure_init);
  if (!secure_ready)
    return 0;
  HMAC(EVP_sha256(), secure_key, sizeof(secure_key), (const unsigned char *)a,
       na, ha, &la);
  HMAC(EVP_sha256(), secure_key, sizeof(secure_key), (const unsigned char *)b,
       nb, hb, &lb);
  return la == 32 && lb == 32 && CRYPTO_memcmp(ha, hb, 32) == 0;
}

static int l_secure_compare(lua_State *L) {
  size_t na, nb;
  const char *a = luaL_checklstring(L, 1, &na);
  const char *b = luaL_checklstring(L, 2, &nb);
  uv_once(&secure_once, secure_init);
  if (!secure_ready)
    return luaL_error(L, "no randomness");
  lua_pushboolean(L, cpx_secure_equal(a, na, b, nb));
  return 1;
}

static int l_log_level(lua_State *L) {
  if (lua_isstring(L, 1)) {
    int level = cpx_log_level_from_name(lua_tostring(L, 1));
    if (level < 0)
      return luaL_argerror(L, 1, "unknown level");
    cpx_log_set_level(level);
  }
  lua_pushstring(L, cpx_log_level_name(cpx_log_get_level()));
  return 1;
}

static int l_generation(lua_State *L) {
  cpx_vm_t *vm;
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.vm");
  vm = lua_touserdata(L, -1);
  lua_pushinteger(L, vm ? (lua_Integer)vm->gen : 0);
  return 1;
}

static int l_worker_id(lua_State *L) {
  cpx_worker_t *w;
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.worker");
  w = lua_touserdata(L, -1);
  lua_pushinteger(L, w ? w->id : 0);
  return 1;
}

void cpx__lua_api_register(lua_State *L) {
  static const luaL_Reg req_methods[] = {
      {"respond", l_req_respond},     {"start", l_req_start},
      {"write", l_req_write},         {"finish", l_req_finish},
      {"pipe", l_req_pipe},           {"closed", l_req_closed},
      {"sent", l_req_sent},           {"status", l_req_status},
      {"keepalive", l_req_keepalive}, {NULL, NULL}};
  static const luaL_Reg fetch_methods[] = {
      {"status", l_fetch_status}, {"headers", l_fetch_headers},
      {"body", l_fetch_body},     {"peek", l_fetch_peek},
      {"close", l_fetch_close},   {NULL, NULL}};
  int t = lua_gettop(L);

  luaL_newmetatable(L, MT_REQUEST);
  lua_newtable(L);
  luaL_register(L, NULL, req_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newmetatable(L, MT_FETCH);
  lua_newtable(L);
  luaL_register(L, NULL, fetch_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_fetch_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, REG_THREADS);
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, REG_SPARE);

  lua_pushcfunction(L, l_fetch);
  lua_setfield(L, t, "fetch");
  lua_pushcfunction(L, l_sleep);
  lua_setfield(L, t, "sleep");
  lua_pushcfunction(L, l_log);
  lua_setfield(L, t, "log");
  lua_pushcfunction(L, l_log_level);
  lua_setfield(L, t, "log_level");
  lua_pushcfunction(L, l_secure_compare);
  lua_setfield(L, t, "secure_compare");
  lua_pushcfunction(L, l_generation);
  lua_setfield(L, t, "generation");
  lua_pushcfunction(L, l_worker_id);
  lua_setfield(L, t, "worker_id");
  lua_pushvalue(L, t);
  cpx__task_lua_register(L);
  lua_pop(L, 1);
  lua_getfield(L, t, "tokens");
  if (lua_istable(L, -1)) {
    lua_pushcfunction(L, l_count_async);
    lua_setfield(L, -2, "count_async");
  }
  lua_pop(L, 1);
  /* debug itself stays out of the sandbox; its traceback is harmless. */
  lua_getglobal(L, "debug");
  lua_getfield(L, -1, "traceback");
  lua_setfield(L, t, "traceback");
  lua_pop(L, 1);
}

int cpx_worker_init_lua(cpx_worker_t *w) {
  uv_idle_init(w->loop, &w->resume_idle);
  w->resume_idle.data = w;
  cpx_lane_records_init(w);
  return 0;
}

static void noop_close(uv_handle_t *h) {
  CPX_UNUSED(h);
}

void cpx_worker_close_lua(cpx_worker_t *w) {
  /* Resumes queued by the drain must still run, or their coroutines (and
   * the generations they pin) would never be released. */
  if (w->resume_queue)
    on_resume_idle(&w->resume_idle);
  uv_close((uv_handle_t *)&w->resume_idle, noop_close);
  cpx_lane_records_close(w);
  if (w->vm) {
    cpx_vm_unref(w->vm);
    w->vm = NULL;
  }
}
