/* cpx_buf.c: see cpx_buf.h. */
#include "cpx_buf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpx.h"

int cpx_buf_reserve(char **buf, size_t len, size_t *cap, size_t extra) {
  size_t need = len + extra + 1, nc;
  char *nb;
  if (need < len) /* overflow */
    return CPX_ENOMEM;
  if (need <= *cap)
    return 0;
  nc = *cap ? *cap : 512;
  while (nc < need) {
    if (nc > SIZE_MAX / 2)
      return CPX_ENOMEM;
    nc *= 2;
  }
  nb = realloc(*buf, nc);
  if (!nb)
    return CPX_ENOMEM;
  *buf = nb;
  *cap = nc;
  return 0;
}

int cpx_buf_append(char **buf, size_t *len, size_t *cap, const char *p,
                   size_t n) {
  if (cpx_buf_reserve(buf, *len, cap, n) != 0)
    return CPX_ENOMEM;
  memcpy(*buf + *len, p, n);
  *len += n;
  (*buf)[*len] = '\0';
  return 0;
}
