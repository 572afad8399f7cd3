/* cpx_otlp.c: OpenTelemetry traces over OTLP/HTTP (JSON encoding).
 *
 * rt.otel turns each request record into one span (JSON text) and hands it
 * (through cpx.otlp.push, runtime/lua/cpx_otlp_lua.c) to cpx_otlp_push, which
 * only copies it onto a bounded queue (full: dropped and counted). One sender
 * thread posts the queue in batches (every second, or at BATCH_MAX spans) to
 * the configured endpoint with a blocking libcurl easy handle: the event loops
 * never wait for the collector. A failed post drops its batch (counted); traces
 * are best effort. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "cpx.h"
#include "cpx_buf.h"
#include "cpx_log.h"
#include "cpx_otlp.h"

#define QUEUE_MAX 8192
#define BATCH_MAX 512
#define SPAN_MAX (16 * 1024)

static pthread_mutex_t omu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t owake = PTHREAD_COND_INITIALIZER;
static struct {
  pthread_t thread;
  int running, stop;
  char endpoint[1024];
  char service[128];
  char *q[QUEUE_MAX]; /* owned span texts, oldest at head */
  size_t head, len;
  uint64_t sent, dropped, failed;
} O;

static size_t discard(char *p, size_t size, size_t n, void *ud) {
  CPX_UNUSED(p);
  CPX_UNUSED(ud);
  return size * n;
}

/* Posts spans[0..n) as one ExportTraceServiceRequest; 0 or CPX_EIO. */
static int post(CURL *c, const char *endpoint, const char *service,
                char **spans, size_t n) {
  char *b = NULL;
  size_t len = 0, cap = 0;
  char head[512];
  long status = 0;
  int rc = 0, k;
  struct curl_slist *h = NULL;

  k = snprintf(head, sizeof(head),
               "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":"
               "\"service.name\",\"value\":{\"stringValue\":\"%s\"}}]},"
               "\"scopeSpans\":[{\"scope\":{\"name\":\"cliproxy\"},"
               "\"spans\":[",
               service);
  cpx_buf_append(&b, &len, &cap, head, (size_t)k);
  for (size_t i = 0; i < n; i++) {
    if (i)
      cpx_buf_append(&b, &len, &cap, ",", 1);
    cpx_buf_append(&b, &len, &cap, spans[i], strlen(spans[i]));
  }
  if (cpx_buf_append(&b, &len, &cap, "]}]}]}", 6) != 0) {
    free(b);
    return CPX_ENOMEM;
  }
  h = curl_slist_append(h, "Content-Type: application/json");
  curl_easy_reset(c);
  curl_easy_setopt(c, CURLOPT_URL, endpoint);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, b);
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
  if (curl_easy_perform(c) != CURLE_OK)
    rc = CPX_EIO;
  else if (curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK ||
           status < 200 || status >= 300)
    rc = CPX_EIO;
  curl_slist_free_all(h);
  free(b);
  return rc;
}

static void *sender_main(void *arg) {
  char *batch[BATCH_MAX];
  CURL *c = curl_easy_init();
  CPX_UNUSED(arg);

  pthread_mutex_lock(&omu);
  for (;;) {
    size_t n = 0;
    char endpoint[1024], service[128];
    int rc;
    if (O.len < BATCH_MAX && !O.stop) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_sec += 1;
      pthread_cond_timedwait(&owake, &omu, &ts);
    }
    if (O.len == 0) {
      if (O.stop)
        break;
      continue;
    }
    while (n < BATCH_MAX && O.len > 0) {
      batch[n++] = O.q[O.head];
      O.q[O.head] = NULL;
      O.head = (O.head + 1) % QUEUE_MAX;
      O.len--;
    }
    memcpy(endpoint, O.endpoint, sizeof(endpoint));
    memcpy(service, O.service, sizeof(service));
    pthread_mutex_unlock(&omu);
    rc = c ? post(c, endpoint, service, batch, n) : CPX_ENOMEM;
    for (size_t i = 0; i < n; i++)
      free(batch[i]);
    pthread_mutex_lock(&omu);
    if (rc == 0) {
      O.sent += n;
    } else {
      if (O.failed == 0)
        cpx_log_warn(NULL, "otel: posting %zu spans to %s failed", n, endpoint);
      O.failed += n;
    }
  }
  pthread_mutex_unlock(&omu);
  if (c)
    curl_easy_cleanup(c);
  return NULL;
}

int cpx_otlp_open(const char *ep, const char *svc) {
  pthread_mutex_lock(&omu);
  snprintf(O.endpoint, sizeof(O.endpoint), "%s", ep);
  snprintf(O.service, sizeof(O.service), "%s", svc ? svc : "cliproxy");
  for (char *p = O.service; *p; p++)
    if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
      *p = '_'; /* it is written into JSON as is */
  if (!O.running) {
    O.stop = 0;
    if (pthread_create(&O.thread, NULL, sender_main, NULL) != 0) {
      pthread_mutex_unlock(&omu);
      return CPX_ESTATE;
    }
    O.running = 1;
  }
  pthread_mutex_unlock(&omu);
  return 0;
}

int cpx_otlp_push(const char *s, size_t n) {
  char *copy;
  int ok = 0;
  if (n > SPAN_MAX)
    return 0;
  copy = malloc(n + 1);
  if (!copy)
    return CPX_ENOMEM;
  memcpy(copy, s, n);
  copy[n] = '\0';
  pthread_mutex_lock(&omu);
  if (O.running && !O.stop && O.len < QUEUE_MAX) {
    O.q[(O.head + O.len) % QUEUE_MAX] = copy;
    O.len++;
    ok = 1;
    if (O.len >= BATCH_MAX)
      pthread_cond_signal(&owake);
  } else if (O.running) {
    O.dropped++;
  }
  pthread_mutex_unlock(&omu);
  if (!ok)
    free(copy);
  return ok;
}

void cpx_otlp_stats(cpx_otlp_stats_t *out) {
  pthread_mutex_lock(&omu);
  out->sent = O.sent;
  out->dropped = O.dropped;
  out->failed = O.failed;
  out->queued = O.len;
  pthread_mutex_unlock(&omu);
}

/* Sends what is queued and stops the sender (exit). */
void cpx_otlp_close(void) {
  pthread_mutex_lock(&omu);
  if (!O.running) {
    pthread_mutex_unlock(&omu);
    return;
  }
  O.stop = 1;
  pthread_cond_signal(&owake);
  pthread_mutex_unlock(&omu);
  pthread_join(O.thread, NULL);
  pthread_mutex_lock(&omu);
  O.running = 0;
  pthread_mutex_unlock(&omu);
}
