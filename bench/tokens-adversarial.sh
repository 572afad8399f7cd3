#!/usr/bin/env bash
# tokens-adversarial.sh: cliproxy's C tokenizer against node's tiktoken
# (npm tiktoken 1.0.22, encode_ordinary, the reference) on adversarial
# inputs, in the same invocation: long one-class runs (one letter, spaces,
# punctuation, random letters), digits, non-BMP runs, invalid UTF-8,
# combining marks (see tokens-adversarial.mjs). For each input and encoding
# it prints both times, the ratio and whether the counts agree, then runs
# the C side alone at 4x the size to show how its cost grows.
#
#   bench/tokens-adversarial.sh [BYTES] [RUNS]   (default 16384 bytes, 3 runs;
#                                                 env TIKTOKEN_DIR)
# tiktoken's merge is quadratic in a pre-token's length (100 KB of one
# letter takes it ~9 s), hence the small default size.
set -euo pipefail
cd "$(dirname "$0")/.."
BYTES="${1:-16384}"
RUNS="${2:-3}"
TIKTOKEN_DIR="${TIKTOKEN_DIR:-/tmp/tok/node_modules}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if [ ! -d "$TIKTOKEN_DIR/tiktoken" ]; then
  echo "installing tiktoken@1.0.22 into $(dirname "$TIKTOKEN_DIR")" >&2
  npm install --silent --prefix "$(dirname "$TIKTOKEN_DIR")" tiktoken@1.0.22 >&2
fi
cc -O2 -g -std=c11 -D_GNU_SOURCE -Iruntime $(pkg-config --cflags luajit) \
  runtime/core/cpx_tokens.c bench/tokens-adversarial.c -o "$tmp/adv" \
  $(pkg-config --libs luajit libcrypto) -lpthread -lm -ldl

node bench/tokens-adversarial.mjs gen "$tmp/in" "$BYTES"
"$tmp/adv" data "$RUNS" "$tmp"/in/*.txt >"$tmp/c.txt"
TIKTOKEN_DIR="$TIKTOKEN_DIR" node bench/tokens-adversarial.mjs run "$tmp/in" "$RUNS" >"$tmp/node.txt"

echo "== $BYTES bytes per input, median of $RUNS runs"
printf "%-20s %-12s %8s %10s %10s %8s  %s\n" input encoding tokens cliproxy_ms tiktoken_ms ratio counts
join -j1 <(awk '{ print $2 "/" $3, $5, $6 }' "$tmp/c.txt" | sort) \
  <(awk '{ print $2 "/" $3, $5, $6 }' "$tmp/node.txt" | sort) |
  awk '{ split($1, k, "/"); sub("tokens=", "", $2); sub("median_ms=", "", $3);
         sub("tokens=", "", $4); sub("median_ms=", "", $5);
         printf "%-20s %-12s %8s %10.3f %10.3f %7.0fx  %s\n", k[1], k[2], $2, $3, $5,
           ($3 > 0 ? $5 / $3 : 0), ($2 == $4 ? "equal" : "DIFFER (" $4 ")") }'

big=$((BYTES * 4))
node bench/tokens-adversarial.mjs gen "$tmp/big" "$big"
"$tmp/adv" data "$RUNS" "$tmp"/big/*.txt >"$tmp/c4.txt"
echo "== cliproxy alone: $BYTES -> $big bytes (linear cost: time x4, MB/s flat)"
printf "%-20s %-12s %10s %10s %8s %8s\n" input encoding ms ms_x4 growth MB/s_x4
join -j1 <(awk '{ print $2 "/" $3, $6 }' "$tmp/c.txt" | sort) \
  <(awk '{ print $2 "/" $3, $4, $6 }' "$tmp/c4.txt" | sort) |
  awk '{ split($1, k, "/"); sub("median_ms=", "", $2); sub("bytes=", "", $3); sub("median_ms=", "", $4);
         printf "%-20s %-12s %10.3f %10.3f %7.1fx %8.1f\n", k[1], k[2], $2, $4, ($2 > 0 ? $4 / $2 : 0), $3 / 1e3 / $4 }'
