/* cpx_sse.c: incremental SSE parser and streamed JSON-array framer.
 *
 * Both work on arbitrary byte splits: nothing depends on where one
 * cpx_*_feed call ends and the next begins. Complete lines (SSE) and
 * complete elements (JSON array) that sit inside one chunk are handed on
 * without copying into the pending buffer; only a tail cut by the chunk end
 * is kept.
 */
#include "cpx_sse.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cpx_buf.h"

#define DEFAULT_MAX (8u << 20)

/* ---- SSE ---------------------------------------------------------------- */

static const unsigned char bom[3] = {0xEF, 0xBB, 0xBF};
#define BOM_DONE 3

void cpx_sse_init(cpx_sse_t *p, size_t max_event) {
  memset(p, 0, sizeof(*p));
  p->max_event = max_event ? max_event : DEFAULT_MAX;
  p->retry = -1;
}

void cpx_sse_free(cpx_sse_t *p) {
  free(p->buf);
  free(p->data);
  free(p->event);
  free(p->id);
  memset(p, 0, sizeof(*p));
}

static int sse_fail(cpx_sse_t *p, int rc) {
  p->failed = rc;
  return rc;
}

/* A blank line: dispatch when the data buffer is non-empty (WHATWG 9.2.6
 * step "dispatch the event"), then reset data, type and retry but not the
 * last-event-ID. */
static int sse_dispatch(cpx_sse_t *p, cpx_sse_cb cb, void *ud) {
  cpx_sse_event_t ev;
  if (p->data_len == 0) {
    p->event_len = 0;
    p->retry = -1;
    return 0;
  }
  ev.event.p = p->event_len ? p->event : "";
  ev.event.n = p->event_len;
  ev.data.p = p->data;
  ev.data.n = p->data_len - 1; /* drop the final LF */
  ev.id.p = p->id_len ? p->id : "";
  ev.id.n = p->id_len;
  ev.retry = p->retry;
  /* The buffers are left untouched until the next line, so the event stays
   * valid during the callback. */
  p->data_len = 0;
  p->event_len = 0;
  p->retry = -1;
  return cb(ud, &ev);
}

static int field_is(const char *name, size_t n, const char *lit) {
  size_t l = strlen(lit);
  return n == l && memcmp(name, lit, l) == 0;
}

static int sse_line(cpx_sse_t *p, const char *line, size_t n, cpx_sse_cb cb,
                    void *ud) {
  const char *colon, *val;
  size_t nl, vl;
  if (n == 0)
    return sse_dispatch(p, cb, ud);
  if (line[0] == ':')
    return 0; /* comment / keep-alive */
  colon = memchr(line, ':', n);
  if (colon) {
    nl = (size_t)(colon - line);
    val = colon + 1;
    vl = n - nl - 1;
    if (vl > 0 && val[0] == ' ') {
      val++;
      vl--;
    }
  } else {
    nl = n;
    val = "";
    vl = 0;
  }
  /* The bound covers the event as handed on: its type and its data
   * together (a long "event:" line plus data within the limit each would
   * otherwise pass). */
  if (field_is(line, nl, "data")) {
    if (p->data_len + p->event_len + vl + 1 > p->max_event)
      return sse_fail(p, CPX_ELIMIT);
    if (cpx_buf_append(&p->data, &p->data_len, &p->data_cap, val, vl) ||
        cpx_buf_append(&p->data, &p->data_len, &p->data_cap, "\n", 1))
      return sse_fail(p, CPX_ENOMEM);
  } else if (field_is(line, nl, "event")) {
    if (p->data_len + vl > p->max_event)
      return sse_fail(p, CPX_ELIMIT);
    p->event_len = 0;
    if (cpx_buf_append(&p->event, &p->event_len, &p->event_cap, val, vl))
      return sse_fail(p, CPX_ENOMEM);
  } else if (field_is(line, nl, "id")) {
    if (!memchr(val, '\0', vl)) {
      p->id_len = 0;
      if (cpx_buf_append(&p->id, &p->id_len, &p->id_cap, val, vl))
        return sse_fail(p, CPX_ENOMEM);
    }
  } else if (field_is(line, nl, "retry")) {
    long r = 0;
    size_t i;
    for (i = 0; i < vl; i++) {
      if (val[i] < '0' || val[i] > '9')
        break;
      if (r > (LONG_MAX - 9) / 10)
        r = LONG_MAX; /* saturate: "far in the future" */
      else
        r = r * 10 + (val[i] - '0');
    }
    if (vl > 0 && i == vl)
      p->retry = r;
  }
  /* other fields are ignored */
  return 0;
}

/* Index of the next byte equal to c in s[from..n), or n. The caller caches
 * the answer so a chunk is scanned once per terminator kind. */
static size_t next_of(const char *s, size_t from, size_t n, char c) {
  const char *q = memchr(s + from, c, n - from);
  return q ? (size_t)(q - s) : n;
}

int cpx_sse_feed(cpx_sse_t *p, const char *buf, size_t len, cpx_sse_cb cb,
                 void *ud) {
  size_t i = 0, cr = 0, lf = 0;
  int have_cr = 0, have_lf = 0;
  if (p->failed)
    return p->failed;
  /* One leading BOM, which may itself be split across chunks. */
  while (p->bom_state < BOM_DONE && i < len) {
    if ((unsigned char)buf[i] == bom[p->bom_state]) {
      p->bom_state++;
      i++;
    } else {
      /* Not a BOM: the bytes matched so far are ordinary line bytes. */
      if (cpx_buf_append(&p->buf, &p->len, &p->cap, (const char *)bom,
                         (size_t)p->bom_state))
        return sse_fail(p, CPX_ENOMEM);
      p->bom_state = BOM_DONE;
    }
  }
  while (i < len) {
    size_t end;
    const char *line;
    size_t n;
    int rc;
    if (p->last_was_cr) {
      /* The CR already ended its line; an LF right after it is part of
       * the same CRLF, even when it arrives in the next chunk. */
      p->last_was_cr = 0;
      if (buf[i] == '\n') {
        i++;
        continue;
      }
    }
    if (!have_cr || cr < i) {
      cr = next_of(buf, i, len, '\r');
      have_cr = 1;
    }
    if (!have_lf || lf < i) {
      lf = next_of(buf, i, len, '\n');
      have_lf = 1;
    }
    end = cr < lf ? cr : lf;
    if (end == len) {
      /* No terminator in the rest of the chunk: keep it pending. */
      if (p->len + (len - i) + p->data_len > p->max_event)
        return sse_fail(p, CPX_ELIMIT);
      if (cpx_buf_append(&p->buf, &p->len, &p->cap, buf + i, len - i))
        return sse_fail(p, CPX_ENOMEM);
      break;
    }
    if (p->len + (end - i) + p->data_len > p->max_event)
      return sse_fail(p, CPX_ELIMIT);
    if (p->len) {
      if (cpx_buf_append(&p->buf, &p->len, &p->cap, buf + i, end - i))
        return sse_fail(p, CPX_ENOMEM);
      line = p->buf;
      n = p->len;
    } else {
      line = buf + i;
      n = end - i;
    }
    p->last_was_cr = buf[end] == '\r';
    i = end + 1;
    rc = sse_line(p, line, n, cb, ud);
    p->len = 0;
    if (rc)
      return rc;
  }
  return 0;
}

/* ---- JSON array framer -------------------------------------------------- */

enum {
  JA_START, /* before the opening '[' */
  JA_FIRST, /* after '[': an element or ']' */
  JA_NEXT,  /* after ',': an element */
  JA_IN,    /* inside an element */
  JA_AFTER, /* after an element: ',' or ']' */
  JA_DONE,  /* after the closing ']': only whitespace */
};

void cpx_jsonarr_init(cpx_jsonarr_t *p, size_t max_elem) {
  memset(p, 0, sizeof(*p));
  p->max_elem = max_elem ? max_elem : DEFAULT_MAX;
  p->state = JA_START;
}

void cpx_jsonarr_free(cpx_jsonarr_t *p) {
  free(p->buf);
  memset(p, 0, sizeof(*p));
}

static int ja_fail(cpx_jsonarr_t *p, int rc) {
  p->failed = rc;
  return rc;
}

static int is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int is_scalar_byte(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
         (c >= 'A' && c <= 'Z') || c == '-' || c == '+' || c == '.';
}

/* Hands on the element made of the pending bytes plus buf[start..end). */
static int ja_emit(cpx_jsonarr_t *p, const char *buf, size_t start, size_t end,
                   cpx_jsonarr_cb cb, void *ud) {
  int rc;
  if (p->len + (end - start) > p->max_elem)
    return ja_fail(p, CPX_ELIMIT);
  if (p->len == 0) {
    rc = cb(ud, buf + start, end - start);
  } else {
    if (cpx_buf_append(&p->buf, &p->len, &p->cap, buf + start, end - start))
      return ja_fail(p, CPX_ENOMEM);
    rc = cb(ud, p->buf, p->len);
  }
  p->len = 0;
  p->state = JA_AFTER;
  return rc;
}

int cpx_jsonarr_feed(cpx_jsonarr_t *p, const char *buf, size_t len,
                     cpx_jsonarr_cb cb, void *ud) {
  size_t i = 0, start = 0;
  int rc;
  if (p->failed)
    return p->failed;
  while (i < len) {
    char c = buf[i];
    switch (p->state) {
    case JA_START:
      if (c == '[')
        p->state = JA_FIRST;
      else if (!is_ws(c))
        return ja_fail(p, CPX_EPARSE);
      i++;
      break;
    case JA_FIRST:
    case JA_NEXT:
    case JA_AFTER:
      if (is_ws(c)) {
        i++;
      } else if (p->state != JA_NEXT && c == ']') {
        p->state = JA_DONE;
        i++;
      } else if (p->state == JA_AFTER) {
        if (c != ',')
          return ja_fail(p, CPX_EPARSE);
        p->state = JA_NEXT;
        i++;
      } else {
        /* An element starts here. */
        start = i;
        p->depth = 0;
        p->in_str = 0;
        p->esc = 0;
        p->scalar = 0;
        if (c == '{' || c == '[')
          p->depth = 1;
        else if (c == '"')
          p->in_str = 1;
        else if (is_scalar_byte(c))
          p->scalar = 1;
        else
          return ja_fail(p, CPX_EPARSE);
        p->state = JA_IN;
        i++;
      }
      break;
    case JA_IN:
      if (p->in_str) {
        /* Skip plain string bytes quickly. */
        while (i < len && !p->esc && buf[i] != '"' && buf[i] != '\\')
          i++;
        if (i == len)
          break;
        c = buf[i++];
        if (p->esc)
          p->esc = 0;
        else if (c == '\\')
          p->esc = 1;
        else if (c == '"') {
          p->in_str = 0;
          if (p->depth == 0 && (rc = ja_emit(p, buf, start, i, cb, ud)))
            return rc;
        }
      } else if (p->scalar) {
        if (is_scalar_byte(c)) {
          i++;
        } else if (is_ws(c) || c == ',' || c == ']') {
          /* The delimiter is not part of the element; JA_AFTER reads it. */
          if ((rc = ja_emit(p, buf, start, i, cb, ud)))
            return rc;
        } else {
          return ja_fail(p, CPX_EPARSE);
        }
      } else {
        i++;
        if (c == '"') {
          p->in_str = 1;
        } else if (c == '{' || c == '[') {
          p->depth++;
        } else if (c == '}' || c == ']') {
          if (--p->depth == 0 && (rc = ja_emit(p, buf, start, i, cb, ud)))
            return rc;
        }
      }
      break;
    default: /* JA_DONE */
      if (!is_ws(c))
        return ja_fail(p, CPX_EPARSE);
      i++;
      break;
    }
    /* An element past the bound fails at the byte that crosses it, not at
     * its end or at a later parse error: otherwise where the chunks were cut
     * (the check at the chunk's end below) would decide which error the
     * caller sees. */
    if (p->state == JA_IN && p->len + (i - start) > p->max_elem)
      return ja_fail(p, CPX_ELIMIT);
  }
  if (p->state == JA_IN) {
    /* The element continues in the next chunk: keep its bytes. */
    if (p->len + (len - start) > p->max_elem)
      return ja_fail(p, CPX_ELIMIT);
    if (cpx_buf_append(&p->buf, &p->len, &p->cap, buf + start, len - start))
      return ja_fail(p, CPX_ENOMEM);
  }
  return 0;
}
