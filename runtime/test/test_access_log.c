/* test_access_log.c: the access log's table (cpx_access_log.c) on a real loop
 * and server, with requests built by hand: a line is written once its record
 * named it and its response ended, in either order; an unclaimed request
 * at its end; a claimed one whose record never comes after two idle
 * passes; namesake ids each once; the server's close writes what waits.
 * The lines are read back from main.log (logging-to-file). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "cpx.h"
#include "cpx_log.h"
#include "cpx_server.h"
#include "cpx_test.h"

static char dir[64];
static uv_loop_t loop;
static cpx_server_t srv;

/* Lines of main.log that contain needle. */
static int count(const char *needle) {
  char path[128], line[4096];
  FILE *f;
  int n = 0;
  cpx_log_flush();
  snprintf(path, sizeof(path), "%s/main.log", dir);
  f = fopen(path, "r");
  if (!f)
    return -1;
  while (fgets(line, sizeof(line), f))
    if (strstr(line, needle))
      n++;
  fclose(f);
  return n;
}

/* A request as dispatch() makes one, answered with status. */
static cpx_request_t *req(const char *rid, const char *target, int status) {
  cpx_request_t *r = calloc(1, sizeof(*r));
  r->srv = &srv;
  r->refs = 1;
  r->start_ns = uv_hrtime();
  snprintf(r->rid, sizeof(r->rid), "%s", rid);
  snprintf(r->remote, sizeof(r->remote), "127.0.0.1:4242");
  r->http.buf = strdup(target);
  r->http.url_off = 0;
  r->http.url_len = strlen(target);
  r->http.method = "POST";
  r->http.body_len = 17;
  r->status = status;
  r->bytes_out = 99;
  return r;
}

static void end(cpx_request_t *r) {
  r->finished = 1;
  cpx_access_log_done(r);
  free(r->http.buf);
  free(r); /* the line no longer points into the request */
}

static void pass(void) {
  uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_unclaimed(void) {
  cpx_request_t *r = req("aaaa0001", "/plain?key=secret&x=1", 404);
  end(r);
  CPX_CHECK_INT(count("[aaaa0001] [info] 404 | "), 1);
  CPX_CHECK_INT(count("| POST /plain?key=***&x=1 | in=17 out=99"), 1);
  CPX_CHECK_INT(count("secret"), 0);
}

static void test_record_after_end(void) {
  cpx_request_t *r = req("aaaa0002", "/after", 200);
  cpx_access_log_claim(r);
  end(r);
  CPX_CHECK_INT(count("[aaaa0002]"), 0); /* parked */
  CPX_CHECK_INT(cpx_access_log_record(&srv, "aaaa0002", 8), 1);
  CPX_CHECK_INT(count("[aaaa0002] [info] 200 | "), 1);
  CPX_CHECK_INT(cpx_access_log_record(&srv, "aaaa0002", 8), 0); /* written */
  pass();
  pass();
  CPX_CHECK_INT(count("[aaaa0002]"), 1);
}

static void test_record_before_end(void) {
  cpx_request_t *r = req("aaaa0003", "/before", 200);
  cpx_access_log_claim(r);
  r->tag = "fast";
  r->aborted = 1;
  CPX_CHECK_INT(cpx_access_log_record(&srv, "aaaa0003", 8), 1);
  CPX_CHECK_INT(count("[aaaa0003]"), 0); /* the response still runs */
  end(r);
  CPX_CHECK_INT(count("[aaaa0003] [info] 200 | "), 1);
  CPX_CHECK_INT(count("| POST /before | in=17 out=99 | fast | client closed"),
                1);
}

static void test_no_record(void) {
  cpx_request_t *r = req("aaaa0004", "/never", 0);
  cpx_access_log_claim(r);
  end(r);
  pass();
  CPX_CHECK_INT(count("[aaaa0004]"), 0); /* one pass: its record may come */
  pass();
  CPX_CHECK_INT(count("[aaaa0004] [info] 499 | "), 1); /* no status: 499 */
  CPX_CHECK_INT(count("[aaaa0004] [debug] access line written without"), 1);
  CPX_CHECK_INT(cpx_access_log_record(&srv, "aaaa0004", 8), 0);
  CPX_CHECK_INT(count("[aaaa0004] [info]"), 1);
  CPX_CHECK_INT(srv.access.nparked, 0);
}

static void test_namesakes(void) {
  cpx_request_t *a = req("aaaa0005", "/one", 200);
  cpx_request_t *b = req("aaaa0005", "/two", 201);
  cpx_access_log_claim(a);
  cpx_access_log_claim(b);
  end(a);
  end(b);
  CPX_CHECK_INT(cpx_access_log_record(&srv, "aaaa0005", 8), 1);
  CPX_CHECK_INT(cpx_access_log_record(&srv, "aaaa0005", 8), 1);
  CPX_CHECK_INT(cpx_access_log_record(&srv, "aaaa0005", 8), 0);
  CPX_CHECK_INT(count("| POST /one | "), 1);
  CPX_CHECK_INT(count("| POST /two | "), 1);
  CPX_CHECK_INT(cpx_access_log_record(&srv, "aaaa000", 7), 0); /* a prefix */
}

static void test_parked_bound(void) {
  char rid[16];
  for (int i = 0; i < CPX_ACCESS_LOG_PARKED_MAX + 1; i++) {
    cpx_request_t *r;
    snprintf(rid, sizeof(rid), "b%07x", i);
    r = req(rid, "/bound", 200);
    cpx_access_log_claim(r);
    end(r);
  }
  CPX_CHECK_INT(srv.access.nparked, CPX_ACCESS_LOG_PARKED_MAX);
  CPX_CHECK_INT(count("| POST /bound | "), 1); /* the one over the bound */
  pass();
  pass();
  CPX_CHECK_INT(count("| POST /bound | "), CPX_ACCESS_LOG_PARKED_MAX + 1);
  CPX_CHECK_INT(srv.access.nparked, 0);
}

static void test_close(void) {
  cpx_request_t *parked = req("aaaa0006", "/parked", 200);
  cpx_request_t *live = req("aaaa0007", "/live", 200);
  cpx_access_log_claim(parked);
  cpx_access_log_claim(live);
  end(parked);
  cpx_server_close(&srv); /* writes what waits, forgets the claims */
  CPX_CHECK_INT(count("| POST /parked | "), 1);
  CPX_CHECK_INT(count("| POST /live | "), 0);
  end(live); /* ends after the close: written at once */
  CPX_CHECK_INT(count("| POST /live | "), 1);
  CPX_CHECK_INT(cpx_access_log_record(&srv, "aaaa0007", 8), 0);
}

int main(void) {
  cpx_server_config_t cfg;
  char cmd[128];

  snprintf(dir, sizeof(dir), "/tmp/cpx-test-access-XXXXXX");
  if (!mkdtemp(dir))
    return 1;
  cpx_log_set_level(CPX_LOG_DEBUG);
  if (cpx_log_to_file(dir, 0) != 0)
    return 1;
  uv_loop_init(&loop);
  cpx_server_config_defaults(&cfg);
  cpx_server_init(&srv, &loop, &cfg, NULL);

  CPX_TEST_RUN(test_unclaimed);
  CPX_TEST_RUN(test_record_after_end);
  CPX_TEST_RUN(test_record_before_end);
  CPX_TEST_RUN(test_no_record);
  CPX_TEST_RUN(test_namesakes);
  CPX_TEST_RUN(test_parked_bound);
  CPX_TEST_RUN(test_close);

  uv_run(&loop, UV_RUN_NOWAIT); /* the close callbacks */
  CPX_CHECK_INT(uv_loop_close(&loop), 0);
  cpx_log_to_file(NULL, 0);
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  if (system(cmd) != 0)
    return 1;
  CPX_TEST_DONE();
}
