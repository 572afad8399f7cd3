/* cpx_buf.c: see cpx_buf.h. */
#include "cpx_buf.h"

#include <stdlib.h>
#include <string.h>

#include "cpx.h"

int cpx_buf_append(char **buf, size_t *len, size_t *cap, const char *p,
                   size_t n) {
  if (*len + n + 1 > *cap) {
    size_t nc = *cap ? *cap : 512;
    while (nc < *len + n + 1)
      nc *= 2;
    char *nb = realloc(*buf, nc);
    if (!nb)
      return CPX_ENOMEM;
    *buf = nb;
    *cap = nc;
  }
  memcpy(*buf + *len, p, n);
  *len += n;
  (*buf)[*len] = '\0';
  return 0;
}
