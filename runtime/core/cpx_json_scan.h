/* cpx_json_scan.h: the C side of the passthrough scanner (cpx_json_scan.c).
 * Used by the fast path (cpx_lane.c) to read "model" and "stream" and to
 * spot an error event without decoding anything. */
#ifndef CPX_JSON_SCAN_H
#define CPX_JSON_SCAN_H

#include "cpx.h"

/* One top-level member of a scanned object: pointers into the document. */
typedef struct {
  const char *kp; /* key bytes (without quotes) */
  size_t kn;
  const char *vp; /* value bytes as written */
  size_t vn;
} cpx_json_member_t;

/* Called per top-level member in document order; a non-zero return stops
 * the scan (cpx_json_scan_top then returns 0). */
typedef int (*cpx_json_member_cb)(void *ud, const cpx_json_member_t *m);

/* Walks the top-level object of s: its keys, values, commas and colons;
 * below the top level only balanced brackets and terminated strings (the
 * scalars are the upstream's to check). Returns 0 with *close_brace at the
 * object's closing brace (unset when cb stopped the scan), or CPX_EPARSE
 * with *at set to the failing offset. cb may be NULL. */
int cpx_json_scan_top(const char *s, size_t n, cpx_json_member_cb cb, void *ud,
                      size_t *at, const char **close_brace);
/* p at a string's opening quote: the byte after its closing quote (the
 * first quote not after an odd run of backslashes), or NULL. */
const char *cpx_json_skip_string(const char *p, const char *end);
/* JSON whitespace: space, tab, LF, CR. */
static inline int cpx_json_is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
/* The first byte at or after p that is not JSON whitespace (or end). */
const char *cpx_json_skip_ws(const char *p, const char *end);

/* Checks the structure of the object in s (as cpx.json.peek does) and
 * finds top-level keys: vals[i] is the value of keys[i] exactly as written
 * (a string keeps its quotes), or {NULL, 0} when absent. With duplicate
 * keys the last one wins (as in set_string). Returns 0 or CPX_EPARSE. */
int cpx_json_top_get(const char *s, size_t n, const cpx_str_t *keys,
                     cpx_str_t *vals, size_t nkeys);

/* The format (CPX_FMT_* of cpx_errbody.h) of rt's name for it
 * ("openai_chat", "openai_responses", "claude", "gemini") n bytes at s,
 * or -1. */
int cpx_fmt_parse(const char *s, size_t n);
const char *cpx_fmt_name(int fmt);

/* What the first events of an upstream stream say, per format. The one
 * owner of the rule: the C relay (cpx_lane.c) calls it while it holds a
 * stream, rt.pipeline's bootstrap through cpx.json.first_event. */
enum {
  CPX_EV_REAL = 0,      /* the first real event, not an error */
  CPX_EV_ERROR = 1,     /* an error: the stream failed before it began */
  CPX_EV_HANDSHAKE = 2, /* only opens the stream: look at the next one */
};
int cpx_stream_event_kind(int fmt, const char *event, size_t event_len,
                          const char *data, size_t data_len);

#endif /* CPX_JSON_SCAN_H */
