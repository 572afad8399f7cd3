/* cpx_co.c: request coroutines (and the coroutines of background tasks):
 * their start, resume, abort, drain and release, the waits they share
 * (cpx.sleep, polling waits, threadpool jobs) and the registration of the
 * request-bound part of the `cpx` Lua API.
 *
 * A background task's run (cpx_task.c) is an lreq_t without a request
 * (r == NULL): the same coroutine, fetch, sleep and wait machinery, no
 * client to answer.
 *
 * Yielding functions (cpx.fetch, fetch:body, cpx.sleep) may only run in the
 * request's own coroutine; stream handlers run under lua_pcall on the main
 * state and can never yield. Coroutines are resumed from loop callbacks
 * only, never from inside a curl callback.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx_errbody.h"
#include "cpx_errreply.h"
#include "cpx_lane.h"
#include "cpx_lane_lua.h"
#include "cpx_log.h"
#include "cpx_lua_int.h"

/* ---- helpers ------------------------------------------------------------ */

/* The lreq_t registered for the thread L (released ones too), or NULL. */
static lreq_t *lreq_of(lua_State *L) {
  lreq_t *lr;
  lua_getfield(L, LUA_REGISTRYINDEX, REG_THREADS);
  if (!lua_istable(L, -1)) { /* the plain-LuaJIT module (busted) */
    lua_pop(L, 1);
    return NULL;
  }
  lua_pushthread(L);
  lua_rawget(L, -2);
  lr = lua_touserdata(L, -1);
  lua_pop(L, 2);
  return lr;
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
    /* a sleep(0) ending; an abort or refusal queued on it still wins */
    int zero = lr->sleep_zero && !lr->aborted && !lr->refuse;
    lr->sleep_zero = 0;
    if (lr->released || lr->co_done || lr->wait == W_NONE)
      continue;
    if (zero && lr->wait != W_SLEEP)
      continue; /* cut short by a cancel, now waiting on something else */
    end_wait(lr);
    lr->vm->host++;
    if (zero) {
      lua_pushboolean(lr->co, 1);
      lr->vm->host--;
      cpx__lreq_resume(lr, 1);
      continue;
    }
    lua_pushnil(lr->co);
    lua_pushstring(lr->co, lr->aborted ? "client closed request" : lr->refuse);
    lr->vm->host--;
    cpx__lreq_resume(lr, 2);
  }
}

static void queue_resume(lreq_t *lr) {
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
    cpx__lfetch_release(lr->fetches);
  if (lr->sleep) {
    uv_close((uv_handle_t *)lr->sleep, on_sleep_closed);
    lr->sleep = NULL;
  }
  cpx__ka_stop(lr);
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
    lreq_t **pp = &lr->w->resume_queue;
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

void cpx__lreq_maybe_release(lreq_t *lr) {
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

void cpx__lreq_resume(lreq_t *lr, int nargs) {
  lua_State *co = lr->co;
  int rc;

  cpx_vm_t *vm = lr->vm;
  int saved_host = vm->host;

  lr->running = 1;
  cpx_vm_enter(vm);
  vm->host = 0;
  rc = lua_resume(co, nargs);
  vm->host = saved_host + 1;
  cpx_vm_leave(vm);
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
      cpx__lreq_maybe_release(lr);
    }
    return;
  }
  if (rc != 0) {
    const char *msg = lua_tostring(co, -1);
    lr->co_failed = 1;
    luaL_traceback(vm->L, co, msg ? msg : "(error object)", 0);
    if (lr->r)
      cpx_log_error(lr->r->rid, "request handler failed: %s",
                    lua_tostring(vm->L, -1));
    else
      cpx_log_error(NULL, "task failed (worker %d, generation %u): %s",
                    lr->w->id, vm->gen, lua_tostring(vm->L, -1));
    lua_pop(vm->L, 1);
    if (rc == LUA_ERRMEM) {
      char m[160];
      snprintf(m, sizeof(m),
               "script ran out of memory: the Lua memory cap is reached "
               "(lua.memory-limit-mb: %zu)",
               vm->cap.limit / (1024 * 1024));
      respond_internal_error(lr, m);
    } else {
      respond_internal_error(lr, "internal error in request handler");
    }
  }
  vm->host--;
  lr->co_done = 1;
  lr->wait = W_NONE;
  cpx__lreq_maybe_release(lr);
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
    cpx__pipe_note_abort(lr, "client closed request");
  }
  while (lr->fetches)
    cpx__lfetch_release(lr->fetches);
  if (lr->sleep) {
    uv_timer_stop(lr->sleep);
  }
  if (!lr->co_done && lr->wait != W_NONE && !lr->running)
    queue_resume(lr);
  else
    cpx__lreq_maybe_release(lr);
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
    cpx__pipe_end(lr, "server shutting down");
    return;
  }
  if (!lr->co_done && lr->wait != W_NONE && !lr->running) {
    while (lr->fetches)
      cpx__lfetch_release(lr->fetches);
    end_wait(lr); /* a lock wait's state, the sleep timer */
    lr->vm->host++;
    lua_pushnil(lr->co);
    lua_pushliteral(lr->co, "server shutting down");
    lr->vm->host--;
    cpx__lreq_resume(lr, 2);
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
  /* Both paths record the request (rt.record), and the record's access-log
   * subscriber (rt.access_log) writes its line. */
  cpx_access_log_claim(r);
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
  cpx__lreq_resume(lr, 2);
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
  cpx__lreq_resume(lr, nargs);
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
    cpx__lfetch_release(lr->fetches);
  end_wait(lr);
  lr->vm->host++;
  lua_pushnil(lr->co);
  lua_pushstring(lr->co, lr->refuse);
  lr->vm->host--;
  cpx__lreq_resume(lr, 2);
}

lreq_t *cpx__co_current(lua_State *L) {
  lreq_t *lr = lreq_of(L);
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
int cpx__push_refusal(lua_State *L, lreq_t *lr) {
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

/* ---- cpx.sleep ----------------------------------------------------------- */

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
      cpx__lreq_resume(lr, n);
    }
    return;
  }
  if (lr->wait != W_SLEEP)
    return;
  lr->wait = W_NONE;
  lua_pushboolean(lr->co, 1);
  cpx__lreq_resume(lr, 1);
}

static int l_sleep(lua_State *L) {
  lreq_t *lr = cpx__co_current(L);
  double sec = luaL_checknumber(L, 1);
  if (!lr)
    return luaL_error(
        L, "cpx.sleep can only run in a request's handler or a task");
  if (cpx__push_refusal(L, lr))
    return 2;
  if (!(sec > 0)) { /* 0, negative, NaN */
    /* The next loop turn, from the idle queue: a 0 ms timer is due again
     * at once, and libuv (1.44) runs a timer started by a timer callback
     * in the same pass, so "while not done do cpx.sleep(0) end" never left
     * the timers to poll for the I/O or threadpool result it waits for. */
    lr->wait = W_SLEEP;
    lr->sleep_zero = 1;
    queue_resume(lr);
    return lua_yield(L, 0);
  }
  if (!lr->sleep) {
    lr->sleep = malloc(sizeof(uv_timer_t));
    if (!lr->sleep)
      return luaL_error(L, "out of memory");
    uv_timer_init(lr->w->loop, lr->sleep);
    lr->sleep->data = lr;
  }
  uv_timer_start(lr->sleep, on_sleep_done, (uint64_t)(sec * 1000), 0);
  lr->wait = W_SLEEP;
  return lua_yield(L, 0);
}

/* ---- generic threadpool jobs (cpx_lua_await) ---------------------------- */

int cpx_lua_in_request(lua_State *L) {
  return cpx__co_current(L) != NULL;
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
    cpx__lreq_resume(lr, nres);
    return;
  }
  job->done(job);
  cpx__lreq_maybe_release(lr);
}

int cpx_lua_await(lua_State *L, cpx_lua_job_t *job) {
  lreq_t *lr = cpx__co_current(L);
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

void cpx__co_register(lua_State *L, int t) {
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, REG_THREADS);
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, REG_SPARE);
  lua_pushcfunction(L, l_sleep);
  lua_setfield(L, t, "sleep");
}

void cpx__lua_api_register(lua_State *L) {
  int t = lua_gettop(L);

  cpx__co_register(L, t);
  cpx__fetch_lua_register(L, t);
  cpx__req_lua_register(L);
  cpx__misc_lua_register(L, t);
  lua_pushvalue(L, t);
  cpx__task_lua_register(L);
  lua_pop(L, 1);
  cpx__count_lua_register(L, t);
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
