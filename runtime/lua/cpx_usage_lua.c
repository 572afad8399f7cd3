/* cpx_usage_lua.c: `cpx.usage`, the Lua side of the usage store.
 *
 * append and stats only touch the queue (a lock, no I/O) and run anywhere;
 * query, aggregate, import, prune and flush do database work and run in
 * libuv's threadpool, yielding the request's coroutine (synchronously
 * outside a request: busted, start-up). */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "cpx_bindings.h"
#include "cpx_lua.h"
#include "cpx_store.h"
#include "cpx_usage.h"

/* Longest text kept per field: ids, names and error messages. */
#define FIELD_MAX 1024
/* Most rows one query hands to Lua. */
#define ROWS_MAX 200000

static const char *const token_names[5] = {"input", "output", "reasoning",
                                           "cache_read", "cache_write"};

static int field_num(lua_State *L, int t, const char *k, double *out) {
  int ok = 0;
  lua_getfield(L, t, k);
  if (lua_type(L, -1) == LUA_TNUMBER) {
    *out = lua_tonumber(L, -1);
    ok = 1;
  } else if (lua_type(L, -1) == LUA_TBOOLEAN) {
    *out = lua_toboolean(L, -1) ? 1 : 0;
    ok = 1;
  }
  lua_pop(L, 1);
  return ok;
}

/* Reads the record table at idx into r (strings copied). */
static int rec_from_lua(lua_State *L, int idx, cpx_usage_rec_t *r) {
  memset(r, 0, sizeof(*r));
  for (int k = 0; k < CPX_USAGE_NSTR; k++) {
    size_t n;
    const char *s;
    lua_getfield(L, idx, cpx_usage_str_names[k]);
    if (lua_type(L, -1) == LUA_TSTRING) {
      s = lua_tolstring(L, -1, &n);
      if (n > FIELD_MAX)
        n = FIELD_MAX;
      r->s[k] = malloc(n + 1);
      if (!r->s[k]) {
        lua_pop(L, 1);
        cpx_usage_rec_clear(r);
        return CPX_ENOMEM;
      }
      memcpy(r->s[k], s, n);
      r->s[k][n] = '\0';
    }
    lua_pop(L, 1);
  }
  for (int k = 0; k < CPX_UN_INPUT; k++)
    r->has[k] =
        (unsigned char)field_num(L, idx, cpx_usage_num_names[k], &r->n[k]);
  lua_getfield(L, idx, "usage");
  if (lua_istable(L, -1)) {
    int u = lua_gettop(L);
    for (int k = 0; k < 5; k++)
      r->has[CPX_UN_INPUT + k] = (unsigned char)field_num(
          L, u, token_names[k], &r->n[CPX_UN_INPUT + k]);
  }
  lua_pop(L, 1);
  return 0;
}

static void rec_to_lua(lua_State *L, const cpx_usage_rec_t *r) {
  lua_createtable(L, 0, CPX_USAGE_NSTR + CPX_USAGE_NNUM);
  for (int k = 0; k < CPX_USAGE_NSTR; k++) {
    if (!r->s[k])
      continue;
    lua_pushstring(L, r->s[k]);
    lua_setfield(L, -2, cpx_usage_str_names[k]);
  }
  for (int k = 0; k < CPX_UN_INPUT; k++) {
    if (!r->has[k])
      continue;
    if (k == CPX_UN_STREAM || k == CPX_UN_FAILED)
      lua_pushboolean(L, r->n[k] != 0);
    else
      lua_pushnumber(L, r->n[k]);
    lua_setfield(L, -2, cpx_usage_num_names[k]);
  }
  lua_createtable(L, 0, 5);
  for (int k = 0; k < 5; k++) {
    lua_pushnumber(L, r->has[CPX_UN_INPUT + k] ? r->n[CPX_UN_INPUT + k] : 0);
    lua_setfield(L, -2, token_names[k]);
  }
  lua_setfield(L, -2, "usage");
}

/* ---- jobs --------------------------------------------------------------- */

enum { J_QUERY, J_AGGREGATE, J_IMPORT, J_PRUNE, J_FLUSH };

typedef struct {
  cpx_lua_job_t job; /* first: the job is the whole struct */
  int kind;
  cpx_usage_filter_t f;
  int dims[CPX_USAGE_MAX_DIMS];
  size_t ndims;
  /* results (and, for imports, the input) */
  cpx_usage_rec_t *recs;
  size_t n, cap;
  cpx_usage_group_t *groups; /* keys strdup'd */
  size_t ng, gcap;
  size_t count; /* added / removed */
  int rc;
  char err[256];
} job_t;

static void job_free(cpx_lua_job_t *job) {
  job_t *j = (job_t *)job;
  for (size_t i = 0; i < j->n; i++)
    cpx_usage_rec_clear(&j->recs[i]);
  free(j->recs);
  for (size_t i = 0; i < j->ng; i++)
    for (size_t k = 0; k < j->ndims; k++)
      free((char *)j->groups[i].keys[k]);
  free(j->groups);
  free(j);
}

static int on_row(void *ud, const cpx_usage_rec_t *r) {
  job_t *j = ud;
  cpx_usage_rec_t *c;
  if (j->n >= ROWS_MAX)
    return 1;
  if (j->n == j->cap) {
    size_t cap = j->cap ? j->cap * 2 : 64;
    void *p = realloc(j->recs, cap * sizeof(*j->recs));
    if (!p) {
      j->rc = CPX_ENOMEM;
      return 1;
    }
    j->recs = p;
    j->cap = cap;
  }
  c = &j->recs[j->n++];
  *c = *r;
  for (int k = 0; k < CPX_USAGE_NSTR; k++)
    c->s[k] = r->s[k] ? strdup(r->s[k]) : NULL;
  return 0;
}

static int on_group(void *ud, const cpx_usage_group_t *g) {
  job_t *j = ud;
  cpx_usage_group_t *c;
  if (j->ng >= ROWS_MAX)
    return 1;
  if (j->ng == j->gcap) {
    size_t cap = j->gcap ? j->gcap * 2 : 64;
    void *p = realloc(j->groups, cap * sizeof(*j->groups));
    if (!p) {
      j->rc = CPX_ENOMEM;
      return 1;
    }
    j->groups = p;
    j->gcap = cap;
  }
  c = &j->groups[j->ng++];
  *c = *g;
  for (size_t k = 0; k < j->ndims; k++)
    c->keys[k] = strdup(g->keys[k] ? g->keys[k] : "");
  return 0;
}

static void job_work(cpx_lua_job_t *job) {
  job_t *j = (job_t *)job;
  cpx_usage_backend_t *b = cpx_usage_backend();
  if (j->kind == J_FLUSH) {
    j->rc = cpx_usage_flush();
    return;
  }
  if (!b) {
    j->rc = CPX_ESTATE;
    snprintf(j->err, sizeof(j->err), "usage store is not open");
    return;
  }
  switch (j->kind) {
  case J_QUERY:
    j->rc = b->query(b, &j->f, on_row, j);
    break;
  case J_AGGREGATE:
    j->rc = b->aggregate(b, &j->f, j->dims, j->ndims, on_group, j);
    break;
  case J_IMPORT:
    j->rc = b->append(b, j->recs, j->n, &j->count);
    break;
  case J_PRUNE:
    j->rc = b->prune(b, j->f.to, &j->count);
    break;
  }
  if (j->rc != 0 && !j->err[0])
    snprintf(j->err, sizeof(j->err), "%s", b->err);
}

static int job_push(lua_State *L, cpx_lua_job_t *job) {
  job_t *j = (job_t *)job;
  if (j->rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, j->err[0] ? j->err : cpx_strerror(j->rc));
    return 2;
  }
  switch (j->kind) {
  case J_QUERY:
    lua_createtable(L, (int)j->n, 0);
    for (size_t i = 0; i < j->n; i++) {
      rec_to_lua(L, &j->recs[i]);
      lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
  case J_AGGREGATE:
    lua_createtable(L, (int)j->ng, 0);
    for (size_t i = 0; i < j->ng; i++) {
      const cpx_usage_group_t *g = &j->groups[i];
      lua_createtable(L, 0, 12);
      for (size_t k = 0; k < j->ndims; k++) {
        lua_pushstring(L, g->keys[k]);
        lua_setfield(L, -2, cpx_usage_dim_names[j->dims[k]]);
      }
#define SETN(name, v)                                                          \
  lua_pushnumber(L, (lua_Number)(v));                                          \
  lua_setfield(L, -2, name)
      SETN("requests", g->requests);
      SETN("success", g->success);
      SETN("failure", g->failure);
      SETN("input", g->input);
      SETN("output", g->output);
      SETN("reasoning", g->reasoning);
      SETN("cache_read", g->cache_read);
      SETN("cache_write", g->cache_write);
      SETN("latency_ms_sum", g->latency_ms_sum);
#undef SETN
      lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
  case J_IMPORT:
  case J_PRUNE:
    lua_pushnumber(L, (lua_Number)j->count);
    return 1;
  default:
    lua_pushboolean(L, 1);
    return 1;
  }
}

static job_t *job_new(lua_State *L, int kind) {
  job_t *j = calloc(1, sizeof(*j));
  if (!j)
    luaL_error(L, "out of memory");
  j->kind = kind;
  j->job.work = job_work;
  j->job.push = job_push;
  j->job.done = job_free;
  return j;
}

static void read_filter(lua_State *L, int t, cpx_usage_filter_t *f) {
  double v;
  if (!lua_istable(L, t))
    return;
  if (field_num(L, t, "from", &v))
    f->from = v;
  if (field_num(L, t, "to", &v))
    f->to = v;
  if (field_num(L, t, "limit", &v) && v > 0)
    f->limit = (size_t)v;
  lua_getfield(L, t, "newest");
  f->newest = lua_toboolean(L, -1);
  lua_pop(L, 1);
}

/* cpx.usage.query([{from, to, limit, newest}]) -> records | nil, err */
static int l_query(lua_State *L) {
  job_t *j = job_new(L, J_QUERY);
  read_filter(L, 1, &j->f);
  if (j->f.limit == 0 || j->f.limit > ROWS_MAX)
    j->f.limit = ROWS_MAX;
  return cpx_lua_await(L, &j->job);
}

/* cpx.usage.aggregate({from, to, group_by = {dim, ...}}) -> groups */
static int l_aggregate(lua_State *L) {
  job_t *j;
  luaL_checktype(L, 1, LUA_TTABLE);
  j = job_new(L, J_AGGREGATE);
  read_filter(L, 1, &j->f);
  j->f.limit = 0;
  lua_getfield(L, 1, "group_by");
  if (lua_istable(L, -1)) {
    int n = (int)lua_objlen(L, -1);
    for (int i = 1; i <= n; i++) {
      const char *d;
      int found = -1;
      lua_rawgeti(L, -1, i);
      d = lua_tostring(L, -1);
      for (int k = 0; d && k < CPX_USAGE_NDIMS; k++)
        if (strcmp(d, cpx_usage_dim_names[k]) == 0)
          found = k;
      lua_pop(L, 1);
      if (found < 0 || j->ndims >= CPX_USAGE_MAX_DIMS) {
        free(j);
        return luaL_error(L, "cpx.usage.aggregate: bad group_by entry %d", i);
      }
      j->dims[j->ndims++] = found;
    }
  }
  lua_pop(L, 1);
  return cpx_lua_await(L, &j->job);
}

/* cpx.usage.import(records) -> added | nil, err (idempotent on id) */
static int l_import(lua_State *L) {
  job_t *j;
  int n;
  luaL_checktype(L, 1, LUA_TTABLE);
  n = (int)lua_objlen(L, 1);
  if (n > ROWS_MAX)
    return luaL_error(L, "cpx.usage.import: at most %d records", ROWS_MAX);
  j = job_new(L, J_IMPORT);
  j->recs = calloc(n ? (size_t)n : 1, sizeof(*j->recs));
  if (!j->recs) {
    free(j);
    return luaL_error(L, "out of memory");
  }
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    if (lua_istable(L, -1) &&
        rec_from_lua(L, lua_gettop(L), &j->recs[j->n]) == 0)
      j->n++;
    lua_pop(L, 1);
  }
  return cpx_lua_await(L, &j->job);
}

/* cpx.usage.prune(before_epoch) -> removed */
static int l_prune(lua_State *L) {
  job_t *j = job_new(L, J_PRUNE);
  j->f.to = luaL_checknumber(L, 1);
  return cpx_lua_await(L, &j->job);
}

/* cpx.usage.flush() -> true: everything appended so far is written. */
static int l_flush(lua_State *L) {
  return cpx_lua_await(L, &job_new(L, J_FLUSH)->job);
}

/* cpx.usage.append(rec) -> true | false, "full" | "closed". No I/O. */
static int l_append(lua_State *L) {
  cpx_usage_rec_t r;
  int rc;
  luaL_checktype(L, 1, LUA_TTABLE);
  if (rec_from_lua(L, 1, &r) != 0)
    return luaL_error(L, "out of memory");
  rc = cpx_usage_submit(&r);
  if (rc == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_pushstring(L, rc == CPX_ELIMIT ? "full" : "closed");
  return 2;
}

/* cpx.usage.open{path, retention_days, queue, batch, flush_ms} -> true |
 * nil, err. Opening is file work, but it happens once per process, at the
 * first generation's start (before any request). */
static int l_open(lua_State *L) {
  cpx_usage_config_t c;
  const char *path;
  char err[512];
  double v;
  luaL_checktype(L, 1, LUA_TTABLE);
  /* Only the server writes usage: `cliproxy check` and doctor build a
   * generation without a worker and must not create the database. */
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.worker");
  lua_getfield(L, 1, "force");
  if (lua_touserdata(L, -2) == NULL && !lua_toboolean(L, -1)) {
    lua_pushnil(L);
    lua_pushliteral(L, "not a server worker");
    return 2;
  }
  lua_pop(L, 2);
  cpx_usage_config_defaults(&c);
  lua_getfield(L, 1, "path");
  path = lua_tostring(L, -1);
  if (!path || !*path)
    return luaL_error(L, "cpx.usage.open: path must be a non-empty string");
  if (cpx_store_expand_path(path, c.path, sizeof(c.path)) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "usage path too long");
    return 2;
  }
  lua_pop(L, 1);
  if (field_num(L, 1, "retention_days", &v) && v >= 0)
    c.retention_days = v;
  if (field_num(L, 1, "queue", &v) && v >= 1)
    c.queue_max = (size_t)v;
  if (field_num(L, 1, "batch", &v) && v >= 1)
    c.batch_max = (size_t)v;
  if (field_num(L, 1, "flush_ms", &v) && v >= 1)
    c.flush_ms = (uint64_t)v;
  err[0] = '\0';
  if (cpx_usage_open(&c, err, sizeof(err)) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err[0] ? err : "cannot open the usage store");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_close(lua_State *L) {
  CPX_UNUSED(L);
  cpx_usage_close();
  return 0;
}

static int l_stats(lua_State *L) {
  cpx_usage_stats_t st;
  cpx_usage_stats(&st);
  lua_createtable(L, 0, 8);
#define SETN(name, v)                                                          \
  lua_pushnumber(L, (lua_Number)(v));                                          \
  lua_setfield(L, -2, name)
  SETN("submitted", st.submitted);
  SETN("written", st.written);
  SETN("dropped", st.dropped);
  SETN("failed", st.failed);
  SETN("batches", st.batches);
  SETN("pruned", st.pruned);
  SETN("queued", st.queued);
#undef SETN
  lua_pushboolean(L, st.open);
  lua_setfield(L, -2, "open");
  return 1;
}

void cpx_usage_lua_register(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"open", l_open},     {"close", l_close}, {"append", l_append},
      {"stats", l_stats},   {"query", l_query}, {"aggregate", l_aggregate},
      {"import", l_import}, {"prune", l_prune}, {"flush", l_flush},
      {NULL, NULL}};
  cpx_lua_register_table(L, "usage", fns);
}
