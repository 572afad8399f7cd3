/* cpx_http.c: see cpx_http.h. */
#include "cpx_http.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cpx_buf.h"

/* RFC 9110 tchar. */
static int is_tchar(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
      (c >= '0' && c <= '9'))
    return 1;
  return strchr("!#$%&'*+-.^_`|~", c) != NULL && c != 0;
}

static cpx_http_parser_t *hp_of(llhttp_t *p) {
  return cpx_container_of(p, cpx_http_parser_t, p);
}

static int fail(cpx_http_parser_t *hp, int status, const char *reason) {
  hp->error_status = status;
  hp->error_reason = reason;
  return HPE_USER;
}

static int count_header_bytes(cpx_http_parser_t *hp, size_t n) {
  hp->header_bytes += n;
  if (hp->header_bytes > hp->limits.max_header_bytes)
    return fail(hp, 431, "request header fields too large");
  return 0;
}

static int on_message_begin(llhttp_t *p) {
  cpx_http_parser_t *hp = hp_of(p);
  hp->state = 1;
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n) {
  cpx_http_parser_t *hp = hp_of(p);
  cpx_http_request_t *r = &hp->req;
  if (count_header_bytes(hp, n))
    return HPE_USER;
  if (r->url_len == 0)
    r->url_off = r->len;
  r->url_len += n;
  return cpx_buf_append(&r->buf, &r->len, &r->cap, at, n) ? fail(hp, 500, "oom")
                                                          : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n) {
  cpx_http_parser_t *hp = hp_of(p);
  cpx_http_request_t *r = &hp->req;
  if (count_header_bytes(hp, n))
    return HPE_USER;
  /* An empty span (llhttp's, at a piece boundary or for an empty name)
   * starts no field; on_header_field_complete refuses an empty name. */
  if (n == 0)
    return 0;
  if (hp->last_cb != 1) {
    /* A new field starts (last_cb is 0, or 3 after a complete value).
     * The count is checked once its name is complete: checked here, a name
     * llhttp later refuses (400) would be a 431 only when the name arrived
     * in pieces. One slot past the limit is the most this allocates. */
    if (r->nfields > hp->limits.max_fields)
      return fail(hp, 431, "too many header fields");
    if (r->nfields == r->fields_cap) {
      size_t nc = r->fields_cap ? r->fields_cap * 2 : 16;
      cpx_http_field_t *nf = realloc(r->fields, nc * sizeof(*nf));
      if (!nf)
        return fail(hp, 500, "oom");
      r->fields = nf;
      r->fields_cap = nc;
    }
    cpx_http_field_t *f = &r->fields[r->nfields++];
    memset(f, 0, sizeof(*f));
    f->name_off = r->len;
    hp->last_cb = 1;
  }
  cpx_http_field_t *f = &r->fields[r->nfields - 1];
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)at[i];
    /* llhttp 8 hands "Host " over as a field name: reject anything that is
     * not a token character so no header can hide behind a space. */
    if (!is_tchar(c))
      return fail(hp, 400, "invalid character in header field name");
  }
  if (cpx_buf_append(&r->buf, &r->len, &r->cap, at, n))
    return fail(hp, 500, "oom");
  for (size_t i = r->len - n; i < r->len; i++)
    if (r->buf[i] >= 'A' && r->buf[i] <= 'Z')
      r->buf[i] = (char)(r->buf[i] + 32);
  f->name_len += n;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
  cpx_http_parser_t *hp = hp_of(p);
  cpx_http_request_t *r = &hp->req;
  if (count_header_bytes(hp, n))
    return HPE_USER;
  if (r->nfields == 0)
    return fail(hp, 400, "header value without field");
  cpx_http_field_t *f = &r->fields[r->nfields - 1];
  if (hp->last_cb == 3)
    /* More value after the value ended, with no new field name: llhttp 8
     * passes an obs-fold continuation line this way. Folding is a
     * smuggling vector and RFC 9112 lets us refuse it. */
    return fail(hp, 400, "obs-fold in header value");
  if (hp->last_cb == 2 && !(hp->value_at_end && at == hp->exec_start)) {
    /* A second piece of the same value is only legitimate when the input
     * was split there; anything else is llhttp 8 passing an obs-fold
     * continuation line ("\r\n c") as more value. */
    return fail(hp, 400, "obs-fold in header value");
  }
  if (hp->last_cb != 2) {
    f->value_off = r->len;
    hp->last_cb = 2;
  }
  hp->value_at_end = (at + n == hp->exec_end);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)at[i];
    /* obs-fold reaches us as CR/LF inside a value: refuse it (RFC 9112
     * allows rejecting it, and folding is a smuggling vector). */
    if (c == '\r' || c == '\n' || c == 0)
      return fail(hp, 400, "obs-fold or control character in header value");
  }
  if (cpx_buf_append(&r->buf, &r->len, &r->cap, at, n))
    return fail(hp, 500, "oom");
  f->value_len += n;
  return 0;
}

/* llhttp 8 accepts a line starting with ':' (an empty field name);
 * RFC 9110 field-name is 1*tchar. */
static int on_header_field_complete(llhttp_t *p) {
  cpx_http_parser_t *hp = hp_of(p);
  if (hp->last_cb != 1)
    return fail(hp, 400, "empty header field name");
  if (hp->req.nfields > hp->limits.max_fields)
    return fail(hp, 431, "too many header fields");
  return 0;
}

static int on_header_value_complete(llhttp_t *p) {
  hp_of(p)->last_cb = 3;
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  cpx_http_parser_t *hp = hp_of(p);
  cpx_http_request_t *r = &hp->req;
  size_t n;
  const char *v;

  r->method = llhttp_method_name((llhttp_method_t)p->method);
  r->http_major = p->http_major;
  r->http_minor = p->http_minor;
  r->keep_alive = llhttp_should_keep_alive(p);
  v = cpx_http_header(r, "expect", &n);
  if (v) {
    if (n == 12 && strncasecmp(v, "100-continue", 12) == 0)
      r->expect_continue = 1;
    else
      return fail(hp, 417, "unsupported expectation");
  }
  r->upgrade = cpx_http_header(r, "upgrade", &n) != NULL;
  if (p->flags & F_CHUNKED) {
    r->has_body = 1;
  } else if (p->flags & F_CONTENT_LENGTH) {
    r->content_length = p->content_length;
    r->has_body = p->content_length > 0;
    if (p->content_length > hp->limits.max_body)
      return fail(hp, 413, "request body too large");
    /* One allocation for the whole body instead of doubling copies; only up
     * to 1 MiB ahead of the bytes, so a false Content-Length cannot make
     * every connection reserve the body limit. */
    if (p->content_length > 0 && !r->body) {
      size_t want = p->content_length < (1u << 20)
                        ? (size_t)p->content_length + 1
                        : (size_t)(1u << 20);
      r->body = malloc(want);
      if (r->body)
        r->body_cap = want;
    }
  }
  hp->state = 2;
  /* Reported once the bytes at hand are used up, so the server can answer
   * 100-continue before the client sends the body. Pausing here instead
   * would stall a body-less request (llhttp needs more input to resume). */
  hp->headers_done_pending = 1;
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n) {
  cpx_http_parser_t *hp = hp_of(p);
  cpx_http_request_t *r = &hp->req;
  if (r->body_len + n > hp->limits.max_body)
    return fail(hp, 413, "request body too large");
  if (r->body && at == r->body + r->body_len) {
    /* read in place (cpx_http_body_room): already where it belongs */
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return 0;
  }
  if (cpx_buf_append(&r->body, &r->body_len, &r->body_cap, at, n))
    return fail(hp, 500, "oom");
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  cpx_http_parser_t *hp = hp_of(p);
  hp->state = 3;
  /* One request at a time: pipelined bytes wait for the response. */
  return HPE_PAUSED;
}

static llhttp_settings_t settings;
static int settings_ready;

static void settings_init(void) {
  if (settings_ready)
    return;
  llhttp_settings_init(&settings);
  settings.on_message_begin = on_message_begin;
  settings.on_url = on_url;
  settings.on_header_field = on_header_field;
  settings.on_header_value = on_header_value;
  settings.on_header_field_complete = on_header_field_complete;
  settings.on_header_value_complete = on_header_value_complete;
  settings.on_headers_complete = on_headers_complete;
  settings.on_body = on_body;
  settings.on_message_complete = on_message_complete;
  settings_ready = 1;
}

void cpx_http_parser_init(cpx_http_parser_t *hp, const cpx_http_limits_t *lim) {
  settings_init();
  memset(hp, 0, sizeof(*hp));
  hp->limits = *lim;
  if (!hp->limits.max_header_bytes)
    hp->limits.max_header_bytes = 64 * 1024;
  if (!hp->limits.max_fields)
    hp->limits.max_fields = 100;
  if (hp->limits.max_fields > CPX_HTTP_MAX_FIELDS_HARD)
    hp->limits.max_fields = CPX_HTTP_MAX_FIELDS_HARD;
  if (!hp->limits.max_body)
    hp->limits.max_body = 32u * 1024 * 1024;
  llhttp_init(&hp->p, HTTP_REQUEST, &settings);
}

int cpx_http_body_room(cpx_http_parser_t *hp, char **p, size_t *n) {
  cpx_http_request_t *r = &hp->req;
  uint64_t left = hp->p.content_length;
  size_t room;
  if (hp->state != 2 || (hp->p.flags & F_CHUNKED) || left == 0 || !r->body ||
      r->body_cap < r->body_len + 2)
    return 0;
  room = r->body_cap - r->body_len - 1; /* keep the NUL's byte */
  *p = r->body + r->body_len;
  *n = left < room ? (size_t)left : room;
  return 1;
}

void cpx_http_request_free(cpx_http_request_t *r) {
  free(r->buf);
  free(r->fields);
  free(r->body);
  memset(r, 0, sizeof(*r));
}

void cpx_http_parser_free(cpx_http_parser_t *hp) {
  cpx_http_request_free(&hp->req);
}

int cpx_http_feed(cpx_http_parser_t *hp, const char *data, size_t len,
                  size_t *consumed) {
  llhttp_errno_t err;

  *consumed = 0;
  if (hp->state == 3)
    return CPX_HTTP_DONE;
  if (hp->error_status)
    return CPX_HTTP_ERROR;
  if (len == 0)
    return CPX_HTTP_NEED_MORE;
  /* The head's bound counts raw bytes, and llhttp never sees more than
   * one byte past it: what is refused (431, or 400 for a bad byte inside
   * the bound) is then the same however the bytes were split. */
  if (hp->state < 2) {
    size_t room = hp->limits.max_header_bytes + 1 - hp->head_raw;
    if (len > room)
      len = room;
  }
  hp->exec_start = data;
  hp->exec_end = data + len;
  err = llhttp_execute(&hp->p, data, len);
  if (hp->state < 2 && err == HPE_OK) {
    hp->head_raw += len;
    if (hp->head_raw > hp->limits.max_header_bytes) {
      fail(hp, 431, "request header fields too large");
      return CPX_HTTP_ERROR;
    }
  }
  if (err == HPE_OK) {
    *consumed = len;
    if (hp->headers_done_pending && hp->state == 2) {
      hp->headers_done_pending = 0;
      return CPX_HTTP_HEADERS_DONE;
    }
    return CPX_HTTP_NEED_MORE;
  }
  if (err == HPE_PAUSED_UPGRADE) {
    /* An Upgrade request (e.g. Codex's websocket probe): the server answers
     * it and closes; nothing after it is parsed. */
    const char *pos = llhttp_get_error_pos(&hp->p);
    *consumed = pos ? (size_t)(pos - data) : len;
    hp->state = 3;
    return CPX_HTTP_DONE;
  }
  if (err == HPE_PAUSED) {
    const char *pos = llhttp_get_error_pos(&hp->p);
    *consumed = pos ? (size_t)(pos - data) : len;
    llhttp_resume(&hp->p);
    hp->headers_done_pending = 0;
    if (hp->state == 3)
      return CPX_HTTP_DONE;
    return CPX_HTTP_NEED_MORE;
  }
  if (!hp->error_status) {
    if (err == HPE_INVALID_METHOD && hp->state == 0)
      hp->error_status = 400;
    else if (err == HPE_INVALID_TRANSFER_ENCODING)
      hp->error_status = 501;
    else
      hp->error_status = 400;
    hp->error_reason = llhttp_errno_name(err);
  }
  return CPX_HTTP_ERROR;
}

void cpx_http_take_request(cpx_http_parser_t *hp, cpx_http_request_t *out) {
  *out = hp->req;
  memset(&hp->req, 0, sizeof(hp->req));
  hp->header_bytes = 0;
  hp->head_raw = 0;
  hp->state = 0;
  hp->last_cb = 0;
  hp->headers_done_pending = 0;
  /* llhttp starts the next message by itself after a completed one. */
}

const char *cpx_http_header(const cpx_http_request_t *r, const char *name,
                            size_t *n) {
  size_t nl = strlen(name);
  for (size_t i = 0; i < r->nfields; i++) {
    const cpx_http_field_t *f = &r->fields[i];
    if (f->name_len == nl && memcmp(r->buf + f->name_off, name, nl) == 0) {
      if (n)
        *n = f->value_len;
      return r->buf + f->value_off;
    }
  }
  return NULL;
}

const char *cpx_http_reason(int status) {
  switch (status) {
  case 100:
    return "Continue";
  case 101:
    return "Switching Protocols";
  case 200:
    return "OK";
  case 201:
    return "Created";
  case 204:
    return "No Content";
  case 301:
    return "Moved Permanently";
  case 302:
    return "Found";
  case 304:
    return "Not Modified";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 402:
    return "Payment Required";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 409:
    return "Conflict";
  case 413:
    return "Content Too Large";
  case 414:
    return "URI Too Long";
  case 415:
    return "Unsupported Media Type";
  case 417:
    return "Expectation Failed";
  case 422:
    return "Unprocessable Content";
  case 426:
    return "Upgrade Required";
  case 429:
    return "Too Many Requests";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 501:
    return "Not Implemented";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  case 529:
    return "Overloaded";
  default:
    return "Unknown";
  }
}
