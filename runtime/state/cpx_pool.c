/* cpx_pool.c: account selection and cooldowns. See cpx_pool.h.
 *
 * Layout: accounts and states are append-only arrays (indices stay valid
 * for the pool's life, which is what lets a report outlive a group
 * rebuild); three open-addressing index maps find them by key. A group
 * holds its members sorted by (priority desc, account id asc), split into
 * tiers of equal priority, each with its own cursor, so the common pick is
 * one map lookup plus one or two member checks whatever the pool size.
 */
#include "cpx_pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- small helpers ------------------------------------------------------ */

static uint64_t fnv1a(const void *data, size_t n, uint64_t h) {
  const unsigned char *s = data;
  for (size_t i = 0; i < n; i++) {
    h ^= s[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

#define FNV_SEED 0xcbf29ce484222325ull

static uint64_t hash_str(const char *s) {
  return fnv1a(s, strlen(s), FNV_SEED);
}

static char *dupstr(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d)
    memcpy(d, s, n);
  return d;
}

static uint64_t mono_ms(void *ud) {
  struct timespec ts;
  CPX_UNUSED(ud);
  /* Coarse (a few ms): cooldowns need no more, and it never enters the
   * kernel, even where the fine clock is a system call (some VMs). */
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  /* Offset by a day so that a real "now" is never 0 (0 means "open"). */
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 +
         86400000ull;
}

/* ---- index map: 64-bit hash -> uint32 index, no deletion ----------------- */

typedef struct {
  uint64_t h;
  uint32_t idx;
  uint32_t used;
} slot_t;

/* Owns slots. */
typedef struct {
  slot_t *s;
  size_t cap; /* power of two, or 0 */
  size_t n;
} imap_t;

typedef int (*imap_eq_fn)(const void *ctx, uint32_t idx);

static int imap_find(const imap_t *m, uint64_t h, imap_eq_fn eq,
                     const void *ctx, uint32_t *idx) {
  if (!m->cap)
    return 0;
  for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
    const slot_t *s = &m->s[i];
    if (!s->used)
      return 0;
    if (s->h == h && eq(ctx, s->idx)) {
      *idx = s->idx;
      return 1;
    }
  }
}

static void imap_insert_raw(slot_t *tab, size_t cap, uint64_t h, uint32_t idx) {
  size_t i = h & (cap - 1);
  while (tab[i].used)
    i = (i + 1) & (cap - 1);
  tab[i].h = h;
  tab[i].idx = idx;
  tab[i].used = 1;
}

static int imap_put(imap_t *m, uint64_t h, uint32_t idx) {
  if ((m->n + 1) * 2 > m->cap) {
    size_t ncap = m->cap ? m->cap * 2 : 16;
    slot_t *tab = calloc(ncap, sizeof(*tab));
    if (!tab)
      return CPX_ENOMEM;
    for (size_t i = 0; i < m->cap; i++)
      if (m->s[i].used)
        imap_insert_raw(tab, ncap, m->s[i].h, m->s[i].idx);
    free(m->s);
    m->s = tab;
    m->cap = ncap;
  }
  imap_insert_raw(m->s, m->cap, h, idx);
  m->n++;
  return 0;
}

static void imap_free(imap_t *m) {
  free(m->s);
  memset(m, 0, sizeof(*m));
}

/* ---- pool types ---------------------------------------------------------- */

/* id and provider are owned. */
typedef struct {
  char *id;
  char *provider;
  int priority;
  int weight;
  int disabled;
  int disable_cooling;
  int inflight;
} acct_t;

/* model is owned. until_ms == 0: closed (available). */
typedef struct {
  uint64_t until_ms;
  uint64_t probe_ms;
  char *model;
  uint64_t hash;
  uint32_t account;
  uint16_t level;
  uint8_t reason;
  uint8_t quota;
  uint8_t probing;
} state_t;

typedef struct {
  uint32_t account;
  uint32_t state;
  uint32_t orig; /* the caller's index */
  uint32_t cumw; /* weights within the tier up to and including this one */
  int priority;
} member_t;

typedef struct {
  uint32_t start, end;
  uint32_t cursor;
  uint32_t totalw;
  uint64_t wcount;
} tier_t;

/* name, m and tiers are owned. */
typedef struct {
  char *name;
  member_t *m;
  uint32_t n;
  tier_t *tiers;
  uint32_t ntiers;
  uint32_t version;
} group_t;

/* A session binding. Only the key's hash is kept: 64 bits make a false
 * match negligible, and a false match only costs affinity, not safety. */
typedef struct {
  uint64_t h;
  uint64_t expires_ms;
  uint32_t account;
  uint32_t pos; /* member position in the group when bound */
  uint32_t version;
  uint32_t used;
} bind_t;

#define BIND_CAP 65536u
#define BIND_PROBE 8u
#define WRR_STRIDE 2654435761u /* prime: visits every weight slot */

/* Owns every array and map below. */
struct cpx_pool_s {
  pthread_mutex_t mu;
  cpx_pool_clock_fn clock;
  void *clock_ud;
  int strategy;
  int disable_cooling;
  uint64_t affinity_ttl_ms;

  acct_t *acct;
  uint32_t nacct, acct_cap;
  imap_t acct_map;

  state_t *st;
  uint32_t nst, st_cap;
  imap_t st_map;

  group_t *grp;
  uint32_t ngrp, grp_cap;
  imap_t grp_map;
  uint32_t next_version;

  bind_t *binds;    /* BIND_CAP entries, allocated on first use */
  uint64_t changes; /* cooldowns opened or closed (cpx_pool_changes) */
};

/* ---- lifecycle ----------------------------------------------------------- */

int cpx_pool_new(cpx_pool_t **out) {
  cpx_pool_t *p = calloc(1, sizeof(*p));
  if (!p)
    return CPX_ENOMEM;
  pthread_mutex_init(&p->mu, NULL);
  p->clock = mono_ms;
  p->strategy = CPX_POOL_ROUND_ROBIN;
  *out = p;
  return 0;
}

static void free_contents(cpx_pool_t *p) {
  for (uint32_t i = 0; i < p->nacct; i++) {
    free(p->acct[i].id);
    free(p->acct[i].provider);
  }
  for (uint32_t i = 0; i < p->nst; i++)
    free(p->st[i].model);
  for (uint32_t i = 0; i < p->ngrp; i++) {
    free(p->grp[i].name);
    free(p->grp[i].m);
    free(p->grp[i].tiers);
  }
  free(p->acct);
  free(p->st);
  free(p->grp);
  free(p->binds);
  imap_free(&p->acct_map);
  imap_free(&p->st_map);
  imap_free(&p->grp_map);
  p->acct = NULL;
  p->st = NULL;
  p->grp = NULL;
  p->binds = NULL;
  p->nacct = p->acct_cap = p->nst = p->st_cap = p->ngrp = p->grp_cap = 0;
}

void cpx_pool_free(cpx_pool_t *p) {
  if (!p)
    return;
  free_contents(p);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

void cpx_pool_reset(cpx_pool_t *p) {
  pthread_mutex_lock(&p->mu);
  free_contents(p);
  pthread_mutex_unlock(&p->mu);
}

/* The global pool is never freed: the Lua module (cpx.so) may be unloaded
 * before exit, so an atexit handler inside it would be unsafe. */
static cpx_pool_t *global_pool;
static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void) {
  if (cpx_pool_new(&global_pool) != 0)
    global_pool = NULL;
}

cpx_pool_t *cpx_pool_global(void) {
  pthread_once(&global_once, global_init);
  return global_pool;
}

void cpx_pool_set_clock(cpx_pool_t *p, cpx_pool_clock_fn fn, void *ud) {
  pthread_mutex_lock(&p->mu);
  p->clock = fn ? fn : mono_ms;
  p->clock_ud = fn ? ud : NULL;
  pthread_mutex_unlock(&p->mu);
}

uint64_t cpx_pool_now(cpx_pool_t *p) {
  uint64_t now;
  pthread_mutex_lock(&p->mu);
  now = p->clock(p->clock_ud);
  pthread_mutex_unlock(&p->mu);
  return now;
}

void cpx_pool_configure(cpx_pool_t *p, int strategy, int disable_cooling,
                        uint64_t affinity_ttl_ms) {
  pthread_mutex_lock(&p->mu);
  p->strategy = strategy;
  p->disable_cooling = disable_cooling;
  p->affinity_ttl_ms = affinity_ttl_ms;
  pthread_mutex_unlock(&p->mu);
}

/* ---- accounts and states ------------------------------------------------- */

typedef struct {
  const cpx_pool_t *p;
  const char *s;
} str_key_t;

static int acct_eq(const void *ctx, uint32_t idx) {
  const str_key_t *k = ctx;
  return strcmp(k->p->acct[idx].id, k->s) == 0;
}

static int find_acct(const cpx_pool_t *p, const char *id, uint32_t *idx) {
  str_key_t k = {p, id};
  return imap_find(&p->acct_map, hash_str(id), acct_eq, &k, idx);
}

static int grow(void **arr, uint32_t *cap, uint32_t need, size_t elem) {
  if (need <= *cap)
    return 0;
  uint32_t ncap = *cap ? *cap * 2 : 16;
  while (ncap < need)
    ncap *= 2;
  void *n = realloc(*arr, (size_t)ncap * elem);
  if (!n)
    return CPX_ENOMEM;
  *arr = n;
  *cap = ncap;
  return 0;
}

int cpx_pool_account(cpx_pool_t *p, const cpx_pool_account_t *a) {
  uint32_t idx;
  int rc = 0;
  acct_t *ac;

  if (!a || !a->id || !a->id[0])
    return CPX_EINVAL;
  pthread_mutex_lock(&p->mu);
  if (!find_acct(p, a->id, &idx)) {
    if ((rc = grow((void **)&p->acct, &p->acct_cap, p->nacct + 1,
                   sizeof(acct_t))) != 0)
      goto out;
    idx = p->nacct;
    ac = &p->acct[idx];
    memset(ac, 0, sizeof(*ac));
    if (!(ac->id = dupstr(a->id))) {
      rc = CPX_ENOMEM;
      goto out;
    }
    if ((rc = imap_put(&p->acct_map, hash_str(a->id), idx)) != 0) {
      free(ac->id);
      goto out;
    }
    p->nacct++;
  }
  ac = &p->acct[idx];
  if (a->provider && (!ac->provider || strcmp(ac->provider, a->provider))) {
    char *pv = dupstr(a->provider);
    if (pv) {
      free(ac->provider);
      ac->provider = pv;
    }
  }
  ac->priority = a->priority;
  ac->weight = a->weight < 1 ? 1 : a->weight;
  ac->disabled = a->disabled;
  ac->disable_cooling = a->disable_cooling;
  rc = (int)idx;
out:
  pthread_mutex_unlock(&p->mu);
  return rc;
}

typedef struct {
  const cpx_pool_t *p;
  uint32_t account;
  const char *model;
} st_key_t;

static int st_eq(const void *ctx, uint32_t idx) {
  const st_key_t *k = ctx;
  const state_t *s = &k->p->st[idx];
  return s->account == k->account && strcmp(s->model, k->model) == 0;
}

static uint64_t st_hash(uint32_t account, const char *model) {
  return hash_str(model) ^ ((uint64_t)(account + 1) * 0x9e3779b97f4a7c15ull);
}

/* Finds or creates the state of (account, model). Lock held. */
static int state_for(cpx_pool_t *p, uint32_t account, const char *model,
                     uint32_t *out) {
  st_key_t k = {p, account, model};
  uint64_t h = st_hash(account, model);
  int rc;
  if (imap_find(&p->st_map, h, st_eq, &k, out))
    return 0;
  if ((rc = grow((void **)&p->st, &p->st_cap, p->nst + 1, sizeof(state_t))))
    return rc;
  state_t *s = &p->st[p->nst];
  memset(s, 0, sizeof(*s));
  if (!(s->model = dupstr(model)))
    return CPX_ENOMEM;
  s->account = account;
  s->hash = h;
  if ((rc = imap_put(&p->st_map, h, p->nst)) != 0) {
    free(s->model);
    return rc;
  }
  *out = p->nst++;
  return 0;
}

/* ---- groups -------------------------------------------------------------- */

typedef struct {
  const cpx_pool_t *p;
  const char *name;
} grp_key_t;

static int grp_eq(const void *ctx, uint32_t idx) {
  const grp_key_t *k = ctx;
  return strcmp(k->p->grp[idx].name, k->name) == 0;
}

static group_t *find_group(const cpx_pool_t *p, const char *name) {
  grp_key_t k = {p, name};
  uint32_t idx;
  if (!imap_find(&p->grp_map, hash_str(name), grp_eq, &k, &idx))
    return NULL;
  return &p->grp[idx];
}

/* qsort has no context argument: the accounts go through a thread-local. */
static _Thread_local const acct_t *sort_accts;

static int member_cmp(const void *a, const void *b) {
  const member_t *x = a, *y = b;
  int c;
  if (x->priority != y->priority)
    return x->priority > y->priority ? -1 : 1;
  c = strcmp(sort_accts[x->account].id, sort_accts[y->account].id);
  if (c)
    return c;
  return x->orig < y->orig ? -1 : (x->orig > y->orig);
}

int cpx_pool_set_group(cpx_pool_t *p, const char *name,
                       const cpx_pool_member_t *mem, size_t n) {
  member_t *m = NULL;
  tier_t *tiers = NULL;
  uint32_t ntiers = 0;
  group_t *g;
  int rc = 0;

  if (!name || n > UINT32_MAX / 2)
    return CPX_EINVAL;
  pthread_mutex_lock(&p->mu);
  if (n && !(m = calloc(n, sizeof(*m)))) {
    rc = CPX_ENOMEM;
    goto fail;
  }
  for (size_t i = 0; i < n; i++) {
    uint32_t a;
    if (!mem[i].account || !mem[i].model || !find_acct(p, mem[i].account, &a)) {
      rc = CPX_EINVAL;
      goto fail;
    }
    if ((rc = state_for(p, a, mem[i].model, &m[i].state)) != 0)
      goto fail;
    m[i].account = a;
    m[i].orig = (uint32_t)i;
    m[i].priority = p->acct[a].priority;
  }
  sort_accts = p->acct;
  if (n > 1)
    qsort(m, n, sizeof(*m), member_cmp);
  /* Tiers of equal priority, with cumulative weights for WRR. */
  if (n && !(tiers = calloc(n, sizeof(*tiers)))) {
    rc = CPX_ENOMEM;
    goto fail;
  }
  for (uint32_t i = 0; i < n; i++) {
    if (i == 0 || m[i].priority != m[i - 1].priority) {
      tiers[ntiers].start = i;
      ntiers++;
    }
    tier_t *t = &tiers[ntiers - 1];
    t->end = i + 1;
    t->totalw += (uint32_t)p->acct[m[i].account].weight;
    m[i].cumw = t->totalw;
  }
  g = find_group(p, name);
  if (!g) {
    char *nm = dupstr(name);
    if (!nm || (rc = grow((void **)&p->grp, &p->grp_cap, p->ngrp + 1,
                          sizeof(group_t))) != 0) {
      free(nm);
      rc = rc ? rc : CPX_ENOMEM;
      goto fail;
    }
    if ((rc = imap_put(&p->grp_map, hash_str(name), p->ngrp)) != 0) {
      free(nm);
      goto fail;
    }
    g = &p->grp[p->ngrp++];
    memset(g, 0, sizeof(*g));
    g->name = nm;
  } else {
    /* Keep the rotation going across rebuilds: same tier, same cursor. */
    for (uint32_t i = 0; i < ntiers && i < g->ntiers; i++) {
      uint32_t len = tiers[i].end - tiers[i].start;
      tiers[i].cursor = g->tiers[i].cursor % len;
      tiers[i].wcount = g->tiers[i].wcount;
    }
    free(g->m);
    free(g->tiers);
  }
  g->m = m;
  g->n = (uint32_t)n;
  g->tiers = tiers;
  g->ntiers = ntiers;
  g->version = ++p->next_version;
  pthread_mutex_unlock(&p->mu);
  return 0;
fail:
  free(m);
  free(tiers);
  pthread_mutex_unlock(&p->mu);
  return rc;
}

/* ---- selection ----------------------------------------------------------- */

enum { AV_YES = 0, AV_PROBE, AV_COOLING, AV_PROBING, AV_NO };

static int excluded(const cpx_pool_pick_t *req, uint32_t orig) {
  for (size_t i = 0; i < req->nexclude; i++)
    if (req->exclude[i] == orig)
      return 1;
  return 0;
}

static int avail(const cpx_pool_t *p, const member_t *m,
                 const cpx_pool_pick_t *req, uint64_t now) {
  const state_t *s = &p->st[m->state];
  if (p->acct[m->account].disabled)
    return AV_NO;
  if (req->nexclude && excluded(req, m->orig))
    return AV_NO;
  if (s->until_ms == 0)
    return AV_YES;
  if (s->until_ms > now)
    return AV_COOLING;
  if (s->probing && now - s->probe_ms < CPX_POOL_PROBE_TIMEOUT_MS)
    return AV_PROBING;
  return AV_PROBE;
}

static int usable(int av) {
  return av == AV_YES || av == AV_PROBE;
}

/* Position of the first member whose cumulative weight exceeds w. */
static uint32_t wrr_find(const group_t *g, const tier_t *t, uint32_t w) {
  uint32_t lo = t->start, hi = t->end - 1;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (g->m[mid].cumw > w)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

/* Returns the chosen position in g->m, or -1. */
static int64_t pick_tier(const cpx_pool_t *p, group_t *g, tier_t *t,
                         int strategy, const cpx_pool_pick_t *req,
                         uint64_t now) {
  uint32_t len = t->end - t->start;
  if (strategy == CPX_POOL_FILL_FIRST) {
    for (uint32_t i = t->start; i < t->end; i++)
      if (usable(avail(p, &g->m[i], req, now)))
        return i;
    return -1;
  }
  if (strategy == CPX_POOL_WEIGHTED && t->totalw > 0) {
    uint32_t w = (uint32_t)((t->wcount * (uint64_t)WRR_STRIDE) % t->totalw);
    uint32_t first = wrr_find(g, t, w) - t->start;
    for (uint32_t k = 0; k < len; k++) {
      uint32_t i = t->start + (first + k) % len;
      if (usable(avail(p, &g->m[i], req, now))) {
        t->wcount++;
        return i;
      }
    }
    return -1;
  }
  for (uint32_t k = 0; k < len; k++) {
    uint32_t off = (t->cursor + k) % len;
    uint32_t i = t->start + off;
    if (usable(avail(p, &g->m[i], req, now))) {
      t->cursor = (off + 1) % len;
      return i;
    }
  }
  return -1;
}

static uint64_t key_hash(const group_t *g, const char *key, size_t n) {
  uint64_t h = fnv1a(g->name, strlen(g->name), FNV_SEED);
  h = fnv1a("\0", 1, h);
  return fnv1a(key, n, h) | 1; /* never 0 */
}

static bind_t *bind_find(cpx_pool_t *p, uint64_t h) {
  if (!p->binds)
    return NULL;
  for (uint32_t k = 0; k < BIND_PROBE; k++) {
    bind_t *b = &p->binds[(h + k) & (BIND_CAP - 1)];
    if (b->used && b->h == h)
      return b;
  }
  return NULL;
}

/* A free, expired or else the soonest-expiring slot of the key's window. */
static bind_t *bind_slot(cpx_pool_t *p, uint64_t h, uint64_t now) {
  bind_t *victim = NULL;
  if (!p->binds && !(p->binds = calloc(BIND_CAP, sizeof(bind_t))))
    return NULL;
  for (uint32_t k = 0; k < BIND_PROBE; k++) {
    bind_t *b = &p->binds[(h + k) & (BIND_CAP - 1)];
    if (!b->used || b->h == h || b->expires_ms <= now)
      return b;
    if (!victim || b->expires_ms < victim->expires_ms)
      victim = b;
  }
  return victim;
}

/* The bound account's member, if it is still usable here. */
static int64_t pick_bound(const cpx_pool_t *p, const group_t *g,
                          const bind_t *b, const cpx_pool_pick_t *req,
                          uint64_t now) {
  if (b->version == g->version && b->pos < g->n &&
      g->m[b->pos].account == b->account &&
      usable(avail(p, &g->m[b->pos], req, now)))
    return b->pos;
  for (uint32_t i = 0; i < g->n; i++)
    if (g->m[i].account == b->account && usable(avail(p, &g->m[i], req, now)))
      return i;
  return -1;
}

int cpx_pool_pick(cpx_pool_t *p, const char *group, const cpx_pool_pick_t *req,
                  cpx_pool_choice_t *out, uint64_t *wait_ms) {
  static const cpx_pool_pick_t none = {NULL, 0, NULL, 0, -1};
  group_t *g;
  int64_t pos = -1;
  uint64_t now, h = 0;
  int strategy, by_affinity = 0, rc = 0;

  if (!req)
    req = &none;
  if (wait_ms)
    *wait_ms = 0;
  pthread_mutex_lock(&p->mu);
  g = find_group(p, group);
  if (!g || g->n == 0) {
    pthread_mutex_unlock(&p->mu);
    return -ENOENT;
  }
  now = p->clock(p->clock_ud);
  strategy = req->strategy >= 0 ? req->strategy : p->strategy;
  if (req->affinity_key && p->affinity_ttl_ms) {
    h = key_hash(g, req->affinity_key, req->affinity_len);
    bind_t *b = bind_find(p, h);
    if (b && b->expires_ms > now) {
      pos = pick_bound(p, g, b, req, now);
      by_affinity = pos >= 0;
    }
  }
  for (uint32_t t = 0; pos < 0 && t < g->ntiers; t++)
    pos = pick_tier(p, g, &g->tiers[t], strategy, req, now);
  if (pos >= 0) {
    member_t *m = &g->m[pos];
    state_t *s = &p->st[m->state];
    out->member = m->orig;
    out->account = m->account;
    out->state = m->state;
    out->affinity = by_affinity;
    out->probe = s->until_ms != 0; /* expired cooldown: the probe */
    if (out->probe) {
      s->probing = 1;
      s->probe_ms = now;
    }
    p->acct[m->account].inflight++;
    if (h) {
      bind_t *b = bind_slot(p, h, now);
      if (b) {
        b->h = h;
        b->used = 1;
        b->account = m->account;
        b->pos = (uint32_t)pos;
        b->version = g->version;
        b->expires_ms = now + p->affinity_ttl_ms;
      }
    }
  } else {
    /* Nothing usable: how long until something reopens? A member whose
     * probe is in flight is asked again in a second. */
    uint64_t best = 0;
    for (uint32_t i = 0; i < g->n; i++) {
      int av = avail(p, &g->m[i], req, now);
      uint64_t w = 0;
      if (av == AV_COOLING)
        w = p->st[g->m[i].state].until_ms - now;
      else if (av == AV_PROBING)
        w = 1000;
      if (w && (!best || w < best))
        best = w;
    }
    rc = best ? CPX_EAGAIN : -ENOENT;
    if (wait_ms)
      *wait_ms = best;
  }
  pthread_mutex_unlock(&p->mu);
  return rc;
}

uint64_t cpx_pool_group_wait(cpx_pool_t *p, const char *group) {
  static const cpx_pool_pick_t none = {NULL, 0, NULL, 0, -1};
  uint64_t best = 0, now;
  group_t *g;
  pthread_mutex_lock(&p->mu);
  g = find_group(p, group);
  now = p->clock(p->clock_ud);
  for (uint32_t i = 0; g && i < g->n; i++) {
    int av = avail(p, &g->m[i], &none, now);
    if (usable(av)) {
      best = 0;
      break;
    }
    if (av == AV_COOLING) {
      uint64_t w = p->st[g->m[i].state].until_ms - now;
      if (!best || w < best)
        best = w;
    }
  }
  pthread_mutex_unlock(&p->mu);
  return best;
}

/* ---- outcomes ------------------------------------------------------------ */

uint64_t cpx_pool_report(cpx_pool_t *p, uint32_t state, int probe, int result,
                         uint64_t hint_ms) {
  uint64_t now, dur = 0;
  state_t *s;
  acct_t *a;

  pthread_mutex_lock(&p->mu);
  if (state >= p->nst) {
    pthread_mutex_unlock(&p->mu);
    return 0;
  }
  now = p->clock(p->clock_ud);
  s = &p->st[state];
  a = &p->acct[s->account];
  if (a->inflight > 0)
    a->inflight--;
  if (probe)
    s->probing = 0;
  switch (result) {
  case CPX_POOL_OK:
    if (s->until_ms || s->level)
      p->changes++;
    s->until_ms = 0;
    s->level = 0;
    s->quota = 0;
    s->probing = 0;
    s->reason = CPX_POOL_OK;
    break;
  case CPX_POOL_QUOTA:
  case CPX_POOL_AUTH:
  case CPX_POOL_NOTFOUND:
  case CPX_POOL_TRANSIENT:
    if (p->disable_cooling || a->disable_cooling)
      break;
    if (hint_ms) {
      dur = hint_ms;
    } else if (result == CPX_POOL_QUOTA) {
      /* Concurrent 429s of one burst land inside the window the first one
       * opened: they reuse it and advance the ladder only once. */
      if (s->until_ms > now && s->quota) {
        pthread_mutex_unlock(&p->mu);
        return s->until_ms - now;
      }
      dur = CPX_POOL_QUOTA_BASE_MS << (s->level < 21 ? s->level : 21);
      if (dur > CPX_POOL_QUOTA_MAX_MS)
        dur = CPX_POOL_QUOTA_MAX_MS;
      if (dur < CPX_POOL_QUOTA_MAX_MS)
        s->level++;
    } else if (result == CPX_POOL_AUTH) {
      dur = CPX_POOL_AUTH_MS;
    } else if (result == CPX_POOL_NOTFOUND) {
      dur = CPX_POOL_NOTFOUND_MS;
    } else {
      dur = CPX_POOL_TRANSIENT_MS;
    }
    s->until_ms = now + dur;
    s->reason = (uint8_t)result;
    s->quota = result == CPX_POOL_QUOTA;
    p->changes++;
    break;
  default: /* NEUTRAL: the request's own fault says nothing about health */
    break;
  }
  pthread_mutex_unlock(&p->mu);
  return dur;
}

int cpx_pool_get_state(cpx_pool_t *p, const char *account, const char *model,
                       cpx_pool_state_info_t *out) {
  uint32_t a, si;
  int rc = -ENOENT;
  pthread_mutex_lock(&p->mu);
  if (find_acct(p, account, &a)) {
    st_key_t k = {p, a, model};
    memset(out, 0, sizeof(*out));
    out->inflight = p->acct[a].inflight;
    if (imap_find(&p->st_map, st_hash(a, model), st_eq, &k, &si)) {
      const state_t *s = &p->st[si];
      uint64_t now = p->clock(p->clock_ud);
      out->remaining_ms = s->until_ms > now ? s->until_ms - now : 0;
      out->level = s->level;
      out->reason = s->reason;
      out->quota = s->quota;
      out->probing = s->probing;
    }
    rc = 0;
  }
  pthread_mutex_unlock(&p->mu);
  return rc;
}

int cpx_pool_clear(cpx_pool_t *p, const char *account) {
  return cpx_pool_clear_model(p, account, NULL);
}

int cpx_pool_clear_model(cpx_pool_t *p, const char *account,
                         const char *model) {
  uint32_t a = 0;
  int n = 0;
  pthread_mutex_lock(&p->mu);
  if (account && !find_acct(p, account, &a)) {
    pthread_mutex_unlock(&p->mu);
    return 0;
  }
  for (uint32_t i = 0; i < p->nst; i++) {
    state_t *s = &p->st[i];
    if (account && s->account != a)
      continue;
    if (model && strcmp(s->model, model) != 0)
      continue;
    if (s->until_ms)
      n++;
    if (s->until_ms || s->level)
      p->changes++;
    s->until_ms = 0;
    s->level = 0;
    s->quota = 0;
    s->probing = 0;
    s->reason = CPX_POOL_OK;
  }
  pthread_mutex_unlock(&p->mu);
  return n;
}

/* ---- keeping cooldowns across restarts ------------------------------------
 */

uint64_t cpx_pool_changes(cpx_pool_t *p) {
  uint64_t n;
  pthread_mutex_lock(&p->mu);
  n = p->changes;
  pthread_mutex_unlock(&p->mu);
  return n;
}

int cpx_pool_each_cooling(cpx_pool_t *p, cpx_pool_each_fn fn, void *ud) {
  int n = 0;
  pthread_mutex_lock(&p->mu);
  uint64_t now = p->clock(p->clock_ud);
  for (uint32_t i = 0; i < p->nst; i++) {
    const state_t *s = &p->st[i];
    if (s->until_ms <= now && s->level == 0)
      continue;
    fn(ud, p->acct[s->account].id, s->model,
       s->until_ms > now ? s->until_ms - now : 0, s->level, s->reason,
       s->quota);
    n++;
  }
  pthread_mutex_unlock(&p->mu);
  return n;
}

int cpx_pool_restore(cpx_pool_t *p, const char *account, const char *model,
                     uint64_t remaining_ms, int level, int reason, int quota) {
  uint32_t a, si;
  int rc = -ENOENT;
  pthread_mutex_lock(&p->mu);
  if (find_acct(p, account, &a)) {
    st_key_t k = {p, a, model};
    if (imap_find(&p->st_map, st_hash(a, model), st_eq, &k, &si)) {
      state_t *s = &p->st[si];
      uint64_t until = remaining_ms ? p->clock(p->clock_ud) + remaining_ms : 0;
      /* What the pool learnt since start wins over what was saved. */
      if (until > s->until_ms) {
        s->until_ms = until;
        s->reason = (uint8_t)reason;
        s->quota = quota ? 1 : 0;
      }
      if (level > s->level)
        s->level = (uint16_t)(level < 64 ? level : 64);
      rc = 0;
    }
  }
  pthread_mutex_unlock(&p->mu);
  return rc;
}
