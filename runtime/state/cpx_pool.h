/* cpx_pool.h: the account pool. Which credential serves the next request
 * for a model, and how long a credential stays out after a failure.
 *
 * The pool is process state shared by every worker (one mutex; no Lua
 * inside), so it survives VM generations: a reload rebuilds the Lua side
 * and re-registers accounts and groups, and cooldowns, cursors and
 * session bindings carry on.
 *
 *   account  a credential: stable string id (config entry hash or the
 *            credential file name), provider, priority, weight, disabled,
 *            disable-cooling.
 *   state    per (account, upstream model): cooldown until, 429 backoff
 *            level, reason, quota flag, half-open probe in flight. States
 *            are never freed while the pool lives, so a state index handed
 *            out by a pick stays valid across group rebuilds.
 *   group    the candidates for one client-visible model name: a list of
 *            (account, upstream model) members, sorted into priority tiers
 *            (highest first), with a round-robin cursor per tier.
 *
 * Selection uses only the highest-priority tier that has an available
 * member (not disabled, not cooling, not excluded by the caller); within it
 * round-robin (default), fill-first or weighted round-robin. When a
 * cooldown has expired, exactly one request (the half-open probe) may use
 * the member until it reports back. Optional session affinity binds a key
 * to the account that served it, for a TTL, and fails over when that
 * account is unavailable.
 *
 * Every pick must be followed by exactly one cpx_pool_report for its
 * handle (it releases the in-flight count and the probe). A probe that is
 * never reported is released after CPX_POOL_PROBE_TIMEOUT_MS.
 */
#ifndef CPX_POOL_H
#define CPX_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "cpx.h"

typedef struct cpx_pool_s cpx_pool_t;

/* Milliseconds on a monotonic clock; injectable for tests. */
typedef uint64_t (*cpx_pool_clock_fn)(void *ud);

enum {
  CPX_POOL_ROUND_ROBIN = 0,
  CPX_POOL_FILL_FIRST = 1,
  CPX_POOL_WEIGHTED = 2,
};

/* What an attempt's answer means for the (account, model) state. */
enum {
  CPX_POOL_OK = 0,        /* success: state cleared, backoff reset */
  CPX_POOL_QUOTA = 1,     /* 429: hint, else 1 s doubling to 30 min */
  CPX_POOL_AUTH = 2,      /* 401/402/403: 30 min */
  CPX_POOL_NOTFOUND = 3,  /* 404 / model not supported: 12 h */
  CPX_POOL_TRANSIENT = 4, /* 408/5xx/network: 1 min */
  CPX_POOL_NEUTRAL = 5,   /* the request's own fault: no state change */
};

#define CPX_POOL_QUOTA_BASE_MS 1000ull
#define CPX_POOL_QUOTA_MAX_MS (30ull * 60 * 1000)
#define CPX_POOL_AUTH_MS (30ull * 60 * 1000)
#define CPX_POOL_NOTFOUND_MS (12ull * 3600 * 1000)
#define CPX_POOL_TRANSIENT_MS (60ull * 1000)
#define CPX_POOL_PROBE_TIMEOUT_MS (5ull * 60 * 1000)

/* Input to cpx_pool_account; the strings are copied. */
typedef struct {
  const char *id;
  const char *provider; /* may be NULL */
  int priority;         /* higher wins */
  int weight;           /* weighted round-robin; < 1 counts as 1 */
  int disabled;
  int disable_cooling;
} cpx_pool_account_t;

/* One member of a group; the strings are copied (or looked up). */
typedef struct {
  const char *account; /* an id given to cpx_pool_account before */
  const char *model;   /* upstream model name */
} cpx_pool_member_t;

typedef struct {
  const uint32_t *exclude; /* members (caller's 0-based order) to skip */
  size_t nexclude;
  const char *affinity_key; /* NULL: no session affinity for this pick */
  size_t affinity_len;
  int strategy; /* < 0: the pool's default */
} cpx_pool_pick_t;

typedef struct {
  uint32_t member;  /* caller's 0-based index of the chosen member */
  uint32_t account; /* pool account index */
  uint32_t state;   /* state index: the report handle */
  int probe;        /* 1: this pick is the half-open probe */
  int affinity;     /* 1: chosen by an existing session binding */
} cpx_pool_choice_t;

/* A copy of one (account, model) state; see cpx_pool_get_state. */
typedef struct {
  uint64_t remaining_ms; /* 0: available */
  int level;             /* next 429 backoff exponent */
  int reason;            /* CPX_POOL_* of the last failure, or OK */
  int quota;
  int probing;
  int inflight; /* of the account */
} cpx_pool_state_info_t;

/* A private pool (tests, benches); cpx_pool_free releases everything. */
int cpx_pool_new(cpx_pool_t **out);
void cpx_pool_free(cpx_pool_t *p);

/* The process-wide pool used by the server and the Lua binding. Created on
 * first use; freed at exit. */
cpx_pool_t *cpx_pool_global(void);

/* Drops every account, state, group and binding (tests). */
void cpx_pool_reset(cpx_pool_t *p);

/* NULL restores the monotonic clock. */
void cpx_pool_set_clock(cpx_pool_t *p, cpx_pool_clock_fn fn, void *ud);
uint64_t cpx_pool_now(cpx_pool_t *p);

/* Defaults for picks and reports: strategy, global disable-cooling, and the
 * session-affinity TTL (0 turns affinity off). */
void cpx_pool_configure(cpx_pool_t *p, int strategy, int disable_cooling,
                        uint64_t affinity_ttl_ms);

/* Adds or updates an account. Returns its index (>= 0) or a negative code. */
int cpx_pool_account(cpx_pool_t *p, const cpx_pool_account_t *a);

/* Replaces (or creates) the group `name`. Members whose account is unknown
 * give CPX_EINVAL. Cursors of an existing group are kept. n may be 0. */
int cpx_pool_set_group(cpx_pool_t *p, const char *name,
                       const cpx_pool_member_t *m, size_t n);

/* Chooses a member of `group`. Returns 0 and fills out; CPX_EAGAIN when
 * every eligible member is cooling (*wait_ms = the soonest reopening);
 * -ENOENT when the group is unknown or nothing is eligible (*wait_ms = 0).
 * wait_ms may be NULL. */
int cpx_pool_pick(cpx_pool_t *p, const char *group, const cpx_pool_pick_t *req,
                  cpx_pool_choice_t *out, uint64_t *wait_ms);

/* The outcome of a pick: releases the in-flight count and the probe, and
 * updates the cooldown. hint_ms > 0 is the upstream's own reset time and
 * wins over the defaults. Returns the cooldown set in ms (0: none). */
uint64_t cpx_pool_report(cpx_pool_t *p, uint32_t state, int probe, int result,
                         uint64_t hint_ms);

/* A choice as the one number that rt.pool (and a request the C relay
 * hands to Lua) carries until cpx_pool_report: state * 2 + probe. Exact
 * in a double for any state index. The only encoder and decoder. */
static inline double cpx_pool_handle(const cpx_pool_choice_t *c) {
  return (double)c->state * 2 + (c->probe ? 1 : 0);
}
/* Returns 0, or -1 when h is no handle. */
static inline int cpx_pool_handle_parse(double h, uint32_t *state, int *probe) {
  uint64_t v;
  if (!(h >= 0) || h > (double)UINT32_MAX * 2 + 1)
    return -1;
  v = (uint64_t)h;
  *state = (uint32_t)(v / 2);
  *probe = (int)(v % 2);
  return 0;
}

/* Soonest reopening among the group's members that are cooling (0: one is
 * available now or the group is unknown). */
uint64_t cpx_pool_group_wait(cpx_pool_t *p, const char *group);

/* Looks up (account id, model). Returns 0 or -ENOENT. */
int cpx_pool_get_state(cpx_pool_t *p, const char *account, const char *model,
                       cpx_pool_state_info_t *out);

/* Opens every state of an account (or of every account when id is NULL):
 * the operator's "reset quota". Returns how many were open. */
int cpx_pool_clear(cpx_pool_t *p, const char *account);
/* The same for one upstream model (of one account, or of every account
 * when account is NULL; model NULL: every model). */
int cpx_pool_clear_model(cpx_pool_t *p, const char *account, const char *model);

/* ---- keeping cooldowns across restarts (limits sheet 3.3) ----------------
 * A counter that moves whenever a cooldown opens or closes, so a saver
 * knows when there is something new to write. */
uint64_t cpx_pool_changes(cpx_pool_t *p);
/* Calls fn (under the pool's lock: fn must not call the pool) for every
 * state that is cooling or has a backoff level. Returns how many. */
typedef void (*cpx_pool_each_fn)(void *ud, const char *account,
                                 const char *model, uint64_t remaining_ms,
                                 int level, int reason, int quota);
int cpx_pool_each_cooling(cpx_pool_t *p, cpx_pool_each_fn fn, void *ud);
/* Puts a saved state back: cooling for remaining_ms from now unless the
 * state already cools longer; the higher backoff level wins. Returns 0, or
 * -ENOENT when no group has that (account, model) (any more). */
int cpx_pool_restore(cpx_pool_t *p, const char *account, const char *model,
                     uint64_t remaining_ms, int level, int reason, int quota);
/* The file in auth-dir (cpx_pool_file.c): JSON, 0600, written atomically.
 * save writes it when there is anything to keep, else removes it; load
 * restores every entry whose time has not passed and returns how many
 * (0 when there is no file). */
#define CPX_POOL_FILE ".cliproxy-cooldowns.json"
int cpx_pool_save_file(cpx_pool_t *p, const char *dir);
int cpx_pool_load_file(cpx_pool_t *p, const char *dir);

#endif /* CPX_POOL_H */
