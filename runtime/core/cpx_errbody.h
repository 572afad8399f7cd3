/* cpx_errbody.h: cliproxy's own error bodies, in the client's envelope.
 *
 * The Lua codecs (encode_error and stream_error in lua/translators) own the
 * envelopes; these functions build the same bytes in C for answers that
 * never reach Lua (the fast path, a failed Lua request, a parse error).
 */
#ifndef CPX_ERRBODY_H
#define CPX_ERRBODY_H

#include <stddef.h>

enum {
  CPX_FMT_OPENAI_CHAT = 0,
  CPX_FMT_OPENAI_RESPONSES,
  CPX_FMT_CLAUDE,
  CPX_FMT_GEMINI
};

/* The client's format from the request target (path, maybe with a query),
 * as lua/rt/server.lua format_for_path decides it. NULL gives OpenAI chat. */
int cpx_errbody_format(const char *path, size_t n);

/* Writes the error body for format fmt into out (NUL-terminated) and
 * returns its length, or a negative errno (-ENOBUFS when cap is too small,
 * -EINVAL for an unknown format). type is kept where the format's codec
 * knows it and code applies to OpenAI only; either may be NULL. What is not
 * kept is derived from status the way the codec does. msg is escaped; invalid
 * UTF-8 becomes U+FFFD so the body is always valid JSON. */
int cpx_errbody(char *out, size_t cap, int fmt, int status, const char *type,
                const char *code, const char *msg);

/* The same error as the codec's stream error event (after the first byte of
 * a stream). OpenAI responses uses the chat form: the fast path has no
 * response object to fail. */
int cpx_errbody_sse(char *out, size_t cap, int fmt, int status,
                    const char *type, const char *code, const char *msg);

/* Answering a request with these bodies: runtime/net/cpx_errreply.h. */

#endif /* CPX_ERRBODY_H */
