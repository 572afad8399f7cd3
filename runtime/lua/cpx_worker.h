/* cpx_worker.h: one loop thread (a worker) and what it owns: the listener,
 * the upstream clients, its current VM generation and the idle handles that
 * run deferred work after a loop iteration.
 *
 * A worker is set up by main.c (or cpx_login.c for a login's private loop)
 * and lives as long as its loop; everything here runs on that thread.
 */
#ifndef CPX_WORKER_H
#define CPX_WORKER_H

#include <uv.h>

#include "cpx_h1.h"
#include "cpx_lua.h"
#include "cpx_server.h"
#include "cpx_upstream.h"

/* Everything one loop thread owns. */
struct cpx_worker_s {
  uv_loop_t *loop;
  int id;
  cpx_server_t server;
  cpx_upstream_t upstream;
  cpx_h1_pool_t h1; /* the fast path's upstream connections */
  cpx_vm_t *vm;     /* current generation (one reference) */
  uv_idle_t resume_idle;
  /* coroutines to resume with an error after an abort or a drain
   * (cpx_co.c; linked through lreq_t.next_resume) */
  struct lreq_s *resume_queue;
  /* The fast lane's request records, delivered to Lua (rt.record) after
   * the loop iteration that finished them (cpx_lane.c owns the list). */
  uv_idle_t record_idle;
  void *records;
  size_t nrecords;
  char config_path[4096];
  char lua_dir[4096]; /* built-in lua/ directory */
  unsigned next_gen;
  int timers_pending; /* armed timers of every generation (lua.max-timers) */
  int tasks_running;  /* task coroutines not finished yet */
  /* Asks for a fresh generation in place of generation gen, which stays
   * at its memory cap (cpx_vm_leave); it runs later on this loop, as a
   * reload of this worker. NULL: no recycling (a login's loop). */
  void (*recycle)(cpx_worker_t *w, unsigned gen);
};

/* Worker glue: set the loop first, then init. */
int cpx_worker_init_lua(cpx_worker_t *w);
void cpx_worker_close_lua(cpx_worker_t *w);

#endif /* CPX_WORKER_H */
