/* cpx_task.h: background tasks (`cpx.timer.at`, `cpx.timer.every`), the
 * coroutines they run in, and the locks coroutines hold (`cpx.lock`).
 *
 * A task's function runs in a coroutine of the same kind as a request's
 * (cpx_co.c, an lreq_t without a request), so cpx.fetch, fetch:body,
 * cpx.sleep and cpx.lock work in it unchanged. Tasks belong to the VM
 * generation that created them: retiring a generation (a reload, or the
 * drain at SIGTERM) runs its pending timers at once with premature = true
 * and makes every yielding call of its running tasks return nil, reason,
 * so the old VM can be closed.
 *
 * Everything here runs on the worker's loop thread.
 */
#ifndef CPX_TASK_H
#define CPX_TASK_H

#include "cpx_lua.h"

typedef struct cpx_task_s cpx_task_t;
/* A coroutine run by the runtime: a request's or a task's (lreq_t). */
typedef struct lreq_s cpx_co_t;

/* ---- cpx_co.c: the coroutine side --------------------------------------- */

/* Runs the function below `nargs` arguments at the top of vm->L in a new
 * coroutine with no request, on behalf of task t (may be NULL). refuse, a
 * static string or NULL: when set, every yielding call returns nil, refuse
 * (a premature run). Pops the function and arguments. Returns 0 or
 * CPX_ENOMEM. The coroutine may finish before this returns. */
int cpx__co_spawn(cpx_worker_t *w, cpx_vm_t *vm, int nargs, cpx_task_t *t,
                  const char *refuse);

/* From now on every yielding call of co returns nil, reason (a static
 * string); a call it is waiting in ends now with that answer. */
void cpx__co_cancel(cpx_co_t *co, const char *reason);

/* The runtime coroutine whose Lua thread is L, or NULL (the main state, or
 * a coroutine a script made itself). */
cpx_co_t *cpx__co_current(lua_State *L);

/* Why co may not wait now (a static string), or NULL. After a few refusals
 * a call raises instead: a task looping on refused calls would otherwise
 * never end. Pushes nothing. */
const char *cpx__co_refusal(lua_State *L, cpx_co_t *co);

/* Waits by polling: every interval_ms poll(co_L, ud) runs; when it pushed
 * results onto co_L and returned their count the coroutine resumes with
 * them; 0 keeps waiting. When the wait is cut short (the request aborted,
 * the generation retired) cleanup(ud) runs and the call returns nil,
 * reason. Returns lua_yield's result: `return cpx__co_wait_poll(...)`. */
int cpx__co_wait_poll(lua_State *L, cpx_co_t *co, uint64_t interval_ms,
                      int (*poll)(lua_State *co_L, void *ud),
                      void (*cleanup)(void *ud), void *ud);

/* The head of co's list of held locks (owned by cpx_lock_lua.c). */
void **cpx__co_locks(cpx_co_t *co);
/* The loop co runs on. */
uv_loop_t *cpx__co_loop(cpx_co_t *co);

/* ---- cpx_task.c ---------------------------------------------------------- */

/* A run of t started in co (cpx__co_spawn calls it before the first
 * resume). */
void cpx__task_co_started(cpx_task_t *t, cpx_co_t *co);
/* The coroutine that ran a run of t has ended (called while it is
 * released). Frees t when it has no further tick. */
void cpx__task_co_done(cpx_task_t *t, cpx_co_t *co);

/* Registers cpx.timer (and, through cpx__lock_lua_register, cpx.lock)
 * into the table at the top of L. */
void cpx__task_lua_register(lua_State *L);

/* ---- cpx_lock_lua.c: cpx.lock -------------------------------------------- */

void cpx__lock_lua_register(lua_State *L);
/* cpx_shared.c: cpx.shared, strings every worker sees. */
void cpx__shared_lua_register(lua_State *L);
/* Releases every lock co still holds: at its end, at an abort. */
void cpx__co_release_locks(cpx_co_t *co);

/* Starts the generation's life on its worker: tasks may be created from
 * now on. Then app.init_worker() runs (see cpx_vm_init_worker). */
void cpx__tasks_live(cpx_vm_t *vm);

/* Retires the generation's tasks (see above); reason is a static string
 * ("generation retired", "server shutting down"). No new task starts on
 * vm afterwards. */
void cpx__tasks_retire(cpx_vm_t *vm, const char *reason);

#endif /* CPX_TASK_H */
