/* cpx_lock.h: named exclusive locks shared by every worker of the process
 * and, with a lock file, by every process on the machine.
 *
 * A lock is a name in a process-wide table (one mutex); with a file it is
 * also an advisory flock(LOCK_EX | LOCK_NB) on that file, held through an
 * fd that stays open until release. Attempts never block: the caller
 * (cpx.lock in Lua) polls. flock locks belong to the open file
 * description, so two holders inside one process would also exclude each
 * other; the in-process table answers first so they never get that far.
 *
 * The lock file is created (0600) when missing and never removed: removing
 * it while another process waits on it would let two holders use two
 * different inodes.
 */
#ifndef CPX_LOCK_H
#define CPX_LOCK_H

#include "cpx.h"

#define CPX_LOCK_MAX_NAME 256
#define CPX_LOCK_MAX_HELD 4096 /* held locks in the whole process */

/* One held lock. Owned by the caller from a successful cpx_lock_try until
 * cpx_lock_release, which frees it. */
typedef struct cpx_lock_s cpx_lock_t;

/* Takes `name` (and the flock on `file` when file is not NULL) without
 * waiting. Returns 0 with *out set, CPX_EAGAIN when another holder has it,
 * CPX_ELIMIT when the name is too long or too many locks are held, or a
 * negative errno when the lock file cannot be opened. */
int cpx_lock_try(const char *name, const char *file, cpx_lock_t **out);

/* Releases and frees the lock (the flock first, then the name). */
void cpx_lock_release(cpx_lock_t *lk);

const char *cpx_lock_name(const cpx_lock_t *lk);

/* Locks held in the process now (for tests and diagnostics). */
int cpx_lock_count(void);

#endif /* CPX_LOCK_H */
