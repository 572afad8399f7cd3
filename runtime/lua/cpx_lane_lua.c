/* cpx_lane_lua.c: the C relay's Lua glue (runtime/net/cpx_lane.c knows
 * nothing of Lua):
 *   - cpx.lane.configure: rt.lane's route table into the C structs;
 *   - the host of cpx_lane_serve: a hand-off starts rt.server on the
 *     request with the attempt as info.lane (push_lane_info), the
 *     generation is a VM reference, and the records of the requests the
 *     relay answered are handed to the worker's current generation
 *     (app.lane_records, rt.record.lane) after the loop iteration that
 *     finished them, in one call;
 *   - unless every subscriber of rt.record has a C counterpart
 *     (cpx.lane.records, set by rt.record whenever its subscribers
 *     change): then a record goes to the access log, the metrics and the
 *     usage store from C, with the same fields, and Lua never sees it.
 */
#include "cpx_lane_lua.h"

#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "cpx_access_log.h"
#include "cpx_bindings.h"
#include "cpx_errbody.h"
#include "cpx_json_scan.h"
#include "cpx_lane.h"
#include "cpx_log.h"
#include "cpx_lua.h"
#include "cpx_lua_int.h"
#include "cpx_lua_util.h"
#include "cpx_metrics.h"
#include "cpx_usage.h"
#include "cpx_usage_scan.h"
#include "cpx_worker.h"

/* Records a worker holds until the loop iteration ends. */
#define RECORDS_MAX 4096

/* ---- the host ------------------------------------------------------------ */

static void gen_ref(void *gen) {
  cpx_vm_ref(gen);
}

static void gen_unref(void *gen) {
  cpx_vm_unref(gen);
}

static void push_lane_info(lua_State *L, void *ud) {
  const cpx_lane_attempt_t *a = ud;

  lua_createtable(L, 0, 8);
  lua_pushinteger(L, (lua_Integer)a->pick->member + 1);
  lua_setfield(L, -2, "member");
  lua_pushnumber(L, cpx_pool_handle(a->pick));
  lua_setfield(L, -2, "handle");
  lua_pushstring(L, a->group);
  lua_setfield(L, -2, "group");
  if (a->rc != 0) {
    lua_pushstring(L, a->err);
    lua_setfield(L, -2, "err");
  } else if (a->first_event) {
    /* 2xx, then an error as the first event: Lua judges it as its own
     * bootstrap would have. */
    lua_createtable(L, 0, 2);
    lua_pushlstring(L, a->event.p, a->event.n);
    lua_setfield(L, -2, "event");
    lua_pushlstring(L, a->data.p, a->data.n);
    lua_setfield(L, -2, "data");
    lua_setfield(L, -2, "event");
    lua_pushinteger(L, a->status);
    lua_setfield(L, -2, "status");
  } else {
    const cpx_h1_req_t *q = a->q;
    lua_pushinteger(L, a->status);
    lua_setfield(L, -2, "status");
    lua_createtable(L, 0, (int)q->nfields);
    for (size_t i = 0; i < q->nfields; i++) {
      const cpx_h1_field_t *f = &q->fields[i];
      lua_pushlstring(L, q->hbuf + f->name_off, f->name_len);
      lua_pushlstring(L, q->hbuf + f->value_off, f->value_len);
      lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, a->body.p, a->body.n);
    lua_setfield(L, -2, "body");
  }
  lua_setfield(L, -2, "lane");
}

static void gen_handoff(void *gen, cpx_request_t *r,
                        const cpx_lane_attempt_t *a) {
  cpx_vm_t *vm = gen;
  cpx__lua_start(vm->worker, vm, r, push_lane_info, (void *)a);
}

static void on_record_idle(uv_idle_t *h);

/* Kept on the worker's list until the loop iteration ends. */
static int gen_record(void *gen, cpx_lane_record_t *rec) {
  cpx_worker_t *w = ((cpx_vm_t *)gen)->worker;
  /* After cpx_lane_records_close (shutdown) nobody delivers records. */
  if (!w || !w->record_idle.data || w->nrecords >= RECORDS_MAX)
    return -1;
  rec->next = w->records;
  w->records = rec;
  if (w->nrecords++ == 0)
    uv_idle_start(&w->record_idle, on_record_idle);
  return 0;
}

static const cpx_lane_host_t lua_host = {gen_ref, gen_unref, gen_handoff,
                                         gen_record};

int cpx_lane_try(cpx_worker_t *w, cpx_request_t *r) {
  return cpx_lane_serve(w->vm->lane, &w->h1, &lua_host, w->vm, r);
}

/* ---- request records ----------------------------------------------------- */

static void records_free(cpx_lane_record_t *rec) {
  while (rec) {
    cpx_lane_record_t *next = rec->next;
    cpx_lane_record_free(rec);
    rec = next;
  }
}

/* Pushes the list (oldest first) as rt.record.lane's input. */
static void push_records(lua_State *L, cpx_lane_record_t *list, size_t n) {
  cpx_lane_record_t *rev = NULL;
  int i = 0;
  while (list) { /* the list is newest first */
    cpx_lane_record_t *next = list->next;
    list->next = rev;
    rev = list;
    list = next;
  }
  lua_createtable(L, (int)n, 0);
  for (cpx_lane_record_t *rec = rev; rec; rec = rec->next) {
    lua_createtable(L, 0, 16);
    lua_pushstring(L, rec->model);
    lua_setfield(L, -2, "model");
    lua_pushstring(L, rec->rid);
    lua_setfield(L, -2, "request_id");
    lua_pushinteger(L, rec->member);
    lua_setfield(L, -2, "member");
    lua_pushinteger(L, rec->key_index);
    lua_setfield(L, -2, "key_index");
    lua_pushinteger(L, rec->status);
    lua_setfield(L, -2, "status");
    lua_pushboolean(L, rec->stream);
    lua_setfield(L, -2, "stream");
    lua_pushboolean(L, rec->aborted);
    lua_setfield(L, -2, "aborted");
    lua_pushnumber(L, rec->time);
    lua_setfield(L, -2, "time");
    lua_pushnumber(L, rec->latency_ms);
    lua_setfield(L, -2, "latency_ms");
    if (rec->ttft_ms >= 0) {
      lua_pushnumber(L, rec->ttft_ms);
      lua_setfield(L, -2, "ttft_ms");
    }
    lua_pushstring(L, cpx_fmt_name(rec->fmt));
    lua_setfield(L, -2, "format");
    lua_pushstring(L, rec->endpoint);
    lua_setfield(L, -2, "endpoint");
    lua_pushlstring(L, rec->bytes, rec->head_len);
    lua_setfield(L, -2, "head");
    lua_pushlstring(L, rec->bytes + rec->head_len, rec->tail_len);
    lua_setfield(L, -2, "tail");
    lua_pushboolean(L, rec->gap);
    lua_setfield(L, -2, "gap");
    lua_rawseti(L, -2, ++i);
  }
  records_free(rev);
}

static int traceback_fn(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

/* What cpx.lane.records said of rt.record's subscribers (vm->rec_native). */
enum {
  REC_NATIVE = 1,      /* each one has a C counterpart: C delivers */
  REC_ACCESS_LOG = 2,  /* rt.access_log */
  REC_METRICS = 4,     /* rt.metrics */
  REC_USAGE = 8,       /* rt.usage */
  REC_FAILED_LUA = 16, /* a failed request's record still goes to Lua
                        * (rt.reqlog's error logs) */
};

#define FIELD_MAX 1024 /* as cpx.usage.append cuts a text field */

static char *dup_field(const char *s) {
  size_t n;
  char *o;
  if (!s)
    return NULL;
  n = strlen(s);
  if (n > FIELD_MAX)
    n = FIELD_MAX;
  if ((o = malloc(n + 1))) {
    memcpy(o, s, n);
    o[n] = '\0';
  }
  return o;
}

/* rt.record.lane's status and failure rule. */
static int rec_status(const cpx_lane_record_t *rec) {
  return rec->aborted ? 499 : rec->status;
}

static int rec_failed(const cpx_lane_record_t *rec) {
  return rec_status(rec) >= 400 || rec->aborted;
}

/* The record rt.record.lane would have built, handed to the C side of
 * each subscriber: the same fields, no Lua. */
static void deliver_native(cpx_worker_t *w, const cpx_lane_record_t *rec,
                           unsigned mode) {
  double tok[CPX_UK_N];
  char *const *tr = rec->target->rec;
  const cpx_lane_t *l = rec->lane;
  const char *label = NULL;
  const char *err = rec->aborted ? "client closed request" : NULL;
  int status = rec_status(rec);

  if (l->key_labels && rec->key_index >= 1 &&
      (size_t)rec->key_index <= l->nkeys)
    label = l->key_labels[rec->key_index - 1];
  if (mode & REC_ACCESS_LOG)
    cpx_access_log_record(&w->server, rec->rid, strlen(rec->rid));
  if (!(mode & (REC_METRICS | REC_USAGE)))
    return;
  cpx_usage_scan(rec->fmt, rec->bytes, rec->head_len, rec->tail_len, rec->gap,
                 rec->stream, tok);
  if (mode & REC_METRICS) {
    cpx_metrics_rec_t o;
    char st[16];
    memset(&o, 0, sizeof(o));
    snprintf(st, sizeof(st), "%d", status);
    o.endpoint = rec->endpoint;
    o.status = st;
    o.provider = tr[CPX_LANE_REC_PROVIDER];
    o.model = rec->model;
    o.path = "lane";
    o.latency_ms = rec->latency_ms;
    o.has_latency = 1;
    o.ttft_ms = rec->ttft_ms;
    o.has_ttft = rec->ttft_ms >= 0;
    memcpy(o.tokens, tok, sizeof(tok));
    cpx_metrics_observe(&o);
  }
  if (mode & REC_USAGE) {
    cpx_usage_rec_t u;
    char id[37];
    memset(&u, 0, sizeof(u));
    if (cpx_uuid_v4(id) != 0)
      return;
    u.s[CPX_US_ID] = dup_field(id);
    u.s[CPX_US_METHOD] = dup_field("POST");
    u.s[CPX_US_ENDPOINT] = dup_field(rec->endpoint);
    u.s[CPX_US_CLIENT_FORMAT] = dup_field(cpx_fmt_name(rec->fmt));
    u.s[CPX_US_PROVIDER] = dup_field(tr[CPX_LANE_REC_PROVIDER]);
    u.s[CPX_US_ACCOUNT] = dup_field(tr[CPX_LANE_REC_ACCOUNT]);
    u.s[CPX_US_CREDENTIAL] = dup_field(tr[CPX_LANE_REC_CREDENTIAL]);
    u.s[CPX_US_MODEL] = dup_field(rec->model);
    u.s[CPX_US_UPSTREAM_MODEL] = dup_field(tr[CPX_LANE_REC_UPSTREAM_MODEL]);
    u.s[CPX_US_CLIENT_KEY] = dup_field(label);
    u.s[CPX_US_ERROR] = dup_field(err);
    u.s[CPX_US_TAG] = dup_field("fast");
    u.s[CPX_US_PATH] = dup_field("lane");
    u.s[CPX_US_SOURCE] = dup_field(tr[CPX_LANE_REC_SOURCE]);
    u.n[CPX_UN_TIME] = rec->time;
    u.n[CPX_UN_LATENCY_MS] = rec->latency_ms;
    u.n[CPX_UN_TTFT_MS] = rec->ttft_ms;
    u.has[CPX_UN_TTFT_MS] = rec->ttft_ms >= 0;
    u.n[CPX_UN_STREAM] = rec->stream ? 1 : 0;
    u.n[CPX_UN_STATUS] = status;
    u.n[CPX_UN_FAILED] = rec_failed(rec);
    u.n[CPX_UN_ATTEMPTS] = 1;
    for (int k = 0; k < CPX_UK_N; k++)
      u.n[CPX_UN_INPUT + k] = tok[k];
    for (int k = 0; k < CPX_USAGE_NNUM; k++)
      if (k != CPX_UN_TTFT_MS)
        u.has[k] = 1;
    /* (a full queue drops it and counts it, as cpx.usage.append does) */
    cpx_usage_submit(&u);
    cpx_usage_rec_clear(&u);
  }
}

/* After the loop iteration: the records C can deliver are delivered, the
 * rest go to Lua, the whole list in one call. */
static void on_record_idle(uv_idle_t *h) {
  cpx_worker_t *w = h->data;
  cpx_lane_record_t *list = w->records, *lua_list = NULL, *rev = NULL;
  size_t n = 0;
  cpx_vm_t *vm = w->vm;
  unsigned mode = vm ? vm->rec_native : 0;
  lua_State *L;
  int top;

  uv_idle_stop(h);
  w->records = NULL;
  w->nrecords = 0;
  if (!vm) {
    records_free(list);
    return;
  }
  while (list) { /* newest first -> oldest first */
    cpx_lane_record_t *next = list->next;
    list->next = rev;
    rev = list;
    list = next;
  }
  while (rev) { /* Lua's list is built newest first again */
    cpx_lane_record_t *next = rev->next;
    if ((mode & REC_NATIVE) && rev->target &&
        !((mode & REC_FAILED_LUA) && rec_failed(rev))) {
      deliver_native(w, rev, mode);
      cpx_lane_record_free(rev);
    } else {
      rev->next = lua_list;
      lua_list = rev;
      n++;
    }
    rev = next;
  }
  if (!lua_list)
    return;
  L = vm->L;
  top = lua_gettop(L);
  vm->host++;
  lua_pushcfunction(L, traceback_fn);
  lua_rawgeti(L, LUA_REGISTRYINDEX, vm->app_ref);
  lua_getfield(L, -1, "lane_records");
  lua_remove(L, -2);
  if (!lua_isfunction(L, -1)) {
    vm->host--;
    records_free(lua_list);
    lua_settop(L, top);
    return;
  }
  push_records(L, lua_list, n);
  vm->host--;
  cpx_vm_enter(vm);
  if (lua_pcall(L, 1, 0, top + 1) != 0)
    cpx_log_error(NULL, "lane records: %s", lua_tostring(L, -1));
  cpx_vm_leave(vm);
  lua_settop(L, top);
}

void cpx_lane_records_init(cpx_worker_t *w) {
  uv_idle_init(w->loop, &w->record_idle);
  w->record_idle.data = w;
  w->records = NULL;
  w->nrecords = 0;
}

static void record_idle_closed(uv_handle_t *h) {
  CPX_UNUSED(h);
}

void cpx_lane_records_close(cpx_worker_t *w) {
  /* What was not delivered yet goes to Lua now (the VM is still there). */
  if (w->nrecords)
    on_record_idle(&w->record_idle);
  w->record_idle.data = NULL; /* closed: records are refused from now on */
  uv_close((uv_handle_t *)&w->record_idle, record_idle_closed);
}

/* ---- cpx.lane ----------------------------------------------------------- */

/* Copies the string at the top of the stack into a new C string (and pops
 * it); NULL when it is not a string, with *bad set to what. */
static char *pop_str(lua_State *L, size_t *len, const char **bad,
                     const char *what) {
  size_t n;
  const char *s =
      lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
  char *out = NULL;
  if (s && (out = malloc(n + 1))) {
    memcpy(out, s, n);
    out[n] = 0;
    if (len)
      *len = n;
  } else if (!*bad) {
    *bad = what;
  }
  lua_pop(L, 1);
  return out;
}

static char *field_str(lua_State *L, int idx, const char *k, size_t *len,
                       const char **bad) {
  lua_getfield(L, idx, k);
  return pop_str(L, len, bad, k);
}

static cpx_vm_t *current_vm(lua_State *L) {
  cpx_vm_t *vm;
  lua_getfield(L, LUA_REGISTRYINDEX, "cpx.vm");
  vm = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return vm;
}

/* The length of the list at idx (0 when absent or not a table). */
static size_t list_len(lua_State *L, int idx) {
  return lua_istable(L, idx) ? lua_objlen(L, idx) : 0;
}

/* A list of member indexes (1-based into the route's members) -> mask. */
static uint32_t member_mask(lua_State *L, int idx, size_t nmembers,
                            const char **bad, const char *what) {
  uint32_t mask = 0;
  size_t n = list_len(L, idx);
  for (size_t i = 0; i < n; i++) {
    lua_Integer k;
    lua_rawgeti(L, idx, (int)i + 1);
    k = lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (k < 1 || (size_t)k > nmembers) {
      if (!*bad)
        *bad = what;
      return 0;
    }
    mask |= 1u << (k - 1);
  }
  return mask;
}

static const char *build_target(lua_State *L, int ti, cpx_lane_route_t *rt,
                                cpx_lane_model_t *m, cpx_lane_target_t *t) {
  const char *bad = NULL;
  t->host = field_str(L, ti, "host", NULL, &bad);
  lua_getfield(L, ti, "port");
  t->port = (int)lua_tointeger(L, -1);
  if (t->port <= 0 || t->port > 65535)
    bad = bad ? bad : "port";
  lua_pop(L, 1);
  lua_getfield(L, ti, "tls");
  t->tls = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, ti, "record");
  if (lua_istable(L, -1)) {
    static const char *const names[CPX_LANE_REC_N] = {
        "provider", "account", "credential", "source", "upstream_model"};
    int ri = lua_gettop(L);
    for (int i = 0; i < CPX_LANE_REC_N; i++) {
      const char *ignore = NULL; /* absent fields stay NULL */
      t->rec[i] = field_str(L, ri, names[i], NULL, &ignore);
    }
  }
  lua_pop(L, 1);
  t->head = field_str(L, ti, "head", &t->head_len, &bad);
  t->head_stream = field_str(L, ti, "head_stream", &t->head_stream_len, &bad);
  if (!rt->model_in_path)
    t->model = field_str(L, ti, "model", &t->model_len, &bad);
  t->slot_lines = calloc(m->nslots ? m->nslots : 1, sizeof(cpx_str_t));
  if (!t->slot_lines)
    return "slot_lines";
  lua_getfield(L, ti, "slot_lines");
  for (size_t k = 0; k < m->nslots && !bad; k++) {
    size_t len = 0;
    lua_rawgeti(L, -1, (int)k + 1);
    t->slot_lines[k].p = pop_str(L, &len, &bad, "slot_lines");
    t->slot_lines[k].n = len;
  }
  lua_pop(L, 1);
  return bad;
}

static const char *build_model(lua_State *L, int mi, cpx_lane_route_t *rt,
                               cpx_lane_model_t *m) {
  const char *bad = NULL;
  size_t n, nm = rt->nkeys - rt->nfixed;

  m->name = field_str(L, mi, "name", &m->name_len, &bad);
  m->group = field_str(L, mi, "group", NULL, &bad);
  if (bad)
    return bad;

  lua_getfield(L, mi, "require");
  m->require = member_mask(L, lua_gettop(L), nm, &bad, "require");
  lua_pop(L, 1);

  lua_getfield(L, mi, "unless");
  n = list_len(L, -1);
  m->unless = calloc(n ? n : 1, sizeof(uint32_t));
  if (!m->unless)
    bad = "unless";
  for (size_t i = 0; i < n && !bad; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    m->unless[i] = member_mask(L, lua_gettop(L), nm, &bad, "unless");
    lua_pop(L, 1);
    m->nunless = i + 1;
    if (!m->unless[i])
      bad = "unless";
  }
  lua_pop(L, 1);

  lua_getfield(L, mi, "at_most");
  n = list_len(L, -1);
  m->at_most = calloc(n ? n : 1, sizeof(cpx_lane_count_t));
  if (!m->at_most)
    bad = bad ? bad : "at_most";
  for (size_t i = 0; i < n && !bad; i++) {
    int ci;
    lua_rawgeti(L, -1, (int)i + 1);
    ci = lua_gettop(L);
    m->nat_most = i + 1;
    m->at_most[i].text = field_str(L, ci, "text", &m->at_most[i].len, &bad);
    lua_getfield(L, ci, "max");
    m->at_most[i].max = (long)lua_tointeger(L, -1);
    lua_pop(L, 2);
    if (!bad && m->at_most[i].len == 0)
      bad = "at_most";
  }
  lua_pop(L, 1);

  lua_getfield(L, mi, "lua_headers");
  n = list_len(L, -1);
  m->lua_headers = calloc(n ? n : 1, sizeof(char *));
  if (!m->lua_headers)
    bad = bad ? bad : "lua_headers";
  for (size_t i = 0; i < n && !bad; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    m->lua_headers[i] = pop_str(L, NULL, &bad, "lua_headers");
    m->nlua_headers = i + 1;
  }
  lua_pop(L, 1);

  lua_getfield(L, mi, "slots");
  n = list_len(L, -1);
  m->slots = calloc(n ? n : 1, sizeof(cpx_lane_slot_t));
  if (!m->slots)
    bad = bad ? bad : "slots";
  for (size_t i = 0; i < n && !bad; i++) {
    int si;
    lua_rawgeti(L, -1, (int)i + 1);
    si = lua_gettop(L);
    m->nslots = i + 1;
    m->slots[i].client = field_str(L, si, "client", NULL, &bad);
    m->slots[i].prefix =
        field_str(L, si, "prefix", &m->slots[i].prefix_len, &bad);
    lua_getfield(L, si, "list");
    m->slots[i].list = lua_toboolean(L, -1);
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  if (bad)
    return bad;

  lua_getfield(L, mi, "targets");
  n = list_len(L, -1);
  m->targets = calloc(n ? n : 1, sizeof(cpx_lane_target_t));
  if (!m->targets || !lua_istable(L, -1))
    bad = "targets";
  for (size_t j = 0; j < n && !bad; j++) {
    int ti;
    lua_rawgeti(L, -1, (int)j + 1);
    ti = lua_gettop(L);
    if (!lua_istable(L, ti)) {
      bad = "targets[j]";
      break;
    }
    m->ntargets = j + 1;
    bad = build_target(L, ti, rt, m, &m->targets[j]);
    lua_settop(L, ti - 1);
  }
  lua_pop(L, 1);
  return bad;
}

static const char *build_route(lua_State *L, int ri, cpx_lane_route_t *rt) {
  const char *bad = NULL, *fmt;
  size_t n, fn;

  rt->path = field_str(L, ri, "path", &rt->path_len, &bad);
  lua_getfield(L, ri, "format");
  fmt = lua_tolstring(L, -1, &fn);
  rt->fmt = fmt ? cpx_fmt_parse(fmt, fn) : -1;
  lua_pop(L, 1);
  if (rt->fmt < 0)
    return "format";
  lua_getfield(L, ri, "model_in_path");
  rt->model_in_path = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (bad)
    return bad;

  lua_getfield(L, ri, "members");
  n = list_len(L, -1);
  if (n > CPX_LANE_MEMBERS_MAX)
    return "members";
  rt->nfixed = rt->model_in_path ? 0 : CPX_LANE_FIXED_KEYS;
  rt->keys = calloc(rt->nfixed + n + 1, sizeof(cpx_str_t));
  if (!rt->keys)
    return "members";
  if (!rt->model_in_path) {
    rt->keys[0].p = "model";
    rt->keys[0].n = 5;
    rt->keys[1].p = "stream";
    rt->keys[1].n = 6;
  }
  rt->nkeys = rt->nfixed;
  for (size_t i = 0; i < n && !bad; i++) {
    size_t len = 0;
    lua_rawgeti(L, -1, (int)i + 1);
    rt->keys[rt->nfixed + i].p = pop_str(L, &len, &bad, "members");
    rt->keys[rt->nfixed + i].n = len;
    rt->nkeys++;
  }
  lua_pop(L, 1);
  if (bad)
    return bad;

  lua_getfield(L, ri, "models");
  n = list_len(L, -1);
  if (!lua_istable(L, -1))
    bad = "models";
  rt->models = calloc(n ? n : 1, sizeof(cpx_lane_model_t));
  if (!rt->models)
    bad = "models";
  for (size_t i = 0; i < n && !bad; i++) {
    int mi;
    lua_rawgeti(L, -1, (int)i + 1);
    mi = lua_gettop(L);
    if (!lua_istable(L, mi)) {
      bad = "models[i]";
      break;
    }
    rt->nmodels = i + 1;
    bad = build_model(L, mi, rt, &rt->models[i]);
    lua_settop(L, mi - 1);
  }
  lua_pop(L, 1);
  return bad;
}

/* Builds the table at index 1 into l (zeroed). Returns NULL or the name of
 * the first field that is missing or malformed (or out of memory). Never
 * raises: what was built stays in l for cpx_lane_free. */
static const char *build(lua_State *L, cpx_lane_t *l) {
  const char *bad = NULL;
  size_t n;
  int top = lua_gettop(L);

  lua_getfield(L, 1, "store_version");
  if (lua_type(L, -1) == LUA_TNUMBER) {
    l->check_store = 1;
    l->store_version = (uint64_t)lua_tonumber(L, -1);
  }
  lua_pop(L, 1);

  lua_getfield(L, 1, "keys");
  n = list_len(L, -1);
  if (n) {
    l->keys = calloc(n, sizeof(char *));
    l->key_lens = calloc(n, sizeof(size_t));
    l->key_labels = calloc(n, sizeof(char *));
    if (!l->keys || !l->key_lens || !l->key_labels)
      bad = "keys";
    for (size_t i = 0; i < n && !bad; i++) {
      lua_rawgeti(L, -1, (int)i + 1);
      l->keys[i] = pop_str(L, &l->key_lens[i], &bad, "keys");
      l->nkeys = i + 1;
    }
  }
  lua_pop(L, 1);

  lua_getfield(L, 1, "key_labels"); /* optional: no label without it */
  for (size_t i = 0; i < l->nkeys && !bad && lua_istable(L, -1); i++) {
    const char *ignore = NULL;
    lua_rawgeti(L, -1, (int)i + 1);
    l->key_labels[i] = pop_str(L, NULL, &ignore, "key_labels");
  }
  lua_pop(L, 1);

  lua_getfield(L, 1, "routes");
  n = list_len(L, -1);
  if (!lua_istable(L, -1))
    bad = bad ? bad : "routes";
  l->routes = calloc(n ? n : 1, sizeof(cpx_lane_route_t));
  if (!l->routes)
    bad = "routes";
  for (size_t i = 0; i < n && !bad; i++) {
    int ri;
    lua_rawgeti(L, -1, (int)i + 1);
    ri = lua_gettop(L);
    if (!lua_istable(L, ri)) {
      bad = "routes[i]";
      break;
    }
    l->nroutes = i + 1;
    bad = build_route(L, ri, &l->routes[i]);
    lua_settop(L, ri - 1);
  }
  lua_settop(L, top);
  return bad;
}

/* cpx.lane.configure(t | nil) -> true | false, why
 *   t = { keys = {..}, key_labels = {..} (rt.record's label of each key),
 *         store_version = n|nil,
 *         routes = { { format, path, model_in_path, members = {..},
 *                      models = { { name, group, require = {i..},
 *                                   unless = { {i..}.. }, at_most = {
 *                                   {text, max}.. }, lua_headers = {..},
 *                                   slots = { {client, prefix, list}.. },
 *                                   targets = { { host, port, tls, head,
 *                                   head_stream, model, slot_lines, record =
 *                                   { provider, account, credential, source,
 *                                   upstream_model } } } } } } }
 * } (rt.lane documents each field.) Replaces the generation's table; nil turns
 * the relay off. Outside a server worker (cliproxy check, the busted module) it
 * does nothing. */
static int l_configure(lua_State *L) {
  cpx_vm_t *vm = current_vm(L);
  cpx_lane_t *l;
  const char *bad;

  if (!vm || !vm->worker) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "no worker");
    return 2;
  }
  if (lua_isnoneornil(L, 1)) {
    cpx_lane_free(vm->lane);
    vm->lane = NULL;
    lua_pushboolean(L, 1);
    return 1;
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  l = cpx_lane_new();
  if (!l)
    return luaL_error(L, "out of memory");
  bad = build(L, l);
  if (bad) {
    cpx_lane_free(l);
    lua_pushboolean(L, 0);
    lua_pushfstring(L, "cpx.lane.configure: field '%s' is missing or invalid",
                    bad);
    return 2;
  }
  cpx_lane_seal(l);
  cpx_lane_free(vm->lane);
  vm->lane = l;
  lua_pushboolean(L, 1);
  return 1;
}

/* cpx.lane.records{ native, access_log, metrics, usage, failed_to_lua }
 * -> true: which of rt.record's subscribers the relay's records feed from
 * C (rt.record calls it whenever its subscribers change). native: every
 * subscriber has a C counterpart, so a record needs no Lua; failed_to_lua:
 * the record of a failed request still goes to Lua. Outside a server
 * worker it does nothing. */
static int l_records(lua_State *L) {
  static const struct {
    const char *k;
    unsigned bit;
  } bits[] = {{"native", REC_NATIVE},
              {"access_log", REC_ACCESS_LOG},
              {"metrics", REC_METRICS},
              {"usage", REC_USAGE},
              {"failed_to_lua", REC_FAILED_LUA}};
  cpx_vm_t *vm = current_vm(L);
  unsigned mode = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
    lua_getfield(L, 1, bits[i].k);
    if (lua_toboolean(L, -1))
      mode |= bits[i].bit;
    lua_pop(L, 1);
  }
  if (vm)
    vm->rec_native = mode;
  lua_pushboolean(L, 1);
  return 1;
}

/* cpx.record_usage(format, head, tail, gap, stream) -> { input, output,
 * reasoning, cache_read, cache_write }: the counts the C records take from
 * a relayed answer's ends (cpx_usage_scan), for the spec that compares
 * them with rt.record's Lua readers. */
static int l_usage(lua_State *L) {
  static const char *const kinds[CPX_UK_N] = {"input", "output", "reasoning",
                                              "cache_read", "cache_write"};
  size_t fn, hn, tn;
  const char *f = luaL_checklstring(L, 1, &fn);
  const char *head = luaL_checklstring(L, 2, &hn);
  const char *tail = luaL_checklstring(L, 3, &tn);
  int fmt = cpx_fmt_parse(f, fn);
  double out[CPX_UK_N];
  char *b;
  if (fmt < 0)
    return luaL_argerror(L, 1, "unknown format");
  b = malloc(hn + tn + 1);
  if (!b)
    return luaL_error(L, "out of memory");
  memcpy(b, head, hn);
  memcpy(b + hn, tail, tn);
  if (cpx_usage_scan(fmt, b, hn, tn, lua_toboolean(L, 4), lua_toboolean(L, 5),
                     out) != 0) {
    free(b);
    return luaL_error(L, "out of memory");
  }
  free(b);
  lua_createtable(L, 0, CPX_UK_N);
  for (int k = 0; k < CPX_UK_N; k++) {
    lua_pushnumber(L, out[k]);
    lua_setfield(L, -2, kinds[k]);
  }
  return 1;
}

void cpx_record_usage_register(lua_State *L) {
  lua_pushcfunction(L, l_usage);
  lua_setfield(L, -2, "record_usage");
}

void cpx_lane_lua_register(lua_State *L) {
  cpx_record_usage_register(L);
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, l_configure);
  lua_setfield(L, -2, "configure");
  lua_pushcfunction(L, l_records);
  lua_setfield(L, -2, "records");

  lua_setfield(L, -2, "lane");
}
