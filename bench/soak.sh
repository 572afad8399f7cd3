#!/usr/bin/env bash
# bench/soak.sh: the mixed-load soak (bench/soak.mjs) for a given time.
#   bench/soak.sh [--minutes M] [--bin PATH] [any soak.mjs flag]
# e.g. bench/soak.sh --minutes 30; CI: bench/soak.sh --minutes 2 --bin build-asan/cliproxy
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
secs=60
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) secs=$(( $2 * 60 )); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
exec node bench/soak.mjs --seconds "$secs" "${args[@]}"
