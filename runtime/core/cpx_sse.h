/* cpx_sse.h: incremental framers for upstream streams.
 *
 * cpx_sse_t is a WHATWG Server-Sent Events parser (LF, CR and CRLF line ends,
 * multi-line data, comments, event/id/retry, one leading UTF-8 BOM). It hands
 * complete events to a callback and never a partial one; the bytes may be
 * split anywhere across calls to cpx_sse_feed.
 *
 * cpx_jsonarr_t frames a streamed top-level JSON array ("[{...},\r\n{...}]",
 * as Gemini sends without alt=sse) and hands each complete element's bytes
 * to a callback.
 *
 * Ownership: the parser owns its internal buffer (freed by *_free). The
 * event passed to the callback points into that buffer and is valid only
 * during the callback.
 */
#ifndef CPX_SSE_H
#define CPX_SSE_H

#include "cpx.h"

typedef struct {
  cpx_str_t event; /* "" when the stream gave no event field */
  cpx_str_t data;  /* data lines joined by LF, final LF removed */
  cpx_str_t id;    /* last-event-id buffer ("" when never set) */
  long retry;      /* -1 unless this event's block set a valid retry */
} cpx_sse_event_t;

/* Return 0 to continue, non-zero to stop: cpx_sse_feed then returns that
 * value unchanged. */
typedef int (*cpx_sse_cb)(void *ud, const cpx_sse_event_t *ev);

/* All buffers are owned by the parser and freed by cpx_sse_free. */
typedef struct {
  char *buf; /* pending bytes of the line not yet terminated */
  size_t len, cap;
  size_t max_event; /* bound on one event: type + data, and a pending line */
  char *data;       /* data buffer: each data line plus LF */
  size_t data_len, data_cap;
  char *event; /* event type buffer */
  size_t event_len, event_cap;
  char *id; /* last-event-ID buffer (kept across events) */
  size_t id_len, id_cap;
  long retry;      /* valid retry of the current block, or -1 */
  int last_was_cr; /* the last line ended with CR: swallow one LF */
  int bom_state;   /* BOM bytes matched so far; 3 once decided */
  int failed;      /* sticky error code after CPX_ELIMIT / CPX_ENOMEM */
} cpx_sse_t;

/* max_event 0 means the default, 8 MiB. */
void cpx_sse_init(cpx_sse_t *p, size_t max_event);
/* Returns 0, CPX_ELIMIT when one event grows past max_event (the parser is
 * then unusable), CPX_ENOMEM, or the callback's non-zero value. */
int cpx_sse_feed(cpx_sse_t *p, const char *buf, size_t len, cpx_sse_cb cb,
                 void *ud);
void cpx_sse_free(cpx_sse_t *p);

typedef int (*cpx_jsonarr_cb)(void *ud, const char *elem, size_t len);

typedef struct {
  char *buf; /* owned: bytes of an element that spans chunks */
  size_t len, cap, max_elem;
  int state;  /* position in the array grammar (see cpx_sse.c) */
  int depth;  /* bracket depth inside the current element */
  int in_str; /* inside a string of the current element */
  int esc;    /* the previous string byte was a backslash */
  int scalar; /* the current element is a bare number/literal */
  int failed; /* sticky error code */
} cpx_jsonarr_t;

/* max_elem 0 means the default, 8 MiB. */
void cpx_jsonarr_init(cpx_jsonarr_t *p, size_t max_elem);
/* Returns 0, CPX_EPARSE on bytes that cannot be a JSON array stream,
 * CPX_ELIMIT, CPX_ENOMEM, or the callback's non-zero value. */
int cpx_jsonarr_feed(cpx_jsonarr_t *p, const char *buf, size_t len,
                     cpx_jsonarr_cb cb, void *ud);
void cpx_jsonarr_free(cpx_jsonarr_t *p);

#endif /* CPX_SSE_H */
