/* stream-lat.c: the streaming latency harness of bench/stream.mjs in C.
 *
 * Node's event loop on both ends added jitter of the order of what is
 * measured (at p99 nginx itself appeared to add 150 us per frame). Here
 * the upstream and the client are plain blocking threads on the same
 * CLOCK_MONOTONIC:
 *
 *   stream-lat upstream FRAMES INTERVAL_US
 *       listens on 127.0.0.1 (prints the port), answers every POST with an
 *       OpenAI chat stream of FRAMES content deltas INTERVAL_US apart; each
 *       delta's text is "t<ns>;", the clock read just before its write.
 *   stream-lat client REQS FRAMES name=port:path:bodyfile[:header] ...
 *       REQS rounds; each round one request per route, in order, on one
 *       keep-alive connection per route; prints one JSON line per request:
 *       {"route":..,"ttft":us,"frames":[us,...]} where ttft is request
 *       written -> first delta read, and frames[i] is delta i's arrival
 *       minus its timestamp.
 *
 * Responses are parsed with llhttp (chunked or not); a delta's token may
 * be split across reads or chunks.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <llhttp.h>

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* ---- upstream -------------------------------------------------------------- */

static int frames_n;
static long interval_us;

/* Reads one request (head + Content-Length body); 0 or -1 at EOF. */
static int read_request(int fd, char *buf, size_t cap, size_t *have) {
  for (;;) {
    char *e = memmem(buf, *have, "\r\n\r\n", 4);
    if (e) {
      size_t head = (size_t)(e - buf) + 4, body = 0;
      char *cl = memmem(buf, head, "Content-Length:", 15);
      if (!cl)
        cl = memmem(buf, head, "content-length:", 15);
      if (cl)
        body = strtoul(cl + 15, NULL, 10);
      if (*have >= head + body) {
        memmove(buf, buf + head + body, *have - head - body);
        *have -= head + body;
        return 0;
      }
    }
    if (*have == cap)
      return -1;
    ssize_t r = read(fd, buf + *have, cap - *have);
    if (r <= 0)
      return -1;
    *have += (size_t)r;
  }
}

static void send_chunk(int fd, const char *data, size_t n) {
  char out[1024];
  int h = snprintf(out, sizeof(out), "%zx\r\n", n);
  memcpy(out + h, data, n);
  memcpy(out + h + n, "\r\n", 2);
  write_all(fd, out, (size_t)h + n + 2);
}

static void *serve(void *arg) {
  enum { CAP = 1 << 20 };
  int fd = (int)(intptr_t)arg, one = 1;
  char *buf = malloc(CAP);
  size_t have = 0;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  while (buf && read_request(fd, buf, CAP, &have) == 0) {
    static const char head[] =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    char f[512];
    int n;
    write_all(fd, head, sizeof(head) - 1);
    for (int i = 0; i < frames_n; i++) {
      struct timespec d = {0, interval_us * 1000};
      if (i > 0)
        nanosleep(&d, NULL);
      n = snprintf(f, sizeof(f),
                   "data: {\"id\":\"chatcmpl-stream-bench\",\"object\":\"chat."
                   "completion.chunk\",\"created\":1700000000,\"model\":\"up-"
                   "model\",\"choices\":[{\"index\":0,\"delta\":{%s\"content\":"
                   "\"t%llu;\"},\"finish_reason\":null}]}\n\n",
                   i == 0 ? "\"role\":\"assistant\"," : "",
                   (unsigned long long)now_ns());
      send_chunk(fd, f, (size_t)n);
    }
    n = snprintf(f, sizeof(f),
                 "data: {\"id\":\"chatcmpl-stream-bench\",\"object\":\"chat."
                 "completion.chunk\",\"created\":1700000000,\"model\":\"up-"
                 "model\",\"choices\":[{\"index\":0,\"delta\":{},"
                 "\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
    send_chunk(fd, f, (size_t)n);
    write_all(fd, "0\r\n\r\n", 5);
  }
  free(buf);
  close(fd);
  return NULL;
}

static int upstream(void) {
  struct sockaddr_in a = {0};
  socklen_t al = sizeof(a);
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 64) != 0)
    return 1;
  getsockname(ls, (struct sockaddr *)&a, &al);
  printf("%d\n", ntohs(a.sin_port));
  fflush(stdout);
  for (;;) {
    int fd = accept(ls, NULL, NULL);
    pthread_t t;
    if (fd < 0)
      continue;
    pthread_create(&t, NULL, serve, (void *)(intptr_t)fd);
    pthread_detach(t);
  }
}

/* ---- client ---------------------------------------------------------------- */

typedef struct {
  const char *name;
  int port;
  char path[256];
  char *body;
  size_t body_len;
  char header[256];
  int fd;
  /* per response */
  llhttp_t parser;
  int done;
  int status;
  uint64_t t0, ttft;
  uint64_t *lat;
  int nlat;
  char carry[32]; /* the unfinished tail of a token */
  size_t ncarry;
} route_t;

static int on_status_done(llhttp_t *p) {
  route_t *r = p->data;
  r->status = (int)llhttp_get_status_code(p);
  return 0;
}

/* Finds "t<digits>;" tokens; a token cut at the end is carried over. */
static int on_body(llhttp_t *p, const char *at, size_t n) {
  route_t *r = p->data;
  uint64_t arrived = now_ns();
  char tmp[64 * 1024 + 64];
  size_t len = 0, i = 0;
  if (r->ncarry + n > sizeof(tmp)) {
    /* long body piece: only its tail can hold a cut token */
    size_t skip = r->ncarry + n - sizeof(tmp);
    r->ncarry = 0;
    at += skip;
    n -= skip;
  }
  memcpy(tmp, r->carry, r->ncarry);
  memcpy(tmp + r->ncarry, at, n);
  len = r->ncarry + n;
  r->ncarry = 0;
  while (i < len) {
    if (tmp[i] == 't' && i + 1 < len && tmp[i + 1] >= '0' && tmp[i + 1] <= '9') {
      size_t j = i + 1;
      uint64_t v = 0;
      while (j < len && tmp[j] >= '0' && tmp[j] <= '9')
        v = v * 10 + (uint64_t)(tmp[j++] - '0');
      if (j == len) { /* cut: carry it */
        if (len - i <= sizeof(r->carry)) {
          memcpy(r->carry, tmp + i, len - i);
          r->ncarry = len - i;
        }
        break;
      }
      if (tmp[j] == ';' && r->nlat < frames_n) {
        if (r->nlat == 0)
          r->ttft = arrived - r->t0;
        r->lat[r->nlat++] = arrived > v ? arrived - v : 0;
      }
      i = j;
      continue;
    }
    if (tmp[i] == 't' && i + 1 == len) {
      r->carry[0] = 't';
      r->ncarry = 1;
    }
    i++;
  }
  return 0;
}

static int on_done(llhttp_t *p) {
  route_t *r = p->data;
  r->done = 1;
  return HPE_PAUSED;
}

static llhttp_settings_t settings;

static int connect_to(int port) {
  struct sockaddr_in a = {0};
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

static int one_request(route_t *r) {
  char head[1024], buf[64 * 1024];
  int hn;
  if (r->fd < 0 && (r->fd = connect_to(r->port)) < 0)
    return -1;
  hn = snprintf(head, sizeof(head),
                "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: "
                "application/json\r\nContent-Length: %zu\r\n%s%s\r\n",
                r->path, r->port, r->body_len, r->header,
                r->header[0] ? "\r\n" : "");
  llhttp_init(&r->parser, HTTP_RESPONSE, &settings);
  r->parser.data = r;
  r->done = r->status = r->nlat = 0;
  r->ncarry = 0;
  r->ttft = 0;
  r->t0 = now_ns();
  if (write_all(r->fd, head, (size_t)hn) || write_all(r->fd, r->body, r->body_len))
    return -1;
  while (!r->done) {
    ssize_t n = read(r->fd, buf, sizeof(buf));
    if (n <= 0)
      return -1;
    llhttp_errno_t e = llhttp_execute(&r->parser, buf, (size_t)n);
    if (e != HPE_OK && e != HPE_PAUSED)
      return -1;
  }
  return r->status == 200 && r->nlat == frames_n ? 0 : -2;
}

static int client(int reqs, int nroutes, char **specs) {
  route_t *rs = calloc((size_t)nroutes, sizeof(route_t));
  llhttp_settings_init(&settings);
  settings.on_headers_complete = on_status_done;
  settings.on_body = on_body;
  settings.on_message_complete = on_done;
  for (int i = 0; i < nroutes; i++) {
    route_t *r = &rs[i];
    /* name=port:path:bodyfile[:header]; the header may contain ':' */
    char *spec = specs[i], *eq = strchr(spec, '='), *save = NULL, *file, *hdr;
    FILE *f;
    if (!eq)
      return 2;
    *eq = 0;
    r->name = spec;
    r->port = atoi(strtok_r(eq + 1, ":", &save));
    snprintf(r->path, sizeof(r->path), "%s", strtok_r(NULL, ":", &save));
    file = strtok_r(NULL, ":", &save);
    hdr = strtok_r(NULL, "", &save);
    if (hdr)
      snprintf(r->header, sizeof(r->header), "%s", hdr);
    f = file ? fopen(file, "rb") : NULL;
    if (!f)
      return 2;
    r->body = malloc(1 << 20);
    r->body_len = fread(r->body, 1, 1 << 20, f);
    fclose(f);
    r->fd = -1;
    r->lat = calloc((size_t)frames_n, sizeof(uint64_t));
  }
  for (int k = 0; k < reqs; k++) {
    for (int i = 0; i < nroutes; i++) {
      route_t *r = &rs[i];
      int rc = one_request(r);
      if (rc != 0) {
        printf("{\"route\":\"%s\",\"error\":\"%s (status %d, %d frames)\"}\n",
               r->name, rc == -1 ? "i/o" : "incomplete", r->status, r->nlat);
        if (r->fd >= 0)
          close(r->fd);
        r->fd = -1;
        continue;
      }
      printf("{\"route\":\"%s\",\"ttft\":%.1f,\"frames\":[", r->name,
             (double)r->ttft / 1000.0);
      for (int j = 0; j < r->nlat; j++)
        printf("%s%.1f", j ? "," : "", (double)r->lat[j] / 1000.0);
      printf("]}\n");
      fflush(stdout);
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 4 && strcmp(argv[1], "upstream") == 0) {
    frames_n = atoi(argv[2]);
    interval_us = atol(argv[3]);
    return upstream();
  }
  if (argc >= 5 && strcmp(argv[1], "client") == 0) {
    frames_n = atoi(argv[3]);
    return client(atoi(argv[2]), argc - 4, argv + 4);
  }
  fprintf(stderr,
          "usage: stream-lat upstream FRAMES INTERVAL_US\n"
          "       stream-lat client REQS FRAMES name=port:path:bodyfile[:header]...\n");
  return 2;
}
