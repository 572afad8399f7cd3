/* `cliproxy doctor`. The Lua side (rt.doctor) judges what only the scripts
 * know (credentials, where each provider sends requests); this file adds
 * what needs the OS: the listening port and one HEAD per upstream origin.
 * Blocking calls are fine here: the command runs no event loop. */
#include "cpx_doctor.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cpx_tls.h"
#include "cpx_upstream.h"

typedef struct {
  int errors, warnings;
} tally_t;

static void line(tally_t *t, const char *level, const char *text,
                 const char *hint) {
  if (strcmp(level, "error") == 0)
    t->errors++;
  else if (strcmp(level, "warn") == 0)
    t->warnings++;
  printf("  %-5s %s\n", level, text);
  if (hint && *hint)
    printf("        -> %s\n", hint);
}

/* Binds host:port the way the server will, without SO_REUSEPORT, so a
 * running proxy (or anything else) on it is reported. */
static void check_port(tally_t *t, const cpx_server_config_t *sc) {
  struct addrinfo hints, *res = NULL, *ai;
  char port[16], msg[512];
  const char *host = sc->host[0] ? sc->host : NULL;
  int rc, err = 0, bound = 0;

  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  snprintf(port, sizeof(port), "%d", sc->port);
  rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0) {
    snprintf(msg, sizeof(msg), "host '%s' does not resolve: %s",
             host ? host : "", gai_strerror(rc));
    line(t, "error", msg, "set host to an address of this machine");
    return;
  }
  for (ai = res; ai && !bound; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol), one = 1;
    if (fd < 0) {
      err = errno;
      continue;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0)
      bound = 1;
    else
      err = errno;
    close(fd);
  }
  freeaddrinfo(res);
  if (bound) {
    snprintf(msg, sizeof(msg), "port %s:%d is free", host ? host : "*",
             sc->port);
    line(t, "ok", msg, NULL);
  } else {
    snprintf(msg, sizeof(msg), "port %s:%d cannot be bound: %s",
             host ? host : "*", sc->port, strerror(err));
    line(t, "error", msg,
         err == EADDRINUSE ? "another process listens there (a running "
                             "cliproxy?): stop it or change port"
                           : "choose another host or port");
  }
}

static size_t discard(char *p, size_t size, size_t n, void *ud) {
  return size * n;
}

static void probe(tally_t *t, const cpx_doctor_upstream_t *u,
                  const char *global_proxy, long timeout_ms,
                  const char *ca_file) {
  char errbuf[CURL_ERROR_SIZE] = "", msg[1024];
  const char *proxy = u->proxy[0] ? u->proxy : global_proxy;
  long status = 0;
  double secs = 0;
  CURL *e = curl_easy_init();
  CURLcode rc;

  if (!e) {
    line(t, "error", "libcurl: cannot create a handle", NULL);
    return;
  }
  curl_easy_setopt(e, CURLOPT_URL, u->url);
  curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  cpx_upstream_apply_ca(e, ca_file);
  /* The same proxy rule as the upstream client: "" / direct / none mean no
   * proxy at all, not even the *_proxy environment. */
  if (proxy && (!*proxy || strcasecmp(proxy, "direct") == 0 ||
                strcasecmp(proxy, "none") == 0))
    curl_easy_setopt(e, CURLOPT_PROXY, "");
  else if (proxy && *proxy)
    curl_easy_setopt(e, CURLOPT_PROXY, proxy);
  rc = curl_easy_perform(e);
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(e, CURLINFO_TOTAL_TIME, &secs);
  curl_easy_cleanup(e);
  if (rc == CURLE_OK) {
    /* Any HTTP answer proves the route; the status is only information
     * (most APIs answer a bare HEAD with 404 or 401). */
    snprintf(msg, sizeof(msg),
             "upstream %s (%s): reachable, HTTP %ld in %.0f ms", u->url,
             u->name, status, secs * 1000);
    line(t, "ok", msg, NULL);
    return;
  }
  snprintf(msg, sizeof(msg), "upstream %s (%s): %s", u->url, u->name,
           errbuf[0] ? errbuf : curl_easy_strerror(rc));
  line(t, "error", msg,
       rc == CURLE_COULDNT_RESOLVE_HOST ? "the name does not resolve: check "
                                          "base-url and DNS"
       : rc == CURLE_OPERATION_TIMEDOUT ? "no answer in time: check the "
                                          "network, a firewall or proxy-url"
       : rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CONNECT_ERROR
           ? "TLS failed: check the URL's scheme and the system's CA "
             "certificates"
           : "check base-url, the network and proxy-url");
}

int cpx_doctor_run(cpx_vm_t *vm, const char *config_path,
                   const cpx_doctor_opts_t *opts) {
  tally_t t = {0, 0};
  cpx_doctor_t d;
  char err[1024], msg[1400];
  long timeout_ms = opts->probe_timeout_ms > 0 ? opts->probe_timeout_ms : 5000;

  printf("cliproxy doctor: %s\n", config_path);
  line(&t, "ok", "the config and every Lua module load", NULL);
  if (vm->settings.tls_enable) {
    cpx_tls_ctx_t *tls;
    if (cpx_tls_ctx_new(&tls, vm->settings.tls_cert, vm->settings.tls_key, err,
                        sizeof(err)) == 0) {
      cpx_tls_ctx_free(tls);
      line(&t, "ok", "the TLS certificate and key load and match", NULL);
    } else {
      line(&t, "error", err, "fix tls.cert / tls.key");
    }
  }
  check_port(&t, &vm->settings.server);
  if (cpx_vm_doctor(vm, &d, err, sizeof(err)) != 0) {
    line(&t, "error", err, NULL);
  } else {
    for (int i = 0; i < d.nchecks; i++)
      line(&t, d.checks[i].level, d.checks[i].text, d.checks[i].hint);
    if (opts->offline) {
      snprintf(msg, sizeof(msg), "%d upstream(s) not probed (--offline)",
               d.nupstreams);
      line(&t, "ok", msg, NULL);
    } else {
      for (int i = 0; i < d.nupstreams; i++)
        probe(&t, &d.upstreams[i], vm->settings.proxy_url, timeout_ms,
              vm->settings.upstream_ca_file);
    }
    cpx_doctor_free(&d);
  }
  if (t.errors)
    printf("%d problem(s), %d warning(s)\n", t.errors, t.warnings);
  else
    printf("no problems found (%d warning(s))\n", t.warnings);
  return t.errors;
}
