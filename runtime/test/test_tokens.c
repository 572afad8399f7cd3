/* test_tokens.c: the tokenizer against tiktoken's own outputs.
 *
 * Reference data, all produced by tiktoken (npm `tiktoken`, encode_ordinary)
 * or checked against it:
 *   - spec/fixtures/tokens/TestPlans.txt: gpt-tokenizer's vectors (ids);
 *   - spec/fixtures/tokens/cases.txt: counts and id hashes written by
 *     spec/fixtures/tokens/gen.mjs (fixed, adversarial and fuzz texts, every
 *     code point of planes 0-3 and 14, the 1 MiB corpus);
 *   - the table of the tokenizer fact sheet, inlined below.
 *
 * With CPX_TOKENS_BENCH=N in the environment the test also times N runs of
 * the corpus and of the 100 KB one-letter worst case and prints the medians
 * (bench/tokens.sh uses it).
 */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>
#include <openssl/evp.h>

#include "cpx.h"
#include "cpx_test.h"
#include "cpx_bindings.h"
#include "cpx_tokens.h"

#define FIXTURES "spec/fixtures/tokens/"

static const char *const ENCS[2] = {"o200k_base", "cl100k_base"};

static char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long sz = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)sz + 1);
  if (buf && fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  if (buf) {
    buf[sz] = '\0';
    *n = (size_t)sz;
  }
  return buf;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* sha256 of the ids as little-endian uint32, hex (as gen.mjs computes). */
static void ids_sha(const uint32_t *ids, size_t n, char hex[65]) {
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
  for (size_t i = 0; i < n; i++) {
    unsigned char b[4] = {(unsigned char)ids[i], (unsigned char)(ids[i] >> 8),
                          (unsigned char)(ids[i] >> 16),
                          (unsigned char)(ids[i] >> 24)};
    EVP_DigestUpdate(ctx, b, 4);
  }
  unsigned char md[32];
  EVP_DigestFinal_ex(ctx, md, NULL);
  EVP_MD_CTX_free(ctx);
  for (int i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

/* Checks encode and count of text against tiktoken's count and id hash. */
static void check_text(const char *name, int enc, const char *text, size_t len,
                       size_t want_count, const char *want_sha) {
  uint32_t *ids = NULL;
  size_t n = 0, count = 0;
  int rc = cpx_tokens_encode(ENCS[enc], text, len, &ids, &n);
  CPX_CHECK_INT(rc, 0);
  CPX_CHECK_INT(cpx_tokens_count(ENCS[enc], text, len, &count), 0);
  char hex[65] = "";
  if (rc == 0)
    ids_sha(ids, n, hex);
  if (n != want_count || count != want_count || strcmp(hex, want_sha) != 0) {
    fprintf(stderr, "  %s/%s: got %zu ids (count %zu), want %zu%s\n", name,
            ENCS[enc], n, count, want_count,
            strcmp(hex, want_sha) ? " (ids differ)" : "");
    cpx_t_case_failed = 1;
  }
  free(ids);
}

/* ---- error paths and loading ------------------------------------------- */

static void test_unknown_encoding(void) {
  size_t count;
  CPX_CHECK_INT(cpx_tokens_count("p50k_base", "x", 1, &count), CPX_EINVAL);
  CPX_CHECK_INT(cpx_tokens_count(NULL, "x", 1, &count), CPX_EINVAL);
}

/* Runs before anything else loads the encodings: a tampered rank file and
 * a missing one are refused, and a failed load is retried later. */
static void test_sha256_pin_and_retry(void) {
  char dir[] = "/tmp/cpx_tokens_XXXXXX";
  CPX_CHECK(mkdtemp(dir) != NULL);
  size_t n;
  char *good = slurp("data/cl100k_base.tiktoken", &n);
  CPX_CHECK(good != NULL);
  if (!good)
    return;
  good[100] ^= 1; /* one flipped bit in an otherwise valid file */
  char path[256];
  snprintf(path, sizeof(path), "%s/cl100k_base.tiktoken", dir);
  FILE *f = fopen(path, "wb");
  fwrite(good, 1, n, f);
  fclose(f);
  free(good);

  size_t count = 99;
  cpx_tokens_set_data_dir(dir);
  CPX_CHECK_INT(cpx_tokens_count("cl100k_base", "hi", 2, &count), CPX_EIO);
  CPX_CHECK_INT(count, 99);
  CPX_CHECK_INT(cpx_tokens_count("o200k_base", "hi", 2, &count), CPX_EIO);

  /* The Lua binding reports why. */
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_newtable(L);
  cpx_tokens_lua_register(L);
  lua_setglobal(L, "cpx");
  CPX_CHECK_INT(luaL_dostring(L, "local n, err = cpx.tokens.count('hi', "
                                 "'cl100k_base'); assert(n == nil); "
                                 "return err"),
                0);
  const char *err = lua_tostring(L, -1);
  CPX_CHECK(err && strstr(err, "sha256") && strstr(err, "does not match"));
  lua_close(L);

  unlink(path);
  rmdir(dir);
  cpx_tokens_set_data_dir(NULL); /* back to the default: the source tree */
  CPX_CHECK_INT(cpx_tokens_count("cl100k_base", "hello world", 11, &count), 0);
  CPX_CHECK_INT(count, 2);
}

static size_t concurrent_counts[4];

static void *count_thread(void *arg) {
  size_t *out = arg;
  static const char text[] = "Loading is serialised; counting is parallel.";
  if (cpx_tokens_count("o200k_base", text, sizeof(text) - 1, out) < 0)
    *out = 0;
  return NULL;
}

/* First use from several threads at once: one load, same answers. */
static void test_concurrent_first_load(void) {
  pthread_t t[4];
  for (int i = 0; i < 4; i++)
    pthread_create(&t[i], NULL, count_thread, &concurrent_counts[i]);
  for (int i = 0; i < 4; i++)
    pthread_join(t[i], NULL);
  for (int i = 0; i < 4; i++)
    CPX_CHECK_INT(concurrent_counts[i], 9); /* tiktoken: 9 */
  double ms = cpx_tokens_load_ms("o200k_base");
  printf("load: o200k_base %.1f ms, cl100k_base %.1f ms\n", ms,
         cpx_tokens_load_ms("cl100k_base"));
  CPX_CHECK(ms > 0 && ms < 5000);
}

/* ---- reference vectors ------------------------------------------------- */

typedef struct {
  const char *text;
  uint32_t ids[2][16]; /* o200k, cl100k; 0-terminated (no vector has id 0
                          except where noted by the count) */
  size_t n[2];
} ref_t;

/* The fact sheet's table (section 6.3), measured with tiktoken. */
static const ref_t REFS[] = {
    {"hello world", {{24912, 2375}, {15339, 1917}}, {2, 2}},
    {"Hello, World! How are you today? \xF0\x9F\x8C\x8D",
     {{13225, 11, 5922, 0, 3253, 553, 481, 4044, 30, 130321, 235},
      {9906, 11, 4435, 0, 2650, 527, 499, 3432, 30, 11410, 234, 235}},
     {11, 12}},
    {"  leading spaces\r\n\r\nCRLF",
     {{220, 8117, 18608, 1414, 7027, 38933},
      {220, 6522, 12908, 881, 34, 81758}},
     {6, 6}},
    {"int main(void){return 0;}\n",
     {{491, 2758, 10218, 12443, 1034, 220, 15, 26586},
      {396, 1925, 4431, 6226, 693, 220, 15, 12355}},
     {8, 8}},
    {"I'm  don't  IT'S",
     {{15390, 220, 4128, 220, 8734, 31233},
      {40, 2846, 220, 1541, 956, 220, 8871, 13575}},
     {6, 8}},
    {"12345678", {{7633, 19354, 4388}, {4513, 10961, 2495}}, {3, 3}},
};

static void test_reference_table(void) {
  for (size_t r = 0; r < sizeof(REFS) / sizeof(REFS[0]); r++) {
    for (int e = 0; e < 2; e++) {
      uint32_t *ids;
      size_t n;
      CPX_CHECK_INT(cpx_tokens_encode(ENCS[e], REFS[r].text,
                                      strlen(REFS[r].text), &ids, &n),
                    0);
      CPX_CHECK_INT(n, REFS[r].n[e]);
      for (size_t i = 0; i < n && i < REFS[r].n[e]; i++)
        CPX_CHECK_INT(ids[i], REFS[r].ids[e][i]);
      free(ids);
    }
  }
  /* Special tokens are ordinary text: several tokens, not 199999/100257. */
  size_t count;
  CPX_CHECK_INT(cpx_tokens_count("o200k_base", "<|endoftext|>", 13, &count), 0);
  CPX_CHECK(count > 1);
  CPX_CHECK_INT(cpx_tokens_count("cl100k_base", "<|endoftext|>", 13, &count),
                0);
  CPX_CHECK(count > 1);
  /* Empty text: zero tokens, NULL allowed. */
  CPX_CHECK_INT(cpx_tokens_count("o200k_base", NULL, 0, &count), 0);
  CPX_CHECK_INT(count, 0);
}

/* Every cl100k_base and o200k_base vector of gpt-tokenizer's TestPlans. */
static void test_testplans(void) {
  size_t n;
  char *buf = slurp(FIXTURES "TestPlans.txt", &n);
  CPX_CHECK(buf != NULL);
  if (!buf)
    return;
  int checked = 0;
  char *save = NULL;
  char *lines[3] = {0};
  int nl = 0;
  /* Blocks of "EncodingName: X\nSample: S\nEncoded: [ids]\n\n". */
  for (char *p = buf; p && *p;) {
    char *eol = strchr(p, '\n');
    if (eol)
      *eol = '\0';
    if (strncmp(p, "EncodingName: ", 14) == 0)
      nl = 0;
    if (nl < 3)
      lines[nl++] = p;
    if (nl == 3 && strncmp(lines[2], "Encoded: [", 10) == 0) {
      nl = 4;
      const char *name = lines[0] + 14;
      int e = strcmp(name, "o200k_base") == 0    ? 0
              : strcmp(name, "cl100k_base") == 0 ? 1
                                                 : -1;
      if (e >= 0) {
        const char *sample = lines[1] + 8;
        uint32_t *ids;
        size_t got;
        CPX_CHECK_INT(
            cpx_tokens_encode(ENCS[e], sample, strlen(sample), &ids, &got), 0);
        size_t k = 0;
        int same = 1;
        for (char *q = strtok_r(lines[2] + 10, ", ]", &save); q;
             q = strtok_r(NULL, ", ]", &save), k++)
          if (k >= got || ids[k] != strtoul(q, NULL, 10))
            same = 0;
        if (!same || k != got) {
          fprintf(stderr, "  %s: '%s': %zu ids, want %zu\n", name, sample, got,
                  k);
          cpx_t_case_failed = 1;
        }
        free(ids);
        checked++;
      }
    }
    p = eol ? eol + 1 : NULL;
  }
  CPX_CHECK_INT(checked, 121); /* 64 cl100k + 57 o200k */
  free(buf);
}

/* ---- cases.txt --------------------------------------------------------- */

/* The text gen.mjs builds for the "allcp" record: per code point C,
 * C ctx "x" C "'s\n". */
static char *allcp_text(size_t *len) {
  static const char *const ctx[8] = {"",  "a",  "A's",  " ",
                                     "1", "\n", "x'LL", "Z"};
  size_t cap = 32 << 20, n = 0;
  char *s = malloc(cap);
  for (uint32_t cp = 0; cp < 0xE1000; cp++) {
    if ((cp >= 0xD800 && cp < 0xE000) || (cp >= 0x40000 && cp < 0xE0000))
      continue;
    size_t start = n;
    if (cp < 0x80) {
      s[n++] = (char)cp;
    } else if (cp < 0x800) {
      s[n++] = (char)(0xC0 | cp >> 6);
      s[n++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s[n++] = (char)(0xE0 | cp >> 12);
      s[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
      s[n++] = (char)(0x80 | (cp & 0x3F));
    } else {
      s[n++] = (char)(0xF0 | cp >> 18);
      s[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
      s[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
      s[n++] = (char)(0x80 | (cp & 0x3F));
    }
    size_t l = strlen(ctx[cp % 8]), cl = n - start;
    memcpy(s + n, ctx[cp % 8], l);
    n += l;
    s[n++] = 'x';
    memmove(s + n, s + start, cl);
    n += cl;
    memcpy(s + n, "'s\n", 3);
    n += 3;
  }
  *len = n;
  return s;
}

static int n_cases, n_files;

static void test_cases_file(void) {
  size_t n;
  char *buf = slurp(FIXTURES "cases.txt", &n);
  CPX_CHECK(buf != NULL);
  if (!buf)
    return;
  char *p = buf, *end = buf + n;
  while (p < end) {
    char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol)
      break;
    *eol = '\0';
    char kind[16], name[128], arg[256], sha[2][65];
    size_t a1 = 0, a2 = 0, cnt[2];
    if (strncmp(p, "case ", 5) == 0 &&
        sscanf(p, "%15s %127s %zu %zu %zu %64s %zu %64s", kind, name, &a1, &a2,
               &cnt[0], sha[0], &cnt[1], sha[1]) == 8) {
      /* a1 = repeat, a2 = raw byte length; the bytes follow the line. */
      const char *raw = eol + 1;
      CPX_CHECK(raw + a2 < end);
      if (raw + a2 >= end)
        break;
      char *text = malloc(a1 * a2 + 1);
      for (size_t r = 0; r < a1; r++)
        memcpy(text + r * a2, raw, a2);
      for (int e = 0; e < 2; e++)
        check_text(name, e, text, a1 * a2, cnt[e], sha[e]);
      free(text);
      n_cases++;
      p = (char *)raw + a2 + 1;
      continue;
    }
    if (sscanf(p, "%15s %127s %255s %zu %64s %zu %64s", kind, name, arg,
               &cnt[0], sha[0], &cnt[1], sha[1]) == 7) {
      size_t len = 0;
      char *text = strcmp(kind, "allcp") == 0  ? allcp_text(&len)
                   : strcmp(kind, "file") == 0 ? slurp(arg, &len)
                                               : NULL;
      CPX_CHECK(text != NULL);
      if (text) {
        for (int e = 0; e < 2; e++)
          check_text(strcmp(kind, "allcp") == 0 ? kind : name, e, text, len,
                     cnt[e], sha[e]);
        n_files++;
      }
      free(text);
    } else {
      fprintf(stderr, "  cases.txt: bad line '%.60s'\n", p);
      cpx_t_case_failed = 1;
    }
    p = eol + 1;
  }
  /* 27 fixed + 13 adversarial + 400 fuzz, plus allcp and the corpus. */
  CPX_CHECK_INT(n_cases, 440);
  CPX_CHECK_INT(n_files, 2);
  free(buf);
}

/* ---- merge strategies, worst case -------------------------------------- */

/* The heap merge and tiktoken's scan must agree token for token. */
static void test_heap_matches_scan(void) {
  size_t n;
  char *corpus = slurp(FIXTURES "corpus.txt", &n);
  CPX_CHECK(corpus != NULL);
  if (!corpus)
    return;
  /* Long single pieces of several kinds, and a slice of ordinary text. */
  char *texts[5];
  size_t lens[5];
  texts[0] = malloc(4000);
  memset(texts[0], 'a', 4000);
  lens[0] = 4000;
  texts[1] = malloc(4000);
  uint32_t x = 12345;
  for (int i = 0; i < 4000; i++) {
    x = x * 1103515245u + 12345u;
    texts[1][i] = (char)('a' + (x >> 16) % 26);
  }
  lens[1] = 4000;
  texts[2] = malloc(4000);
  for (int i = 0; i < 4000; i += 4)
    memcpy(texts[2] + i, "\xF0\x9F\x8C\x8D", 4);
  lens[2] = 4000;
  texts[3] = malloc(3999);
  for (int i = 0; i < 3999; i += 3)
    memcpy(texts[3] + i, "\xE5\xAD\x97", 3);
  lens[3] = 3999;
  texts[4] = corpus;
  lens[4] = n < 200000 ? n : 200000;
  size_t saved = cpx__tokens_heap_min;
  for (int t = 0; t < 5; t++) {
    for (int e = 0; e < 2; e++) {
      uint32_t *a, *b;
      size_t na, nb;
      cpx__tokens_heap_min = 1; /* every multi-byte miss uses the heap */
      CPX_CHECK_INT(cpx_tokens_encode(ENCS[e], texts[t], lens[t], &a, &na), 0);
      cpx__tokens_heap_min = 4096; /* every piece uses the scan */
      CPX_CHECK_INT(cpx_tokens_encode(ENCS[e], texts[t], lens[t], &b, &nb), 0);
      CPX_CHECK_INT(na, nb);
      CPX_CHECK(na == nb && memcmp(a, b, na * sizeof(uint32_t)) == 0);
      free(a);
      free(b);
    }
  }
  cpx__tokens_heap_min = saved;
  for (int t = 0; t < 5; t++)
    free(texts[t]);
}

/* 100 KB of one letter is one piece: it must not take seconds. */
static void test_worst_case_time(void) {
  size_t len = 100000;
  char *s = malloc(len);
  memset(s, 'a', len);
  for (int e = 0; e < 2; e++) {
    size_t count = 0;
    double t0 = now_ms();
    CPX_CHECK_INT(cpx_tokens_count(ENCS[e], s, len, &count), 0);
    double ms = now_ms() - t0;
    printf("worst case: 'a' x 100000, %s: %zu tokens in %.1f ms\n", ENCS[e],
           count, ms);
    CPX_CHECK(count > 0 && count < len);
    CPX_CHECK(ms < 1000); /* generous for sanitizer builds */
  }
  free(s);
}

/* ---- Lua and CLI ------------------------------------------------------- */

static void test_lua_binding(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  lua_newtable(L);
  cpx_tokens_lua_register(L);
  lua_setglobal(L, "cpx");
  const char *script =
      "assert(cpx.tokens.count('hello world', 'o200k_base') == 2)\n"
      "assert(cpx.tokens.count('hello world', 'cl100k_base') == 2)\n"
      "assert(cpx.tokens.count('hello world') == 2)\n"
      "assert(cpx.tokens.count('') == 0)\n"
      "assert(cpx.tokens.count('\\255\\254', 'o200k_base') > 0)\n"
      "local n, err = cpx.tokens.count('x', 'gpt2')\n"
      "assert(n == nil and err:find('unknown encoding'))\n"
      "assert(not pcall(cpx.tokens.count, nil))\n";
  int rc = luaL_dostring(L, script);
  if (rc)
    fprintf(stderr, "  lua: %s\n", lua_tostring(L, -1));
  CPX_CHECK_INT(rc, 0);
  lua_close(L);
}

/* Runs the CLI with stdout redirected to a file; returns the exit code. */
static int run_cli(int argc, char **argv, char *out, size_t outlen) {
  char path[] = "/tmp/cpx_tokens_cli_XXXXXX";
  int fd = mkstemp(path);
  fflush(stdout);
  int saved = dup(1);
  dup2(fd, 1);
  int rc = cpx_tokens_cli(argc, argv);
  fflush(stdout);
  dup2(saved, 1);
  close(saved);
  lseek(fd, 0, SEEK_SET);
  ssize_t r = read(fd, out, outlen - 1);
  out[r > 0 ? r : 0] = '\0';
  close(fd);
  unlink(path);
  return rc;
}

static void test_cli(void) {
  char out[64];
  char *a1[] = {"tokens", "--encoding", "cl100k_base", FIXTURES "corpus.txt",
                NULL};
  CPX_CHECK_INT(run_cli(4, a1, out, sizeof(out)), 0);
  CPX_CHECK_STR(out, "284131\n");
  char *a2[] = {"tokens", "--encoding=o200k_base", FIXTURES "corpus.txt", NULL};
  CPX_CHECK_INT(run_cli(3, a2, out, sizeof(out)), 0);
  CPX_CHECK_STR(out, "286637\n");
  char *a3[] = {"tokens", "--encoding", "nope", FIXTURES "corpus.txt", NULL};
  CPX_CHECK_INT(run_cli(4, a3, out, sizeof(out)), 1);
  char *a4[] = {"tokens", "/nonexistent/file", NULL};
  CPX_CHECK_INT(run_cli(2, a4, out, sizeof(out)), 1);
  char *a5[] = {"tokens", "--bogus", NULL};
  CPX_CHECK_INT(run_cli(2, a5, out, sizeof(out)), 2);
}

/* ---- optional benchmark ------------------------------------------------ */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void bench(int runs) {
  size_t n;
  char *corpus = slurp(FIXTURES "corpus.txt", &n);
  char *worst = malloc(100000);
  memset(worst, 'a', 100000);
  double *t = malloc(sizeof(double) * (size_t)runs);
  for (int e = 0; e < 2; e++) {
    size_t count = 0;
    for (int r = 0; r < runs; r++) {
      double t0 = now_ms();
      cpx_tokens_count(ENCS[e], corpus, n, &count);
      t[r] = now_ms() - t0;
    }
    qsort(t, (size_t)runs, sizeof(double), cmp_double);
    double med = t[runs / 2];
    printf("bench c %s corpus tokens=%zu bytes=%zu median_ms=%.2f "
           "tokens_per_s=%.0f\n",
           ENCS[e], count, n, med, count / (med / 1e3));
    for (int r = 0; r < runs; r++) {
      double t0 = now_ms();
      cpx_tokens_count(ENCS[e], worst, 100000, &count);
      t[r] = now_ms() - t0;
    }
    qsort(t, (size_t)runs, sizeof(double), cmp_double);
    printf("bench c %s worst_a_100k tokens=%zu median_ms=%.2f\n", ENCS[e],
           count, t[runs / 2]);
  }
  free(t);
  free(worst);
  free(corpus);
}

int main(void) {
  CPX_TEST_RUN(test_unknown_encoding);
  CPX_TEST_RUN(test_sha256_pin_and_retry);
  CPX_TEST_RUN(test_concurrent_first_load);
  CPX_TEST_RUN(test_reference_table);
  CPX_TEST_RUN(test_testplans);
  CPX_TEST_RUN(test_cases_file);
  CPX_TEST_RUN(test_heap_matches_scan);
  CPX_TEST_RUN(test_worst_case_time);
  CPX_TEST_RUN(test_lua_binding);
  CPX_TEST_RUN(test_cli);
  const char *b = getenv("CPX_TOKENS_BENCH");
  if (b && atoi(b) > 0)
    bench(atoi(b));
  CPX_TEST_DONE();
}
