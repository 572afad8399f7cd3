/* cpx_errbody.c: cliproxy's own error bodies, in the client's envelope. */
#include "cpx_errbody.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  char *p;
  size_t n, cap;
  int overflow;
} eb_out_t;

static void eb_add(eb_out_t *o, const char *s, size_t n) {
  if (o->overflow || o->n + n + 1 > o->cap) {
    o->overflow = 1;
    return;
  }
  memcpy(o->p + o->n, s, n);
  o->n += n;
}

static void eb_adds(eb_out_t *o, const char *s) {
  eb_add(o, s, strlen(s));
}

/* Length of the valid UTF-8 sequence at s (RFC 3629: no overlongs, no
 * surrogates, nothing past U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len, i;
  unsigned cp;
  if (c < 0xc2 || c > 0xf4)
    return 0;
  len = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
  if (n < len)
    return 0;
  cp = c & (0x7f >> len);
  for (i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
      (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
    return 0;
  return len;
}

/* A JSON string; a message is arbitrary bytes (upstream text, a reason). */
static void eb_str(eb_out_t *o, const char *str) {
  const unsigned char *s = (const unsigned char *)(str ? str : "");
  size_t n = strlen((const char *)s), i = 0;
  eb_add(o, "\"", 1);
  while (i < n) {
    unsigned c = s[i];
    char esc[8];
    size_t len;
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      size_t j = i;
      while (j < n && s[j] >= 0x20 && s[j] < 0x80 && s[j] != '"' &&
             s[j] != '\\')
        j++;
      eb_add(o, (const char *)s + i, j - i);
      i = j;
      continue;
    }
    if (c < 0x80) {
      switch (c) {
      case '"':
        eb_add(o, "\\\"", 2);
        break;
      case '\\':
        eb_add(o, "\\\\", 2);
        break;
      case '\n':
        eb_add(o, "\\n", 2);
        break;
      case '\r':
        eb_add(o, "\\r", 2);
        break;
      case '\t':
        eb_add(o, "\\t", 2);
        break;
      case '\b':
        eb_add(o, "\\b", 2);
        break;
      case '\f':
        eb_add(o, "\\f", 2);
        break;
      default:
        snprintf(esc, sizeof(esc), "\\u%04x", c);
        eb_add(o, esc, 6);
      }
      i++;
      continue;
    }
    len = utf8_len(s + i, n - i);
    if (len) {
      eb_add(o, (const char *)s + i, len);
      i += len;
    } else {
      eb_add(o, "\xef\xbf\xbd", 3);
      i++;
    }
  }
  eb_add(o, "\"", 1);
}

static int has_prefix(const char *p, size_t n, const char *pre) {
  size_t k = strlen(pre);
  return n >= k && memcmp(p, pre, k) == 0;
}

int cpx_errbody_format(const char *path, size_t n) {
  if (!path)
    return CPX_FMT_OPENAI_CHAT;
  if (has_prefix(path, n, "/v1/messages"))
    return CPX_FMT_CLAUDE;
  if (has_prefix(path, n, "/v1/responses"))
    return CPX_FMT_OPENAI_RESPONSES;
  if (has_prefix(path, n, "/v1beta/"))
    return CPX_FMT_GEMINI;
  return CPX_FMT_OPENAI_CHAT;
}

/* lib.ir error_type */
static const char *openai_type(int st, const char **code) {
  *code = NULL;
  if (st == 401)
    return *code = "invalid_api_key", "authentication_error";
  if (st == 403)
    return *code = "insufficient_quota", "permission_error";
  if (st == 429)
    return *code = "rate_limit_exceeded", "rate_limit_error";
  if (st == 404)
    return *code = "model_not_found", "invalid_request_error";
  if (st >= 500)
    return *code = "internal_server_error", "server_error";
  return "invalid_request_error";
}

/* translators/claude.lua claude_type */
static const char *claude_type(int st) {
  if (st == 401)
    return "authentication_error";
  if (st == 403)
    return "permission_error";
  if (st == 404)
    return "not_found_error";
  if (st == 413)
    return "request_too_large";
  if (st == 429)
    return "rate_limit_error";
  if (st == 529 || st == 503)
    return "overloaded_error";
  if (st >= 500)
    return "api_error";
  return "invalid_request_error";
}

/* translators/gemini.lua STATUS */
static const char *gemini_status(int st) {
  switch (st) {
  case 400:
    return "INVALID_ARGUMENT";
  case 401:
    return "UNAUTHENTICATED";
  case 403:
    return "PERMISSION_DENIED";
  case 404:
    return "NOT_FOUND";
  case 409:
    return "ABORTED";
  case 413:
    return "INVALID_ARGUMENT";
  case 429:
    return "RESOURCE_EXHAUSTED";
  case 499:
    return "CANCELLED";
  case 500:
    return "INTERNAL";
  case 501:
    return "UNIMPLEMENTED";
  case 502:
    return "UNAVAILABLE";
  case 503:
    return "UNAVAILABLE";
  case 504:
    return "DEADLINE_EXCEEDED";
  case 529:
    return "UNAVAILABLE";
  }
  return st >= 500 ? "INTERNAL" : "INVALID_ARGUMENT";
}

/* A type is kept only where the codec keeps it (its OPENAI_TYPES or
 * CLAUDE_TYPES), so one call fits every envelope. */
static int in_set(const char *type, const char *const *set) {
  for (; type && *set; set++)
    if (strcmp(type, *set) == 0)
      return 1;
  return 0;
}

static const char *const openai_chat_types[] = {
    "invalid_request_error", "authentication_error",
    "permission_error",      "rate_limit_error",
    "server_error",          "not_found_error",
    "insufficient_quota",    NULL};
/* translators/openai_responses.lua: no insufficient_quota */
static const char *const openai_responses_types[] = {"invalid_request_error",
                                                     "authentication_error",
                                                     "permission_error",
                                                     "rate_limit_error",
                                                     "server_error",
                                                     "not_found_error",
                                                     NULL};
static const char *const claude_types[] = {"invalid_request_error",
                                           "authentication_error",
                                           "permission_error",
                                           "not_found_error",
                                           "request_too_large",
                                           "rate_limit_error",
                                           "api_error",
                                           "overloaded_error",
                                           NULL};

static void eb_body(eb_out_t *o, int fmt, int status, const char *type,
                    const char *code, const char *msg) {
  char num[16];
  const char *dcode;
  switch (fmt) {
  case CPX_FMT_CLAUDE:
    eb_adds(o, "{\"type\":\"error\",\"error\":{\"type\":");
    eb_str(o, in_set(type, claude_types) ? type : claude_type(status));
    eb_adds(o, ",\"message\":");
    eb_str(o, msg);
    eb_adds(o, "}}");
    break;
  case CPX_FMT_GEMINI:
    snprintf(num, sizeof(num), "%d", status);
    eb_adds(o, "{\"error\":{\"code\":");
    eb_adds(o, num);
    eb_adds(o, ",\"message\":");
    eb_str(o, msg);
    eb_adds(o, ",\"status\":");
    eb_str(o, gemini_status(status));
    eb_adds(o, "}}");
    break;
  default: {
    const char *dtype = openai_type(status, &dcode);
    eb_adds(o, "{\"error\":{\"message\":");
    eb_str(o, msg);
    eb_adds(o, ",\"type\":");
    eb_str(o,
           in_set(type, fmt == CPX_FMT_OPENAI_RESPONSES ? openai_responses_types
                                                        : openai_chat_types)
               ? type
               : dtype);
    eb_adds(o, ",\"param\":null,\"code\":");
    if (code || dcode)
      eb_str(o, code ? code : dcode);
    else
      eb_adds(o, "null");
    eb_adds(o, "}}");
  }
  }
}

static int eb_finish(eb_out_t *o) {
  if (o->overflow) {
    if (o->cap)
      o->p[0] = '\0';
    return -ENOBUFS;
  }
  o->p[o->n] = '\0';
  return (int)o->n;
}

int cpx_errbody(char *out, size_t cap, int fmt, int status, const char *type,
                const char *code, const char *msg) {
  eb_out_t o = {out, 0, cap, cap == 0};
  if (fmt < CPX_FMT_OPENAI_CHAT || fmt > CPX_FMT_GEMINI)
    return -EINVAL;
  eb_body(&o, fmt, status, type, code, msg);
  return eb_finish(&o);
}

int cpx_errbody_sse(char *out, size_t cap, int fmt, int status,
                    const char *type, const char *code, const char *msg) {
  eb_out_t o = {out, 0, cap, cap == 0};
  if (fmt < CPX_FMT_OPENAI_CHAT || fmt > CPX_FMT_GEMINI)
    return -EINVAL;
  /* The framing of each codec's stream_error. */
  eb_adds(&o, fmt == CPX_FMT_CLAUDE ? "event: error\ndata: " : "data: ");
  eb_body(&o, fmt, status, type, code, msg);
  eb_adds(&o, fmt == CPX_FMT_GEMINI ? "\r\n\r\n" : "\n\n");
  return eb_finish(&o);
}
