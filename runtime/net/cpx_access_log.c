/* cpx_access_log.c: the access log (see cpx_access_log.h). */
#include "cpx_access_log.h"

#include <stdlib.h>
#include <string.h>

#include "cpx_log.h"
#include "cpx_server.h"

/* One request's line. Owned by its server's cpx_access_log_t from the
 * claim until the line is written. */
struct cpx_access_line_s {
  cpx_access_line_t *hnext;       /* bucket chain */
  cpx_access_line_t *prev, *next; /* parked list */
  struct cpx_request_s *r;        /* while the response runs, else NULL */
  int recorded;                   /* its record named it */
  int passes;                     /* fallback passes while parked */
  char rid[sizeof(((cpx_request_t *)0)->rid)];
  /* the line, filled when the response ended */
  int status;
  int aborted;
  double ms;
  size_t in;
  unsigned long long out;
  const char *method; /* static (llhttp's names) */
  const char *tag;    /* static */
  char remote[sizeof(((cpx_request_t *)0)->remote)];
  char target[512];
};

/* The one writer of a request's line. */
static void access_write(const cpx_access_line_t *a) {
  cpx_log_info(a->rid, "%d | %.3fms | %s | %s %s | in=%zu out=%llu%s%s%s",
               a->status, a->ms, a->remote, a->method, a->target, a->in, a->out,
               a->tag ? " | " : "", a->tag ? a->tag : "",
               a->aborted ? " | client closed" : "");
}

void cpx_access_log_reject(int status, const char *remote, const char *note) {
  cpx_log_info(NULL, "%d | %s | %s", status, remote, note);
}

/* What the server knows of r once its response ended. */
static void access_fill(cpx_access_line_t *a, const cpx_request_t *r) {
  memcpy(a->rid, r->rid, sizeof(a->rid));
  a->status = r->status ? r->status : 499;
  a->aborted = r->aborted;
  a->ms = (double)(uv_hrtime() - r->start_ns) / 1e6;
  a->in = r->http.body_len;
  a->out = (unsigned long long)r->bytes_out;
  a->method = r->http.method ? r->http.method : "-";
  a->tag = r->tag;
  memcpy(a->remote, r->remote, sizeof(a->remote));
  cpx_log_redact_query(r->http.buf + r->http.url_off, r->http.url_len,
                       a->target, sizeof(a->target));
}

/* Request ids are random hex digits: a plain string hash spreads them. */
static size_t bucket_of(const char *rid, size_t n) {
  size_t h = 0;
  for (size_t i = 0; i < n; i++)
    h = h * 31 + (unsigned char)rid[i];
  return h % CPX_ACCESS_LOG_BUCKETS;
}

static void unpark(cpx_access_log_t *al, cpx_access_line_t *a) {
  if (a->prev)
    a->prev->next = a->next;
  else
    al->head = a->next;
  if (a->next)
    a->next->prev = a->prev;
  else
    al->tail = a->prev;
  a->prev = a->next = NULL;
  al->nparked--;
}

/* Writes a's line and frees it; a is in the table (and maybe parked). */
static void finish(cpx_access_log_t *al, cpx_access_line_t *a, int parked) {
  cpx_access_line_t **pp = &al->buckets[bucket_of(a->rid, strlen(a->rid))];
  /* Ids are random, not unique: unlink this entry, not a namesake. */
  while (*pp && *pp != a)
    pp = &(*pp)->hnext;
  if (*pp)
    *pp = a->hnext;
  if (parked)
    unpark(al, a);
  access_write(a);
  free(a);
}

/* The fallback: a parked line gets two passes of the idle handle, so
 * whatever delivers its record after the loop iteration that ended the
 * response (the lane's record idle) runs first. */
static void on_idle(uv_idle_t *h) {
  cpx_access_log_t *al = h->data;
  cpx_access_line_t *a = al->head;
  while (a) {
    cpx_access_line_t *next = a->next;
    if (++a->passes >= 2) {
      /* debug: a record that should have come and did not */
      cpx_log_debug(a->rid, "access line written without its record");
      finish(al, a, 1);
    }
    a = next;
  }
  if (!al->head)
    uv_idle_stop(h);
}

void cpx_access_log_init(cpx_access_log_t *al, uv_loop_t *loop) {
  memset(al, 0, sizeof(*al));
  uv_idle_init(loop, &al->idle);
  al->idle.data = al;
  al->open = 1;
}

static void noop_close(uv_handle_t *h) {
  (void)h;
}

void cpx_access_log_close(cpx_access_log_t *al) {
  if (al->closed)
    return;
  al->closed = 1;
  while (al->head)
    finish(al, al->head, 1);
  /* Claims of requests still running: their lines are written when they
   * end (cpx_access_log_done finds no entry). */
  for (size_t i = 0; i < CPX_ACCESS_LOG_BUCKETS; i++) {
    while (al->buckets[i]) {
      cpx_access_line_t *a = al->buckets[i];
      al->buckets[i] = a->hnext;
      if (a->r)
        a->r->access = NULL;
      free(a);
    }
  }
  if (al->open && !uv_is_closing((uv_handle_t *)&al->idle))
    uv_close((uv_handle_t *)&al->idle, noop_close);
}

void cpx_access_log_claim(cpx_request_t *r) {
  cpx_access_log_t *al = &r->srv->access;
  cpx_access_line_t *a, **pp;
  size_t n;

  if (r->access || r->finished || al->closed || !al->open)
    return;
  a = calloc(1, sizeof(*a));
  if (!a)
    return;
  memcpy(a->rid, r->rid, sizeof(a->rid));
  a->r = r;
  n = strlen(a->rid);
  pp = &al->buckets[bucket_of(a->rid, n)];
  a->hnext = *pp;
  *pp = a;
  r->access = a;
}

void cpx_access_log_done(cpx_request_t *r) {
  cpx_access_log_t *al = &r->srv->access;
  cpx_access_line_t *a = r->access;

  if (!a) {
    cpx_access_line_t line;
    access_fill(&line, r);
    access_write(&line);
    return;
  }
  r->access = NULL;
  a->r = NULL;
  access_fill(a, r);
  if (a->recorded || al->closed || al->nparked >= CPX_ACCESS_LOG_PARKED_MAX) {
    finish(al, a, 0);
    return;
  }
  a->prev = al->tail;
  if (al->tail)
    al->tail->next = a;
  else
    al->head = a;
  al->tail = a;
  if (al->nparked++ == 0)
    uv_idle_start(&al->idle, on_idle);
}

int cpx_access_log_record(cpx_server_t *srv, const char *rid, size_t n) {
  cpx_access_log_t *al = &srv->access;
  cpx_access_line_t *a;

  if (!al->open || n >= sizeof(a->rid))
    return 0;
  /* The first entry of that id still waiting for a record (ids are
   * random: two requests of one worker rarely share one). */
  for (a = al->buckets[bucket_of(rid, n)]; a; a = a->hnext) {
    if (!a->recorded && strlen(a->rid) == n && memcmp(a->rid, rid, n) == 0)
      break;
  }
  if (!a)
    return 0;
  if (a->r) {
    a->recorded = 1; /* written when its response ends */
    return 1;
  }
  finish(al, a, 1);
  return 1;
}
