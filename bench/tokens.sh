#!/usr/bin/env bash
# tokens.sh: cliproxy's C tokenizer against node's tiktoken (npm tiktoken
# 1.0.22, encode_ordinary) on the same 1 MiB corpus in one run, plus the
# worst case of 100 KB of one letter (a single pre-token piece), and the
# pre-tokeniser alone against PCRE2 (UTF+UCP, JIT) when libpcre2-dev is there.
#
#   bench/tokens.sh [RUNS]        (env: BUILD_DIR, TIKTOKEN_DIR, WORST_RUNS)
#
# Prints medians of RUNS (default 11) and the speed ratio per encoding.
# tiktoken's 100 KB worst case takes ~9 s a run, so WORST_RUNS defaults to 1.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-11}"
WORST_RUNS="${WORST_RUNS:-1}"
BUILD_DIR="${BUILD_DIR:-build}"
TIKTOKEN_DIR="${TIKTOKEN_DIR:-/tmp/tok/node_modules}"
CORPUS=spec/fixtures/tokens/corpus.txt
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if [ ! -d "$TIKTOKEN_DIR/tiktoken" ]; then
  echo "installing tiktoken@1.0.22 into $(dirname "$TIKTOKEN_DIR")" >&2
  npm install --silent --prefix "$(dirname "$TIKTOKEN_DIR")" tiktoken@1.0.22 >&2
fi

# The C side: test_tokens times itself under CPX_TOKENS_BENCH. Use the CMake
# build when there is one, else compile the two files directly (optimised
# like the RelWithDebInfo build).
flags=(-O2 -g -std=c11 -D_GNU_SOURCE "-DCPX_SOURCE_DIR=\"$PWD\"" -Iruntime
  $(pkg-config --cflags luajit))
libs=($(pkg-config --libs luajit libcrypto) -lpthread -lm -ldl)
if [ -x "$BUILD_DIR/test_tokens" ]; then
  cbin="$BUILD_DIR/test_tokens"
else
  cc "${flags[@]}" runtime/core/cpx_tokens.c runtime/test/test_tokens.c \
    -o "$tmp/test_tokens" "${libs[@]}"
  cbin="$tmp/test_tokens"
fi

echo "== cliproxy C ($cbin), $RUNS runs"
CPX_TOKENS_BENCH="$RUNS" "$cbin" 2>/dev/null | grep -E '^(bench|load)' | tee "$tmp/c.txt"
echo "== node tiktoken ($TIKTOKEN_DIR), $RUNS runs, worst case $WORST_RUNS"
TIKTOKEN_DIR="$TIKTOKEN_DIR" node bench/tokens-node.mjs "$CORPUS" "$RUNS" "$WORST_RUNS" |
  tee "$tmp/node.txt"

echo "== summary"
for enc in o200k_base cl100k_base; do
  c=$(awk -v e="$enc" '$3 == e && $4 == "corpus" { sub("tokens_per_s=", "", $8); print $8 }' "$tmp/c.txt")
  n=$(awk -v e="$enc" '$3 == e && $4 == "corpus" { sub("tokens_per_s=", "", $8); print $8 }' "$tmp/node.txt")
  ct=$(awk -v e="$enc" '$3 == e && $4 == "corpus" { print $5 }' "$tmp/c.txt")
  nt=$(awk -v e="$enc" '$3 == e && $4 == "corpus" { print $5 }' "$tmp/node.txt")
  cw=$(awk -v e="$enc" '$3 == e && $4 == "worst_a_100k" { sub("median_ms=", "", $6); print $6 }' "$tmp/c.txt")
  nw=$(awk -v e="$enc" '$3 == e && $4 == "worst_a_100k" { sub("median_ms=", "", $6); print $6 }' "$tmp/node.txt")
  awk -v e="$enc" -v c="$c" -v n="$n" -v ct="$ct" -v nt="$nt" -v cw="$cw" -v nw="${nw:-}" 'BEGIN {
    printf "%-12s corpus: cliproxy %.2f Mtok/s, tiktoken %.2f Mtok/s, ratio %.1fx (%s / %s%s)\n",
      e, c / 1e6, n / 1e6, c / n, ct, nt, (ct == nt ? ", counts equal" : ", COUNTS DIFFER")
    if (nw != "")
      printf "%-12s a x 100000: cliproxy %.1f ms, tiktoken %.0f ms (%.0fx)\n", e, cw, nw, nw / cw
    else
      printf "%-12s a x 100000: cliproxy %.1f ms\n", e, cw
  }'
done

if pkg-config --exists libpcre2-8; then
  echo "== pre-tokeniser only: hand-written vs PCRE2"
  cc "${flags[@]}" $(pkg-config --cflags libpcre2-8) runtime/core/cpx_tokens.c bench/tokens-pcre2.c \
    -o "$tmp/tokens-pcre2" $(pkg-config --libs libpcre2-8) "${libs[@]}"
  "$tmp/tokens-pcre2" "$CORPUS" "$RUNS"
else
  echo "(libpcre2-dev not installed: skipping the PCRE2 comparison)"
fi
