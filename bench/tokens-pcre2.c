/* tokens-pcre2.c: pre-tokenisation only, cliproxy's hand-written matcher
 * against PCRE2 (UTF + UCP, JIT) running tiktoken's regex verbatim, on the
 * same text. Built and run by bench/tokens.sh when libpcre2-dev is present:
 * it is the measurement behind the choice of a hand-written matcher.
 *
 *   tokens-pcre2 FILE RUNS
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpx_tokens.h"

static const char *const PATTERNS[2][2] = {
    {"o200k_base",
     "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{"
     "Lm}"
     "\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{"
     "Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|"
     "'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/"
     "]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
    {"cl100k_base",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
     "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: tokens-pcre2 FILE RUNS\n");
    return 2;
  }
  FILE *f = fopen(argv[1], "rb");
  if (!f) {
    perror(argv[1]);
    return 1;
  }
  static char buf[16 << 20];
  size_t n = fread(buf, 1, sizeof(buf), f);
  fclose(f);
  int runs = atoi(argv[2]);
  double *t = malloc(sizeof(double) * (size_t)runs);
  for (int e = 0; e < 2; e++) {
    int err;
    PCRE2_SIZE erroff;
    pcre2_code *re =
        pcre2_compile((PCRE2_SPTR)PATTERNS[e][1], PCRE2_ZERO_TERMINATED,
                      PCRE2_UTF | PCRE2_UCP, &err, &erroff, NULL);
    if (!re) {
      fprintf(stderr, "pcre2_compile failed at %zu\n", (size_t)erroff);
      return 1;
    }
    int jit = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    size_t pieces = 0;
    for (int r = 0; r < runs; r++) {
      double t0 = now_ms();
      size_t off = 0;
      pieces = 0;
      while (off < n) {
        int rc = jit ? pcre2_jit_match(re, (PCRE2_SPTR)buf, n, off, 0, md, NULL)
                     : pcre2_match(re, (PCRE2_SPTR)buf, n, off, 0, md, NULL);
        if (rc < 0)
          break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        off = ov[1] > off ? ov[1] : off + 1;
        pieces++;
      }
      t[r] = now_ms() - t0;
    }
    qsort(t, (size_t)runs, sizeof(double), cmp_double);
    double pcre_ms = t[runs / 2];
    size_t ours = 0;
    cpx_tokens_count(PATTERNS[e][0], "", 0, &ours); /* load outside timing */
    for (int r = 0; r < runs; r++) {
      double t0 = now_ms();
      cpx__tokens_pieces(PATTERNS[e][0], buf, n, &ours);
      t[r] = now_ms() - t0;
    }
    qsort(t, (size_t)runs, sizeof(double), cmp_double);
    printf("pretokenise %s: pcre2%s %.2f ms (%zu pieces, %.0f MB/s), "
           "cliproxy %.2f ms (%zu pieces, %.0f MB/s): %.1fx\n",
           PATTERNS[e][0], jit ? "-jit" : "", pcre_ms, pieces,
           n / pcre_ms / 1e3, t[runs / 2], ours, n / t[runs / 2] / 1e3,
           pcre_ms / t[runs / 2]);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
  }
  free(t);
  return 0;
}
