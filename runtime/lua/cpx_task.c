/* cpx_task.c: background tasks, `cpx.timer.at` and `cpx.timer.every`
 * (ngx.timer.at / ngx.timer.every semantics). See cpx_task.h.
 *
 *   cpx.timer.at(delay, fn, ...) -> true | nil, err
 *   cpx.timer.every(interval, fn, ...) -> true | nil, err
 *       fn(premature, ...) runs in its own coroutine, with no request;
 *       premature is true when the generation retires before the timer
 *       fired (a reload, the drain): the run is then immediate and any
 *       yielding call in it returns nil, reason.
 *   cpx.timer.pending_count() / cpx.timer.running_count() (this worker)
 *
 * A task is pending while its timer is armed (an `every` task always is,
 * until its generation retires); lua.max-timers bounds the pending tasks
 * of a worker. An `every` tick that comes while the previous run is still
 * going is skipped, so runs of one task never overlap.
 */
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx_log.h"
#include "cpx_bindings.h"
#include "cpx_task.h"
#include "cpx_worker.h"

/* Owned by its generation's list from creation until task_free (no
 * further tick and no run going). */
struct cpx_task_s {
  cpx_worker_t *w;
  cpx_vm_t *vm; /* one reference */
  cpx_task_t *next;
  uv_timer_t *timer; /* heap; freed in its close callback */
  int fn_ref;
  int args_ref; /* registry table {...} of the extra arguments */
  int nargs;
  uint64_t interval_ms; /* > 0 for every */
  int pending;          /* armed; counted in w->timers_pending */
  int retiring;         /* seen by cpx__tasks_retire */
  cpx_co_t *co;         /* the run going on, or NULL */
};

static void on_timer_closed(uv_handle_t *h) {
  free(h);
}

static void set_pending(cpx_task_t *t, int on) {
  if (t->pending == on)
    return;
  t->pending = on;
  t->w->timers_pending += on ? 1 : -1;
}

static void task_free(cpx_task_t *t) {
  cpx_vm_t *vm = t->vm;
  cpx_task_t **pp = &vm->tasks;
  while (*pp && *pp != t)
    pp = &(*pp)->next;
  if (*pp)
    *pp = t->next;
  set_pending(t, 0);
  if (t->timer) {
    uv_close((uv_handle_t *)t->timer, on_timer_closed);
    t->timer = NULL;
  }
  vm->host++;
  luaL_unref(vm->L, LUA_REGISTRYINDEX, t->fn_ref);
  luaL_unref(vm->L, LUA_REGISTRYINDEX, t->args_ref);
  vm->host--;
  free(t);
  cpx_vm_unref(vm);
}

/* Starts a run: fn(premature, ...) in a new coroutine. Returns 0 when it
 * started (from then on its end decides the task's life: the run may even
 * have ended, and freed t, before this returns) or -1. */
static int task_run(cpx_task_t *t, int premature, const char *refuse) {
  lua_State *L = t->vm->L;
  t->vm->host++;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
  lua_pushboolean(L, premature);
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->args_ref);
  for (int i = 1; i <= t->nargs; i++)
    lua_rawgeti(L, -i, i);
  lua_remove(L, -(t->nargs + 1));
  t->vm->host--;
  t->w->tasks_running++;
  if (cpx__co_spawn(t->w, t->vm, t->nargs + 1, t, refuse) != 0) {
    t->w->tasks_running--;
    cpx_log_error(NULL, "task not run (worker %d): out of memory", t->w->id);
    return -1;
  }
  return 0;
}

void cpx__task_co_started(cpx_task_t *t, cpx_co_t *co) {
  t->co = co;
}

void cpx__task_co_done(cpx_task_t *t, cpx_co_t *co) {
  if (t->co == co)
    t->co = NULL;
  t->w->tasks_running--;
  if (!t->pending)
    task_free(t);
}

static void on_tick(uv_timer_t *h) {
  cpx_task_t *t = h->data;
  if (t->vm->retired)
    return;
  if (!t->interval_ms) {
    set_pending(t, 0);
    uv_close((uv_handle_t *)t->timer, on_timer_closed);
    t->timer = NULL;
    if (task_run(t, 0, NULL) != 0)
      task_free(t);
    return;
  }
  if (t->co) {
    cpx_log_debug(NULL, "timer.every: previous run still going; tick skipped");
    return;
  }
  task_run(t, 0, NULL);
}

static cpx_vm_t *vm_of(lua_State *L) {
  cpx_vm_t *vm;
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.vm");
  vm = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return vm;
}

static int timer_new(lua_State *L, int every) {
  cpx_vm_t *vm = vm_of(L);
  double delay = luaL_checknumber(L, 1);
  int nargs = lua_gettop(L) - 2;
  cpx_worker_t *w;
  cpx_task_t *t;

  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (delay < 0 || delay != delay || (every && delay <= 0))
    return luaL_argerror(L, 1,
                         every ? "interval must be > 0" : "delay must be >= 0");
  if (!vm || !vm->live || !vm->worker) {
    lua_pushnil(L);
    lua_pushliteral(L, "timers start once the worker serves (init_worker or "
                       "a request)");
    return 2;
  }
  if (vm->retired) {
    lua_pushnil(L);
    lua_pushstring(L, vm->retired);
    return 2;
  }
  w = vm->worker;
  if (w->timers_pending >= vm->settings.max_timers) {
    lua_pushnil(L);
    lua_pushliteral(L, "too many pending timers (lua.max-timers)");
    return 2;
  }
  t = calloc(1, sizeof(*t));
  if (t)
    t->timer = malloc(sizeof(uv_timer_t));
  if (!t || !t->timer) {
    free(t);
    lua_pushnil(L);
    lua_pushliteral(L, "out of memory");
    return 2;
  }
  t->w = w;
  t->vm = vm;
  cpx_vm_ref(vm);
  t->nargs = nargs;
  t->interval_ms = every ? (uint64_t)(delay * 1000) : 0;
  if (every && t->interval_ms == 0)
    t->interval_ms = 1;
  lua_createtable(L, nargs, 0);
  for (int i = 1; i <= nargs; i++) {
    lua_pushvalue(L, 2 + i);
    lua_rawseti(L, -2, i);
  }
  t->args_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, 2);
  t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  t->next = vm->tasks;
  vm->tasks = t;
  uv_timer_init(w->loop, t->timer);
  t->timer->data = t;
  set_pending(t, 1);
  uv_timer_start(t->timer, on_tick,
                 every ? t->interval_ms : (uint64_t)(delay * 1000),
                 t->interval_ms);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_timer_at(lua_State *L) {
  return timer_new(L, 0);
}

static int l_timer_every(lua_State *L) {
  return timer_new(L, 1);
}

static int l_pending_count(lua_State *L) {
  cpx_vm_t *vm = vm_of(L);
  lua_pushinteger(L, vm && vm->worker ? vm->worker->timers_pending : 0);
  return 1;
}

static int l_running_count(lua_State *L) {
  cpx_vm_t *vm = vm_of(L);
  lua_pushinteger(L, vm && vm->worker ? vm->worker->tasks_running : 0);
  return 1;
}

void cpx__tasks_live(cpx_vm_t *vm) {
  vm->live = 1;
}

void cpx__tasks_retire(cpx_vm_t *vm, const char *reason) {
  cpx_task_t *t;
  if (vm->retired)
    return;
  vm->retired = reason;
  cpx_vm_ref(vm);
  /* A run may end (and free its task) while we go: start over from the
   * head each time, every task is handled once. */
  for (;;) {
    for (t = vm->tasks; t && t->retiring; t = t->next)
      ;
    if (!t)
      break;
    t->retiring = 1;
    if (t->timer)
      uv_timer_stop(t->timer);
    if (t->co) {
      set_pending(t, 0);
      cpx__co_cancel(t->co, reason);
    } else if (t->pending) {
      set_pending(t, 0);
      if (task_run(t, 1, reason) != 0)
        task_free(t);
    } else {
      task_free(t);
    }
  }
  cpx_vm_unref(vm);
}

void cpx__task_lua_register(lua_State *L) {
  static const luaL_Reg fns[] = {{"at", l_timer_at},
                                 {"every", l_timer_every},
                                 {"pending_count", l_pending_count},
                                 {"running_count", l_running_count},
                                 {NULL, NULL}};
  cpx_lua_register_table(L, "timer", fns);
  cpx__lock_lua_register(L);
  cpx__shared_lua_register(L);
}
