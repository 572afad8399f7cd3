/* test_metrics.c: /metrics and the OTLP queue through their plain C APIs
 * (cpx_metrics.c, cpx_otlp.c), no Lua involved. */
#include <stdlib.h>
#include <string.h>

#include "cpx.h"
#include "cpx_metrics.h"
#include "cpx_otlp.h"
#include "cpx_test.h"

static void observe_and_render(void) {
  cpx_metrics_rec_t r;
  size_t n = 0;
  char *text;

  cpx_metrics_reset();
  memset(&r, 0, sizeof(r));
  r.endpoint = "/v1/chat/completions";
  r.status = "200";
  r.provider = "openai";
  r.model = "gpt-\"x\"";
  r.path = "lua";
  r.latency_ms = 1500;
  r.has_latency = 1;
  r.tokens[0] = 12; /* input */
  r.tokens[1] = 3;  /* output */
  cpx_metrics_observe(&r);
  cpx_metrics_observe(&r);
  text = cpx_metrics_render(7, &n);
  CPX_CHECK(text != NULL);
  if (!text)
    return;
  CPX_CHECK_INT(strlen(text), n);
  CPX_CHECK(strstr(text, "cliproxy_requests_total{endpoint=\"/v1/chat/"
                         "completions\",status=\"200\",provider=\"openai\","
                         "model=\"gpt-\\\"x\\\"\",path=\"lua\"} 2\n") != NULL);
  CPX_CHECK(strstr(text, "cliproxy_tokens_total{kind=\"input\",provider="
                         "\"openai\",model=\"gpt-\\\"x\\\"\"} 24\n") != NULL);
  /* 1.5 s falls in the 2.5 bucket, not in 1 */
  CPX_CHECK(strstr(text, "cliproxy_request_duration_seconds_bucket{provider="
                         "\"openai\",le=\"1\"} 0\n") != NULL);
  CPX_CHECK(strstr(text, "cliproxy_request_duration_seconds_bucket{provider="
                         "\"openai\",le=\"2.5\"} 2\n") != NULL);
  CPX_CHECK(strstr(text, "cliproxy_lane_records_dropped_total 7\n") != NULL);
  CPX_CHECK(strstr(text, "cliproxy_time_to_first_token_seconds_count") ==
            NULL); /* no ttft observed: no series */
  free(text);
  cpx_metrics_reset();
  text = cpx_metrics_render(0, &n);
  CPX_CHECK(text && strstr(text, "cliproxy_requests_total{") == NULL);
  free(text);
}

static void otlp_not_open(void) {
  cpx_otlp_stats_t st;
  /* never opened here: nothing is queued, nothing counted as dropped */
  CPX_CHECK_INT(cpx_otlp_push("{}", 2), 0);
  cpx_otlp_stats(&st);
  CPX_CHECK_INT(st.queued, 0);
  CPX_CHECK_INT(st.dropped, 0);
  cpx_otlp_close(); /* a no-op when not running */
}

int main(void) {
  CPX_TEST_RUN(observe_and_render);
  CPX_TEST_RUN(otlp_not_open);
  CPX_TEST_DONE();
}
