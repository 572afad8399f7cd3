/* cpx_usage_scan.h: the token usage of an answer the C relay served, read
 * from the first and last bytes it relayed (cpx_lane_record_t's head and
 * tail) without decoding the answer.
 *
 * The same rule as rt.record's Lua readers (usage_from_stream, tail_usage
 * and each codec's usage_in): spec/record_native_spec.lua runs both on the
 * same answers and compares the counts. It exists so that a relayed
 * request's record needs no Lua when only the built-in subscribers
 * listen (cpx_lane_lua.c).
 */
#ifndef CPX_USAGE_SCAN_H
#define CPX_USAGE_SCAN_H

#include <stddef.h>

#include "cpx.h"

/* rt.record's usage kinds, in its order. */
enum {
  CPX_UK_INPUT = 0,
  CPX_UK_OUTPUT,
  CPX_UK_REASONING,
  CPX_UK_CACHE_READ,
  CPX_UK_CACHE_WRITE,
  CPX_UK_N
};

/* fmt: CPX_FMT_* of the answer. bytes: head_len bytes of the head, then
 * tail_len of the tail (contiguous); gap: bytes were relayed between them;
 * stream: an SSE answer. out[CPX_UK_*] gets each count (0 when absent).
 * Returns 0, or CPX_ENOMEM (out is then all zero). */
int cpx_usage_scan(int fmt, const char *bytes, size_t head_len, size_t tail_len,
                   int gap, int stream, double out[CPX_UK_N]);

#endif /* CPX_USAGE_SCAN_H */
