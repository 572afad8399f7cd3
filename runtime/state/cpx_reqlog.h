/* cpx_reqlog.h: the per-request log files (lua/rt/reqlog.lua decides what
 * goes in them; this writes, lists and reads them off the event loop). */
#ifndef CPX_REQLOG_H
#define CPX_REQLOG_H

#include <stddef.h>

struct lua_State;

/* 1 for a log file name the management API may hand out: a plain name of
 * [A-Za-z0-9_.-], not starting with '.', ending in ".log", < 256 bytes. */
int cpx_reqlog_name_ok(const char *name);

/* Deletes the oldest files of dir named prefix*.log while more than keep
 * are there (keep 0: none kept). Returns how many were deleted or a
 * negative error. Blocking: call it on a pool thread. */
int cpx_reqlog_prune(const char *dir, const char *prefix, int keep);

/* Registers cpx.reqlog into the table at the top of the stack. */
void cpx_reqlog_lua_register(struct lua_State *L);

#endif /* CPX_REQLOG_H */
