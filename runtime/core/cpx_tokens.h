/* cpx_tokens.h: tiktoken-compatible BPE token counting (o200k_base and
 * cl100k_base), bit-exact with tiktoken's encode_ordinary.
 *
 * Encodings load lazily on first use from the rank files in the data
 * directory (verified by sha256) and are shared read-only by all threads
 * afterwards; loading is serialised internally.
 */
#ifndef CPX_TOKENS_H
#define CPX_TOKENS_H

#include <stddef.h>
#include <stdint.h>

/* Directory holding <encoding>.tiktoken files. Set once at start-up before
 * any count; defaults to the first of $CPX_DATA_DIR, the source tree's data/
 * and the install data dir that exists. */
void cpx_tokens_set_data_dir(const char *dir);

/* Counts the tokens of text (any bytes; invalid UTF-8 is counted as tiktoken
 * counts its bytes). Returns 0 and sets *count, or a negative code
 * (CPX_EINVAL for an unknown encoding, CPX_EIO when the rank file is missing
 * or its sha256 does not match). */
int cpx_tokens_count(const char *encoding, const char *text, size_t len,
                     size_t *count);

/* Encodes into a malloc'd array of token ids (for tests and tools). */
int cpx_tokens_encode(const char *encoding, const char *text, size_t len,
                      uint32_t **ids, size_t *n);

/* `cliproxy tokens --encoding NAME [FILE]`: prints the count. Returns the
 * process exit code. */
int cpx_tokens_cli(int argc, char **argv);

/* Fills buf with why `encoding` cannot be used after rc was returned by
 * cpx_tokens_count (an unknown name, the rank file's load error). */
void cpx_tokens_describe_error(const char *encoding, int rc, char *buf,
                               size_t len);

/* Milliseconds the encoding's rank file took to read, verify and index
 * (loading it first if needed), or -1 when it cannot be loaded. */
double cpx_tokens_load_ms(const char *encoding);

/* Internal, for the tests: pieces longer than this many bytes use the
 * O(n log n) heap merge instead of tiktoken's quadratic scan. */
extern size_t cpx__tokens_heap_min;

/* Internal, for the benchmark: runs only the pre-tokeniser and sets the
 * number of pieces (text must be valid UTF-8, else CPX_EINVAL). */
int cpx__tokens_pieces(const char *encoding, const char *text, size_t len,
                       size_t *npieces);

#endif /* CPX_TOKENS_H */
