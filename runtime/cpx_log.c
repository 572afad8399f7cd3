/* cpx_log.c: see cpx_log.h. */
#include "cpx_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cpx.h"

static int log_level = CPX_LOG_INFO;

static const char *level_names[] = {"debug", "info", "warn", "error"};

void cpx_log_set_level(int level) {
  if (level >= CPX_LOG_DEBUG && level <= CPX_LOG_ERROR)
    log_level = level;
}

int cpx_log_get_level(void) {
  return log_level;
}

int cpx_log_level_from_name(const char *name) {
  for (int i = 0; i < 4; i++)
    if (strcasecmp(name, level_names[i]) == 0)
      return i;
  if (strcasecmp(name, "warning") == 0)
    return CPX_LOG_WARN;
  return -1;
}

const char *cpx_log_level_name(int level) {
  if (level < 0 || level > 3)
    return "info";
  return level_names[level];
}

/* The timestamp only changes once a second: format it once per second
 * (per thread) instead of once per line. */
static size_t stamp(char *out, size_t outlen) {
  static __thread time_t last;
  static __thread char cached[32];
  static __thread size_t cached_len;
  time_t now = time(NULL);
  if (now != last || !cached_len) {
    struct tm tm;
    localtime_r(&now, &tm);
    cached_len = strftime(cached, sizeof(cached), "[%Y-%m-%d %H:%M:%S] ", &tm);
    last = now;
  }
  if (cached_len >= outlen)
    return 0;
  memcpy(out, cached, cached_len);
  return cached_len;
}

void cpx_log(int level, const char *rid, const char *fmt, ...) {
  char line[4096];
  size_t n;
  va_list ap;

  if (level < log_level)
    return;
  n = stamp(line, sizeof(line));
  n += (size_t)snprintf(line + n, sizeof(line) - n, "[%s] [%s] ",
                        rid ? rid : "--------", cpx_log_level_name(level));
  va_start(ap, fmt);
  if (n < sizeof(line))
    n += (size_t)vsnprintf(line + n, sizeof(line) - n, fmt, ap);
  va_end(ap);
  if (n >= sizeof(line) - 1)
    n = sizeof(line) - 2;
  line[n++] = '\n';
  /* stdio locks the stream per call, so lines from several threads never
   * interleave; cpx_log_flush (on a timer, at errors and at exit) pushes
   * the buffer out so logging costs no syscall per request. */
  fwrite(line, 1, n, stderr);
  if (level >= CPX_LOG_WARN)
    fflush(stderr);
}

void cpx_log_buffered(void) {
  static char buf[65536];
  setvbuf(stderr, buf, _IOFBF, sizeof(buf));
}

void cpx_log_flush(void) {
  fflush(stderr);
}

/* "api-key" and "value": the management API deletes keys by value
 * (DELETE /v0/management/gemini-api-key?api-key=..., /api-keys?value=...). */
static int is_secret_param(const char *p, size_t n) {
  static const char *names[] = {"key",     "auth_token", "access_token",
                                "api_key", "token",      "api-key",
                                "value",   "password",   "secret"};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    if (strlen(names[i]) == n && strncasecmp(p, names[i], n) == 0)
      return 1;
  return 0;
}

char *cpx_log_redact_query(const char *target, size_t len, char *out,
                           size_t outlen) {
  size_t o = 0, i = 0;
  int in_query = 0;

  if (outlen == 0)
    return out;
  while (i < len && o + 4 < outlen) {
    char c = target[i];
    if (!in_query) {
      out[o++] = c;
      i++;
      if (c == '?')
        in_query = 1;
      continue;
    }
    /* At the start of a name=value pair. */
    size_t ns = i;
    while (i < len && target[i] != '=' && target[i] != '&')
      i++;
    size_t nn = i - ns;
    if (o + nn + 5 >= outlen)
      break;
    memcpy(out + o, target + ns, nn);
    o += nn;
    if (i < len && target[i] == '=') {
      size_t vs = ++i;
      while (i < len && target[i] != '&')
        i++;
      out[o++] = '=';
      if (is_secret_param(target + ns, nn)) {
        memcpy(out + o, "***", 3);
        o += 3;
      } else {
        size_t vn = i - vs;
        if (o + vn + 2 >= outlen)
          vn = outlen - o - 2;
        memcpy(out + o, target + vs, vn);
        o += vn;
      }
    }
    if (i < len && target[i] == '&') {
      out[o++] = '&';
      i++;
    }
  }
  out[o] = '\0';
  return out;
}

const char *cpx_strerror(int code) {
  switch (code) {
  case CPX_OK:
    return "ok";
  case CPX_EAGAIN:
    return "not ready";
  case CPX_ELIMIT:
    return "limit exceeded";
  case CPX_EPARSE:
    return "malformed input";
  case CPX_ECLOSED:
    return "closed";
  case CPX_ETIMEOUT:
    return "timed out";
  case CPX_ESTATE:
    return "invalid state";
  case CPX_ENOMEM:
    return "out of memory";
  case CPX_EINVAL:
    return "invalid argument";
  case CPX_EIO:
    return "i/o error";
  case CPX_ESCRIPT:
    return "script error";
  default:
    return code < 0 && code > -4096 ? strerror(-code) : "unknown error";
  }
}
