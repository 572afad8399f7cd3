/* fuzz_tokens: the BPE tokenizer on any bytes (invalid UTF-8 included):
 * counting and encoding agree, for both encodings, and every id is a rank
 * of the vocabulary. */
#include "cpx_tokens.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *enc[] = {"o200k_base", "cl100k_base"};
  static int init;
  if (!init) {
    cpx_tokens_set_data_dir(CPX_SOURCE_DIR "/data");
    init = 1;
  }
  for (int e = 0; e < 2; e++) {
    size_t count = 0, n = 0;
    uint32_t *ids = NULL;
    int rc = cpx_tokens_count(enc[e], (const char *)data, size, &count);
    FUZZ_CHECK(rc == 0, "%s: count rc %d", enc[e], rc);
    rc = cpx_tokens_encode(enc[e], (const char *)data, size, &ids, &n);
    FUZZ_CHECK(rc == 0, "%s: encode rc %d", enc[e], rc);
    FUZZ_CHECK(n == count, "%s: encode gave %zu ids, count %zu", enc[e], n,
               count);
    FUZZ_CHECK(size == 0 || n > 0, "%s: no token for %zu bytes", enc[e], size);
    FUZZ_CHECK(n <= size, "%s: %zu tokens for %zu bytes", enc[e], n, size);
    for (size_t i = 0; i < n; i++)
      FUZZ_CHECK(ids[i] < 300000, "%s: id %u", enc[e], ids[i]);
    free(ids);
  }
  return 0;
}
