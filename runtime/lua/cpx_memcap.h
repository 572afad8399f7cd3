/* cpx_memcap.h: the memory cap of a Lua VM (lua.memory-limit-mb).
 *
 * The cap wraps LuaJIT's own allocator and counts what the VM holds. Its
 * rules (cpx_memcap_admit) are what keeps a full VM from crashing the
 * process:
 *
 *  - a free or a shrink is always granted: LuaJIT assumes a realloc to a
 *    smaller size cannot fail;
 *  - while the host (C) works on the VM outside a protected call (*host >
 *    0), nothing is refused: an unprotected API call that raised would be
 *    a panic;
 *  - growth up to the limit is granted;
 *  - past the limit, growth is refused only while the JIT compiler is off
 *    for this VM. With the JIT on, the allocation is granted up to a soft
 *    ceiling (limit + limit/2) and the VM is marked, so the next safe point
 *    switches the JIT off. Why: the LuaJIT 2.1 that Debian 12 ships reads
 *    a stale L->base when an out-of-memory error is raised from compiled
 *    code (lj_err_mem; fixed upstream later) and dies with SIGSEGV. In the
 *    interpreter the same error unwinds cleanly to the pcall or resume.
 *
 * Safe points (cpx_memcap_safepoint) are the moments C enters or leaves
 * the VM (a request's resume, a stream handler, the lane's records): no
 * trace runs then. At 3/4 of the limit the JIT is switched off and its
 * traces flushed, so in practice the limit is only ever met by the
 * interpreter; below half the limit it is switched on again.
 *
 * What is left: one stretch of compiled code that, with no call into C in
 * between, allocates from under 3/4 of the limit to past the soft ceiling
 * (3/4 of the limit in one go) still meets a refusal on a trace.
 *
 * A cpx_memcap_t is embedded in its owner (cpx_vm_t); it owns nothing.
 */
#ifndef CPX_MEMCAP_H
#define CPX_MEMCAP_H

#include <stddef.h>

#include <lua.h>

typedef struct cpx_memcap_s {
  size_t used;          /* bytes the VM holds now */
  size_t peak;          /* highest `used` seen */
  size_t limit;         /* 0: no cap */
  lua_Alloc base_alloc; /* LuaJIT's own allocator, wrapped by the cap */
  void *base_ud;
  const int *host; /* > 0: C works outside a protected call (may be NULL) */
  int jit_off;     /* the cap switched the JIT off (cpx_memcap_safepoint) */
  int over;        /* growth went past the limit with the JIT on */
  unsigned long refused;      /* allocations refused, in all */
  unsigned long refused_seen; /* `refused` at the last safe point */
} cpx_memcap_t;

/* The rule: 1 when the VM may go from osize to nsize bytes for one block
 * (osize 0 for a new one), given c's state; 0 to refuse. Pure. */
int cpx_memcap_admit(const cpx_memcap_t *c, size_t osize, size_t nsize);

/* Installs the cap on L (limit 0: count only). What L holds already is
 * counted from the collector's total. host may be NULL. */
void cpx_memcap_attach(cpx_memcap_t *c, lua_State *L, size_t limit,
                       const int *host);
/* Puts LuaJIT's own allocator back (before lua_close: only then does it
 * free its whole arena). */
void cpx_memcap_detach(cpx_memcap_t *c, lua_State *L);

/* Events cpx_memcap_safepoint reports (a bit set). */
enum {
  CPX_MEMCAP_JIT_OFF = 1, /* the JIT was switched off now */
  CPX_MEMCAP_JIT_ON = 2,  /* ... switched on again now */
  CPX_MEMCAP_REFUSED = 4  /* allocations were refused since the last one */
};

/* Call only where no Lua code of L's VM runs at all, not even suspended
 * in a C function (the outermost entry into the VM, before its resume or
 * pcall, and after it returned): a flush under a running recorder or
 * trace would pull the code from under it. Switches the JIT off (and flushes
 * its traces) at 3/4 of the limit, or when growth went past the limit on a
 * trace; on again under half of it. Returns the events (0 when nothing
 * changed). */
int cpx_memcap_safepoint(cpx_memcap_t *c, lua_State *L);

#endif /* CPX_MEMCAP_H */
