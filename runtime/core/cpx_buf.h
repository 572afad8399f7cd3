/* cpx_buf.h: the one growable byte buffer append (the request parser, the
 * server's pending input, the SSE framers, both upstream clients, the lane,
 * metrics and OTLP bodies, the JSON encoder, YAML key paths, rank files).
 * The caller owns *buf (free it). */
#ifndef CPX_BUF_H
#define CPX_BUF_H

#include <stddef.h>

/* Appends n bytes, keeping the buffer NUL-terminated; capacity doubles
 * from 512. Returns 0 or CPX_ENOMEM (the buffer is then unchanged). */
int cpx_buf_append(char **buf, size_t *len, size_t *cap, const char *p,
                   size_t n);

/* Makes room for extra more bytes after the first len (and a NUL after
 * them), growing the same way, for a writer that fills the space itself
 * (fread, an encoder). Returns 0 or CPX_ENOMEM (the buffer unchanged). */
int cpx_buf_reserve(char **buf, size_t len, size_t *cap, size_t extra);

#endif /* CPX_BUF_H */
