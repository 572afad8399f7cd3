/* cpx_lua_int.h: what the request-coroutine binding files share (private to
 * runtime/lua/: cpx_co.c, cpx_fetch_lua.c, cpx_req_lua.c, cpx_tokens_lua.c,
 * cpx_misc_lua.c).
 *
 * Per request there is one lreq_t (C heap) tying together the server
 * request, the coroutine running rt.server's handler, the upstream fetches
 * it started and, for streamed answers, the pipe that carries upstream
 * events to the client through a Lua handler. A background task's run
 * (cpx_task.c) is an lreq_t without a request (r == NULL).
 */
#ifndef CPX_LUA_INT_H
#define CPX_LUA_INT_H

#include <lua.h>

#include "cpx_lua.h"
#include "cpx_sse.h"
#include "cpx_task.h"
#include "cpx_worker.h"

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
  /* fetch:peek(): a private SSE parser over the held bytes (which stay
   * held, so a later pipe replays them) and a queue of parsed events. */
  int peeking;
  cpx_sse_t peek;
  size_t peek_fed;
  int peek_ref;  /* registry ref of the queue table */
  int peek_head; /* next index to hand out */
  int peek_tail; /* last index stored */
  /* The request body string, anchored in the registry for the transfer's
   * life: both clients send it in place (LUA_NOREF when none). */
  int body_ref;
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
  /* handler.on_events: the events of one upstream read go to Lua in one
   * call (batch_n: events gathered in the table on the main stack). */
  int batch, batch_n;
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
  int sleep_zero; /* queued by cpx.sleep(0): resumed with true, not an error */
  lreq_t *next_resume;
};

/* ---- cpx_co.c ------------------------------------------------------------ */

/* Resumes lr's coroutine with the nargs values at the top of its stack. */
void cpx__lreq_resume(lreq_t *lr, int nargs);
/* Frees lr once nothing refers to it any more (its coroutine ended, its
 * pipe ended, no threadpool job points at it); else does nothing. */
void cpx__lreq_maybe_release(lreq_t *lr);
/* Pushes nil, why when lr may not wait; returns 2 then, else 0. */
int cpx__push_refusal(lua_State *L, lreq_t *lr);
void cpx__co_register(lua_State *L, int t);

/* ---- cpx_fetch_lua.c ----------------------------------------------------- */

int cpx__read_headers(lua_State *L, int idx, cpx_header_t *out, int max);
void cpx__lfetch_release(lfetch_t *lf);
lfetch_t *cpx__check_fetch(lua_State *L, int idx);
void cpx__fetch_lua_register(lua_State *L, int t);

/* ---- cpx_req_lua.c ------------------------------------------------------- */

void cpx__pipe_end(lreq_t *lr, const char *err);
void cpx__pipe_note_abort(lreq_t *lr, const char *why);
void cpx__ka_stop(lreq_t *lr);
void cpx__req_lua_register(lua_State *L);

/* ---- cpx_tokens_lua.c, cpx_misc_lua.c ----------------------------------- */

void cpx__count_lua_register(lua_State *L, int t);
void cpx__misc_lua_register(lua_State *L, int t);

#endif /* CPX_LUA_INT_H */
