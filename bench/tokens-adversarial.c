/* tokens-adversarial: cliproxy's tokenizer on each file named, timed;
 * prints the same lines as bench/tokens-adversarial.mjs run.
 *
 *   tokens-adversarial DATA_DIR RUNS FILE...
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpx_tokens.h"

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  char *buf;
  long sz;
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  buf = malloc((size_t)sz + 1);
  if (buf && fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *n = (size_t)sz;
  return buf;
}

int main(int argc, char **argv) {
  static const char *encs[] = {"o200k_base", "cl100k_base"};
  if (argc < 4) {
    fprintf(stderr, "usage: %s DATA_DIR RUNS FILE...\n", argv[0]);
    return 2;
  }
  cpx_tokens_set_data_dir(argv[1]);
  int runs = atoi(argv[2]);
  if (runs < 1)
    runs = 1;
  double *t = calloc((size_t)runs, sizeof(double));
  for (int e = 0; e < 2; e++) {
    size_t count = 0;
    if (cpx_tokens_count(encs[e], "x", 1, &count) != 0) { /* load */
      fprintf(stderr, "cannot load %s\n", encs[e]);
      return 1;
    }
    for (int f = 3; f < argc; f++) {
      size_t n;
      char *s = slurp(argv[f], &n);
      if (!s) {
        fprintf(stderr, "cannot read %s\n", argv[f]);
        return 1;
      }
      for (int r = 0; r < runs; r++) {
        double t0 = now_ms();
        cpx_tokens_count(encs[e], s, n, &count);
        t[r] = now_ms() - t0;
      }
      qsort(t, (size_t)runs, sizeof(double), cmp_d);
      const char *base = strrchr(argv[f], '/');
      base = base ? base + 1 : argv[f];
      printf("adv %.*s %s bytes=%zu tokens=%zu median_ms=%.3f\n",
             (int)(strlen(base) - 4), base, encs[e], n, count, t[runs / 2]);
      free(s);
    }
  }
  free(t);
  return 0;
}
