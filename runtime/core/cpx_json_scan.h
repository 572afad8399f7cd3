/* cpx_json_scan.h: the C side of the passthrough scanner (cpx_json_scan.c).
 * Used by the fast path (cpx_lane.c) to read "model" and "stream" and to
 * spot an error event without decoding anything. */
#ifndef CPX_JSON_SCAN_H
#define CPX_JSON_SCAN_H

#include "cpx.h"

/* Checks the structure of the object in s (as cpx.json.peek does) and
 * finds top-level keys: vals[i] is the value of keys[i] exactly as written
 * (a string keeps its quotes), or {NULL, 0} when absent. With duplicate
 * keys the last one wins (as in set_string). Returns 0 or CPX_EPARSE. */
int cpx_json_top_get(const char *s, size_t n, const cpx_str_t *keys,
                     cpx_str_t *vals, size_t nkeys);

#endif /* CPX_JSON_SCAN_H */
