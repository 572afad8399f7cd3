/* fuzz.h: what the fuzz targets share.
 *
 * Each runtime/fuzz/fuzz_<target>.c defines LLVMFuzzerTestOneInput. Built
 * with clang and -DCPX_FUZZ=ON they link libFuzzer (scripts/fuzz.sh runs
 * them); in every other build they link replay.c, whose main() runs the
 * checked-in corpus spec/fuzz/corpus/<target>/ through the same function,
 * so ctest replays every past finding and seed on each run.
 *
 * A target reports a finding by aborting (FUZZ_CHECK): libFuzzer then saves
 * the input, and the replay exits non-zero naming the file.
 */
#ifndef CPX_FUZZ_H
#define CPX_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond, ...)                                                  \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz finding at %s:%d: %s: ", __FILE__, __LINE__,       \
              #cond);                                                          \
      fprintf(stderr, __VA_ARGS__);                                            \
      fputc('\n', stderr);                                                     \
      abort();                                                                 \
    }                                                                          \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif /* CPX_FUZZ_H */
