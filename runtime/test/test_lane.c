/* test_lane.c: the C relay (cpx_lane.c) without Lua: a real cpx_server
 * whose handler offers each request to cpx_lane_serve, a fake host that
 * stands for rt.server (it counts generation references, answers hand-offs
 * with 299 and keeps records), a scripted upstream, and a client, all on
 * one loop. Covers the routes by body and by path, the rules (members,
 * headers), header slots, the splice of "model", hand-offs (a non-2xx, an
 * error as the first real stream event after a handshake) and relayed
 * streams. */
#include "cpx_errbody.h"
#include "cpx_lane.h"
#include "cpx_pool.h"
#include "cpx_test.h"

#include <stdlib.h>
#include <string.h>

static uv_loop_t *loop;

/* ---- the scripted upstream ------------------------------------------------
 */

typedef struct {
  uv_tcp_t tcp;
  char buf[1 << 16];
  size_t len;
} uconn_t;

static struct {
  uv_tcp_t listener;
  int port;
  const char *answer;
  size_t answer_len;
  char last[1 << 16]; /* the last request, head and body */
  size_t last_len;
  int requests;
} U;

static void u_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  uconn_t *c = h->data;
  (void)sz;
  b->base = c->buf + c->len;
  b->len = sizeof(c->buf) - c->len;
}

static void u_closed(uv_handle_t *h) {
  free(h->data);
}

/* An answer that says Connection: close is close-delimited: the
 * connection ends after it. */
static void u_written(uv_write_t *w, int st) {
  uconn_t *c = w->data;
  (void)st;
  free(w);
  if (memmem(U.answer, U.answer_len, "Connection: close", 17) &&
      !uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, u_closed);
}

static void u_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  uconn_t *c = s->data;
  const char *e, *cl;
  size_t head, body = 0;
  (void)b;
  if (n < 0) {
    if (!uv_is_closing((uv_handle_t *)s))
      uv_close((uv_handle_t *)s, u_closed);
    return;
  }
  c->len += (size_t)n;
  e = memmem(c->buf, c->len, "\r\n\r\n", 4);
  if (!e)
    return;
  head = (size_t)(e - c->buf) + 4;
  cl = memmem(c->buf, head, "Content-Length: ", 16);
  if (cl)
    body = strtoul(cl + 16, NULL, 10);
  if (c->len < head + body)
    return;
  if (head + body >= sizeof(U.last))
    abort();
  memcpy(U.last, c->buf, head + body);
  U.last[head + body] = 0;
  U.last_len = head + body;
  memmove(c->buf, c->buf + head + body, c->len - head - body);
  c->len -= head + body;
  U.requests++;
  {
    uv_write_t *w = malloc(sizeof(*w));
    uv_buf_t out = uv_buf_init((char *)U.answer, (unsigned)U.answer_len);
    w->data = c;
    uv_write(w, s, &out, 1, u_written);
  }
}

static void u_connection(uv_stream_t *l, int st) {
  uconn_t *c = calloc(1, sizeof(*c));
  (void)st;
  uv_tcp_init(loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
    uv_close((uv_handle_t *)&c->tcp, u_closed);
    return;
  }
  uv_read_start((uv_stream_t *)&c->tcp, u_alloc, u_read);
}

static int listen_local(uv_tcp_t *t, uv_connection_cb cb) {
  struct sockaddr_in a;
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  uv_tcp_init(loop, t);
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_bind(t, (const struct sockaddr *)&a, 0);
  uv_listen((uv_stream_t *)t, 16, cb);
  uv_tcp_getsockname(t, (struct sockaddr *)&ss, &len);
  return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* ---- the fake host ---------------------------------------------------------
 */

static struct {
  int refs;     /* generation references held now */
  int handoffs; /* hand-offs seen */
  int last_status, last_first_event, last_rc;
  char last_data[512];
  cpx_lane_record_t *records;
  int nrecords;
} H;

static void h_ref(void *gen) {
  (void)gen;
  H.refs++;
}

static void h_unref(void *gen) {
  (void)gen;
  H.refs--;
}

static void h_handoff(void *gen, cpx_request_t *r,
                      const cpx_lane_attempt_t *a) {
  static const cpx_header_t hs[] = {
      {CPX_STR("Content-Type"), CPX_STR("text/plain")}};
  size_t n = a->first_event ? a->data.n : a->body.n;
  (void)gen;
  H.handoffs++;
  H.last_status = a->status;
  H.last_first_event = a->first_event;
  H.last_rc = a->rc;
  if (n >= sizeof(H.last_data))
    n = sizeof(H.last_data) - 1;
  memcpy(H.last_data, a->first_event ? a->data.p : a->body.p, n);
  H.last_data[n] = 0;
  /* as rt.pool would: the pick is reported */
  cpx_pool_report(cpx_pool_global(), a->pick->state, a->pick->probe,
                  CPX_POOL_NEUTRAL, 0);
  cpx_request_respond(r, 299, hs, 1, "handed", 6);
}

static int h_record(void *gen, cpx_lane_record_t *rec) {
  (void)gen;
  rec->next = H.records;
  H.records = rec;
  H.nrecords++;
  return 0;
}

static const cpx_lane_host_t host = {h_ref, h_unref, h_handoff, h_record};

/* ---- the server ------------------------------------------------------------
 */

static cpx_server_t srv;
static cpx_h1_pool_t h1;
static cpx_lane_t *lane;
static int server_port;

static void on_request(cpx_server_t *s, cpx_request_t *r) {
  static const cpx_header_t hs[] = {
      {CPX_STR("Content-Type"), CPX_STR("text/plain")}};
  (void)s;
  if (!cpx_lane_serve(lane, &h1, &host, &H, r))
    cpx_request_respond(r, 598, hs, 1, "not taken", 9); /* "Lua" */
}

/* ---- the client --------------------------------------------------------- */

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t conn;
  uv_write_t w;
  const char *req;
  char resp[1 << 16];
  size_t len;
  int done;
} client_t;

static void c_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  client_t *c = h->data;
  (void)sz;
  b->base = c->resp + c->len;
  b->len = sizeof(c->resp) - 1 - c->len;
}

static void c_closed(uv_handle_t *h) {
  client_t *c = h->data;
  c->done = 1;
}

static void c_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  client_t *c = s->data;
  (void)b;
  if (n < 0) {
    c->resp[c->len] = 0;
    uv_close((uv_handle_t *)s, c_closed);
    return;
  }
  c->len += (size_t)n;
}

static void c_written(uv_write_t *w, int st) {
  (void)w;
  (void)st;
}

static void c_connected(uv_connect_t *req, int st) {
  client_t *c = req->data;
  uv_buf_t b = uv_buf_init((char *)c->req, (unsigned)strlen(c->req));
  CPX_CHECK_INT(st, 0);
  uv_read_start((uv_stream_t *)&c->tcp, c_alloc, c_read);
  uv_write(&c->w, (uv_stream_t *)&c->tcp, &b, 1, c_written);
}

/* Sends one request (with Connection: close) and returns the whole raw
 * response, in a static buffer. */
static const char *exchange(const char *req) {
  static client_t c;
  struct sockaddr_in a;
  memset(&c, 0, sizeof(c));
  c.req = req;
  uv_tcp_init(loop, &c.tcp);
  c.tcp.data = &c;
  c.conn.data = &c;
  uv_ip4_addr("127.0.0.1", server_port, &a);
  uv_tcp_connect(&c.conn, &c.tcp, (const struct sockaddr *)&a, c_connected);
  while (!c.done)
    uv_run(loop, UV_RUN_ONCE);
  /* what the relay finished on its side (records, references) */
  for (int i = 0; i < 8; i++)
    uv_run(loop, UV_RUN_NOWAIT);
  return c.resp;
}

static char reqbuf[1 << 17];

static const char *post(const char *path, const char *headers,
                        const char *body) {
  snprintf(reqbuf, sizeof(reqbuf),
           "POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s"
           "Content-Length: %zu\r\n\r\n%s",
           path, headers, strlen(body), body);
  return exchange(reqbuf);
}

static const char *body_of(const char *resp) {
  const char *e = strstr(resp, "\r\n\r\n");
  return e ? e + 4 : "";
}

static int status_of(const char *resp) {
  return (int)strtol(resp + 9, NULL, 10);
}

/* ---- the table ------------------------------------------------------------
 */

static char *sdup(const char *s) {
  return strdup(s);
}

/* One route with one model "m" (pool group "g") on the upstream. */
static void add_route(cpx_lane_t *l, int fmt, const char *path, int in_path,
                      const char *members[], size_t nmembers) {
  cpx_lane_route_t *rt;
  l->routes = realloc(l->routes, (l->nroutes + 1) * sizeof(*rt));
  rt = &l->routes[l->nroutes++];
  memset(rt, 0, sizeof(*rt));
  rt->fmt = fmt;
  rt->model_in_path = in_path;
  rt->path = sdup(path);
  rt->path_len = strlen(path);
  rt->nfixed = in_path ? 0 : CPX_LANE_FIXED_KEYS;
  rt->keys = calloc(rt->nfixed + nmembers + 1, sizeof(cpx_str_t));
  if (!in_path) {
    rt->keys[0].p = "model";
    rt->keys[0].n = 5;
    rt->keys[1].p = "stream";
    rt->keys[1].n = 6;
  }
  for (size_t i = 0; i < nmembers; i++) {
    rt->keys[rt->nfixed + i].p = sdup(members[i]);
    rt->keys[rt->nfixed + i].n = strlen(members[i]);
  }
  rt->nkeys = rt->nfixed + nmembers;
  rt->models = calloc(1, sizeof(cpx_lane_model_t));
  rt->nmodels = 1;
}

static cpx_lane_model_t *model_of(cpx_lane_t *l, size_t route, const char *head,
                                  const char *head_stream, const char *model) {
  cpx_lane_model_t *m = &l->routes[route].models[0];
  cpx_lane_target_t *t;
  m->name = sdup("m");
  m->name_len = 1;
  m->group = sdup("g");
  m->targets = calloc(1, sizeof(*t));
  m->ntargets = 1;
  t = &m->targets[0];
  t->host = sdup("127.0.0.1");
  t->port = U.port;
  t->head = sdup(head);
  t->head_len = strlen(head);
  t->head_stream = sdup(head_stream);
  t->head_stream_len = strlen(head_stream);
  if (model) {
    t->model = sdup(model);
    t->model_len = strlen(model);
  }
  t->slot_lines = calloc(2, sizeof(cpx_str_t));
  m->unless = calloc(1, sizeof(uint32_t));
  m->at_most = calloc(1, sizeof(cpx_lane_count_t));
  m->lua_headers = calloc(1, sizeof(char *));
  m->slots = calloc(2, sizeof(cpx_lane_slot_t));
  return m;
}

static void setup_table(void) {
  static const char *members[] = {"betas", "max_tokens"};
  cpx_lane_model_t *m;
  lane = cpx_lane_new();
  /* 0: Chat, no rules */
  add_route(lane, CPX_FMT_OPENAI_CHAT, "/v1/chat/completions", 0, NULL, 0);
  model_of(lane, 0, "POST /c HTTP/1.1\r\nHost: up\r\nX-Acc: json\r\n",
           "POST /c HTTP/1.1\r\nHost: up\r\nX-Acc: sse\r\n", "\"up\"");
  /* 1: Messages: not with betas, only with max_tokens; one slot with the
   * account's default and one without; x-lua-please sends it to Lua */
  add_route(lane, CPX_FMT_CLAUDE, "/v1/messages", 0, members, 2);
  m = model_of(lane, 1, "POST /m HTTP/1.1\r\nHost: up\r\n",
               "POST /m HTTP/1.1\r\nHost: up\r\nAccept: sse\r\n",
               "\"claude-up\"");
  m->unless[0] = 1u << 0;
  m->nunless = 1;
  m->require = 1u << 1;
  m->lua_headers[0] = sdup("x-lua-please");
  m->nlua_headers = 1;
  m->slots[0].client = sdup("anthropic-version");
  m->slots[0].prefix = sdup("Anthropic-Version: ");
  m->slots[0].prefix_len = strlen(m->slots[0].prefix);
  m->slots[1].client = sdup("anthropic-beta");
  m->slots[1].prefix = sdup("Anthropic-Beta: ");
  m->slots[1].prefix_len = strlen(m->slots[1].prefix);
  m->slots[1].list = 1;
  m->nslots = 2;
  m->targets[0].slot_lines[0].p = sdup("Anthropic-Version: dflt\r\n");
  m->targets[0].slot_lines[0].n = strlen(m->targets[0].slot_lines[0].p);
  m->targets[0].slot_lines[1].p = sdup("");
  /* 2: Gemini, the model in the path */
  add_route(lane, CPX_FMT_GEMINI, "/v1beta/models/", 1, NULL, 0);
  model_of(lane, 2, "POST /g/up:generateContent HTTP/1.1\r\nHost: up\r\n",
           "POST /g/up:streamGenerateContent?alt=sse HTTP/1.1\r\nHost: up\r\n",
           NULL);
  cpx_lane_seal(lane);
}

static void setup(void) {
  cpx_server_config_t cfg;
  char err[256];
  cpx_pool_account_t a = {"acct", "test", 0, 1, 0, 0};
  cpx_pool_member_t mem = {"acct", "up"};
  /* generous: a test that hangs fails by the ctest timeout, not these */
  cpx_h1_timeouts_t to = {5000, 5000, 5000, 5000};
  struct sockaddr_storage ss;
  int len = sizeof(ss);

  loop = uv_default_loop();
  U.port = listen_local(&U.listener, u_connection);
  cpx_pool_account(cpx_pool_global(), &a);
  cpx_pool_set_group(cpx_pool_global(), "g", &mem, 1);
  cpx_h1_pool_init(&h1, loop, &to);
  cpx_server_config_defaults(&cfg);
  strcpy(cfg.host, "127.0.0.1");
  cfg.port = 0;
  if (cpx_server_init(&srv, loop, &cfg, NULL) != 0 ||
      cpx_server_listen(&srv, err, sizeof(err)) != 0) {
    fprintf(stderr, "server: %s\n", err);
    exit(1);
  }
  srv.on_request = on_request;
  uv_tcp_getsockname(&srv.listener, (struct sockaddr *)&ss, &len);
  server_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  setup_table();
}

static void upstream_says(const char *answer) {
  U.answer = answer;
  U.answer_len = strlen(answer);
}

/* ---- the cases -------------------------------------------------------------
 */

static const char JSON_OK[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json"
    "\r\nContent-Length: 22\r\n\r\n"
    "{\"b\":1.10,\"a\":\"PONG\"}\n";

static void test_chat_splice_and_record(void) {
  const char *body =
      "{\"messages\":[], \"model\" : \"m\",\"n\":12345678901234567891}";
  const char *resp;
  int r0 = U.requests, n0 = H.nrecords;
  upstream_says(JSON_OK);
  resp = post("/v1/chat/completions", "", body);
  CPX_CHECK_INT(status_of(resp), 200);
  CPX_CHECK_STR(body_of(resp), "{\"b\":1.10,\"a\":\"PONG\"}\n");
  CPX_CHECK_INT(U.requests, r0 + 1);
  /* the head as prebuilt, the body with only the model's value replaced */
  CPX_CHECK(strncmp(U.last, "POST /c HTTP/1.1\r\nHost: up\r\nX-Acc: json\r\n",
                    41) == 0);
  CPX_CHECK(strstr(U.last, "\r\n\r\n{\"messages\":[], \"model\" : \"up\","
                           "\"n\":12345678901234567891}") != NULL);
  /* "m" became "up": one byte more than the client's 55 */
  CPX_CHECK(strstr(U.last, "Content-Length: 56\r\n") != NULL);
  CPX_CHECK_INT(H.nrecords, n0 + 1);
  CPX_CHECK_INT(H.records->status, 200);
  CPX_CHECK_INT(H.records->fmt, CPX_FMT_OPENAI_CHAT);
  CPX_CHECK_STR(H.records->endpoint, "/v1/chat/completions");
  CPX_CHECK_INT(H.records->head_len, 22);
  CPX_CHECK_INT(H.refs, 0);
}

static void test_not_taken(void) {
  int r0 = U.requests;
  /* unknown model, escaped model, a query, a GET, a malformed body */
  CPX_CHECK_INT(
      status_of(post("/v1/chat/completions", "", "{\"model\":\"x\"}")), 598);
  CPX_CHECK_INT(
      status_of(post("/v1/chat/completions", "", "{\"model\":\"\\u006d\"}")),
      598);
  CPX_CHECK_INT(
      status_of(post("/v1/chat/completions?a=1", "", "{\"model\":\"m\"}")),
      598);
  CPX_CHECK_INT(
      status_of(post("/v1/chat/completions", "", "{\"model\":\"m\",")), 598);
  CPX_CHECK_INT(U.requests, r0);
  CPX_CHECK_INT(H.refs, 0);
}

static void test_rules_and_slots(void) {
  const char *ok = "{\"model\":\"m\",\"max_tokens\":5}";
  int r0 = U.requests;
  upstream_says(JSON_OK);
  /* require max_tokens; unless betas; x-lua-please is Lua's */
  CPX_CHECK_INT(status_of(post("/v1/messages", "", "{\"model\":\"m\"}")), 598);
  CPX_CHECK_INT(status_of(post("/v1/messages", "",
                               "{\"model\":\"m\",\"max_tokens\":5,"
                               "\"betas\":null}")),
                598);
  CPX_CHECK_INT(status_of(post("/v1/messages", "x-lua-please: 1\r\n", ok)),
                598);
  CPX_CHECK_INT(U.requests, r0);
  /* the slots: the client's values, else the account's line */
  CPX_CHECK_INT(status_of(post("/v1/messages",
                               "anthropic-version: v9\r\n"
                               "anthropic-beta: b1,b2\r\n",
                               ok)),
                200);
  CPX_CHECK(strstr(U.last, "\r\nAnthropic-Version: v9\r\n") != NULL);
  CPX_CHECK(strstr(U.last, "\r\nAnthropic-Beta: b1,b2\r\n") != NULL);
  CPX_CHECK(strstr(U.last, "\"model\":\"claude-up\"") != NULL);
  CPX_CHECK_INT(status_of(post("/v1/messages", "", ok)), 200);
  CPX_CHECK(strstr(U.last, "\r\nAnthropic-Version: dflt\r\n") != NULL);
  CPX_CHECK(strstr(U.last, "Anthropic-Beta") == NULL);
  CPX_CHECK_INT(H.refs, 0);
  /* a value Lua would send otherwise is Lua's: a list with a space, a
   * repeat or an empty item, or a slot header sent twice (Lua joins them) */
  r0 = U.requests;
  CPX_CHECK_INT(
      status_of(post("/v1/messages", "anthropic-beta: b1, b2\r\n", ok)), 598);
  CPX_CHECK_INT(
      status_of(post("/v1/messages", "anthropic-beta: b1,b2,b1\r\n", ok)), 598);
  CPX_CHECK_INT(
      status_of(post("/v1/messages", "anthropic-beta: b1,,b2\r\n", ok)), 598);
  CPX_CHECK_INT(status_of(post("/v1/messages",
                               "anthropic-beta: b1\r\n"
                               "anthropic-beta: b2\r\n",
                               ok)),
                598);
  CPX_CHECK_INT(status_of(post("/v1/messages",
                               "anthropic-version: v1\r\n"
                               "anthropic-version: v2\r\n",
                               ok)),
                598);
  CPX_CHECK_INT(U.requests, r0);
  CPX_CHECK_INT(H.refs, 0);
}

static void test_list_plain(void) {
  static const struct {
    const char *v;
    int want;
  } cases[] = {
      {"a", 1},    {"a,b,c", 1}, {"a,b,a", 0},   {"a, b", 0}, {"a,\tb", 0},
      {",a", 0},   {"a,", 0},    {"a,,b", 0},    {"", 0},     {"ab,a", 1},
      {"a,ab", 1}, {"a\rb", 0},  {"x=1;y,z", 1},
  };
  char many[4096];
  size_t n = 0;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    CPX_CHECK_INT(cpx_lane_list_plain(cases[i].v, strlen(cases[i].v)),
                  cases[i].want);
  /* at most CPX_LANE_LIST_MAX items; a longer list is Lua's */
  for (int i = 0; i < CPX_LANE_LIST_MAX; i++)
    n += (size_t)snprintf(many + n, sizeof(many) - n, "%sb%d", i ? "," : "", i);
  CPX_CHECK_INT(cpx_lane_list_plain(many, n), 1);
  n += (size_t)snprintf(many + n, sizeof(many) - n, ",b-last");
  CPX_CHECK_INT(cpx_lane_list_plain(many, n), 0);
}

static void test_gemini_path(void) {
  const char *body = "{\"contents\":[{\"parts\":[{\"text\":\"hi\"}]}]}";
  int r0 = U.requests;
  upstream_says(JSON_OK);
  CPX_CHECK_INT(status_of(post("/v1beta/models/m:generateContent", "", body)),
                200);
  CPX_CHECK(strncmp(U.last, "POST /g/up:generateContent HTTP/1.1\r\n", 37) ==
            0);
  CPX_CHECK(strcmp(body_of(U.last), body) == 0);
  /* another action or query, another model: not the relay's */
  CPX_CHECK_INT(status_of(post("/v1beta/models/m:countTokens", "", body)), 598);
  CPX_CHECK_INT(
      status_of(post("/v1beta/models/m:streamGenerateContent", "", body)), 598);
  CPX_CHECK_INT(
      status_of(post("/v1beta/models/other:generateContent", "", body)), 598);
  CPX_CHECK_INT(U.requests, r0 + 1);
}

static void test_handoff_status(void) {
  int h0 = H.handoffs;
  upstream_says(
      "HTTP/1.1 429 Too Many\r\nContent-Length: 9\r\n\r\n{\"e\":429}");
  CPX_CHECK_INT(
      status_of(post("/v1/chat/completions", "", "{\"model\":\"m\"}")), 299);
  CPX_CHECK_INT(H.handoffs, h0 + 1);
  CPX_CHECK_INT(H.last_status, 429);
  CPX_CHECK_INT(H.last_first_event, 0);
  CPX_CHECK_STR(H.last_data, "{\"e\":429}");
  CPX_CHECK_INT(H.refs, 0);
}

#define SSE_HEAD                                                               \
  "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"                     \
  "Connection: close\r\n\r\n"

static void test_stream_first_event(void) {
  static const char err_stream[] =
      SSE_HEAD "event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
               "event: ping\ndata: {}\n\n"
               "event: error\ndata: {\"type\":\"error\",\"error\":{}}\n\n";
  static const char ok_events[] =
      "event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
      "event: content_block_delta\ndata: {\"d\":\"error\"}\n\n"
      "event: message_stop\ndata: {}\n\n";
  static char ok_stream[1024];
  const char *body = "{\"model\":\"m\",\"max_tokens\":5,\"stream\":true}";
  const char *resp, *b;
  int h0 = H.handoffs;

  /* an error after the handshake events: handed off, nothing relayed */
  upstream_says(err_stream);
  resp = post("/v1/messages", "", body);
  CPX_CHECK_INT(status_of(resp), 299);
  CPX_CHECK_INT(H.handoffs, h0 + 1);
  CPX_CHECK_INT(H.last_first_event, 1);
  CPX_CHECK_STR(H.last_data, "{\"type\":\"error\",\"error\":{}}");
  CPX_CHECK(strstr(U.last, "Accept: sse") != NULL);

  /* a real first event: relayed as it came (chunked to the client) */
  snprintf(ok_stream, sizeof(ok_stream), "%s%s", SSE_HEAD, ok_events);
  upstream_says(ok_stream);
  resp = post("/v1/messages", "", body);
  CPX_CHECK_INT(status_of(resp), 200);
  CPX_CHECK_INT(H.handoffs, h0 + 1);
  CPX_CHECK(strstr(resp, "text/event-stream") != NULL);
  b = body_of(resp);
  CPX_CHECK(strstr(b, "event: message_start\ndata: {\"type\":\"message_start\"}"
                      "\n\n") != NULL);
  CPX_CHECK(strstr(b, "event: message_stop\ndata: {}\n\n") != NULL);
  CPX_CHECK_INT(H.records->stream, 1);
  CPX_CHECK_INT(H.records->fmt, CPX_FMT_CLAUDE);
  CPX_CHECK_INT(H.refs, 0);
}

static void close_any(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

static void teardown(void) {
  cpx_lane_free(lane);
  while (H.records) {
    cpx_lane_record_t *n = H.records->next;
    cpx_lane_record_free(H.records);
    H.records = n;
  }
  cpx_h1_pool_close(&h1);
  cpx_server_close(&srv);
  uv_close((uv_handle_t *)&U.listener, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  uv_walk(loop, close_any, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
}

int main(void) {
  setup();
  CPX_TEST_RUN(test_chat_splice_and_record);
  CPX_TEST_RUN(test_not_taken);
  CPX_TEST_RUN(test_rules_and_slots);
  CPX_TEST_RUN(test_list_plain);
  CPX_TEST_RUN(test_gemini_path);
  CPX_TEST_RUN(test_handoff_status);
  CPX_TEST_RUN(test_stream_first_event);
  teardown();
  CPX_TEST_DONE();
}
