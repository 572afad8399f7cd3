#!/usr/bin/env bash
# scripts/fuzz.sh: builds the libFuzzer targets (clang, ASan + UBSan) in
# build-fuzz/ and runs each for a while, starting from the checked-in corpus
# spec/fuzz/corpus/<target>/ (new inputs go to build-fuzz/corpus/<target>/).
#
#   scripts/fuzz.sh [--time SECONDS] [--seed N] [--jobs N] [--merge] [target...]
#
# --time: seconds per target (default 30: the CI smoke); --seed: libFuzzer's
# seed (0, the default, picks one per run; CI passes 1 so a run explores the
# same way each time); --jobs: targets run
# at once (default: the number of cores); --merge: minimise the new inputs
# into spec/fuzz/corpus (to commit). Prints the executions reached per
# target; exits non-zero on a finding, whose input is saved as
# build-fuzz/findings/<target>/crash-* and can be replayed with
# build/fuzz_<target> FILE.
set -euo pipefail
cd "$(dirname "$0")/.."

time_s=30
jobs=$(nproc 2>/dev/null || echo 2)
merge=0
seed=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --time) time_s=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --merge) merge=1; shift ;;
    --seed) seed=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(http sse tokens json codec yaml cred errors yaml_edit)

if ! command -v clang >/dev/null 2>&1; then
  echo "fuzz: clang not found (scripts/setup.sh --test installs it)" >&2
  exit 2
fi

B=build-fuzz
mkdir -p "$B"
echo "fuzz: building ${targets[*]} in $B (clang, libFuzzer, ASan + UBSan)"
cmake -S . -B "$B" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCPX_FUZZ=ON -DCPX_SANITIZE=ON -DCPX_E2E=OFF >"$B/configure.log" 2>&1 ||
  { cat "$B/configure.log" >&2; exit 1; }
cmake --build "$B" -j "$jobs" --target $(printf 'fuzz_%s ' "${targets[@]}") >"$B/build.log" 2>&1 ||
  { tail -40 "$B/build.log" >&2; exit 1; }

# LuaJIT and our allocator hooks: leaks are reported by the ASan e2e runs.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

run_one() {
  local t=$1 work="$B/corpus/$1" out="$B/findings/$1"
  mkdir -p "$work" "$out"
  "$B/fuzz_$t" -max_total_time="$time_s" -seed="$seed" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -artifact_prefix="$out/" "$work" "spec/fuzz/corpus/$t" >"$B/fuzz_$t.log" 2>&1
}

fail=0
pids=()
for t in "${targets[@]}"; do
  echo "fuzz: $t for ${time_s}s"
  run_one "$t" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$jobs" ]; then
    wait "${pids[0]}" || true
    pids=("${pids[@]:1}")
  fi
done
wait || true

printf '%-8s %14s %10s %s\n' target executions exec/s result
for t in "${targets[@]}"; do
  log="$B/fuzz_$t.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if ls "$B/findings/$t"/crash-* "$B/findings/$t"/timeout-* "$B/findings/$t"/oom-* >/dev/null 2>&1 ||
     grep -q "ERROR: libFuzzer\|SUMMARY: .*Sanitizer\|fuzz finding" "$log"; then
    result="FINDING (see $log)"
    fail=1
  else
    result=ok
  fi
  printf '%-8s %14s %10s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$result"
done
if [ "$fail" -ne 0 ]; then
  for t in "${targets[@]}"; do
    grep -m1 -A12 "fuzz finding\|ERROR: \(libFuzzer\|AddressSanitizer\)\|runtime error" "$B/fuzz_$t.log" 2>/dev/null | sed "s/^/  $t: /" || true
  done
fi

if [ "$merge" -eq 1 ]; then
  for t in "${targets[@]}"; do
    echo "fuzz: merging new $t inputs into spec/fuzz/corpus/$t"
    "$B/fuzz_$t" -merge=1 "spec/fuzz/corpus/$t" "$B/corpus/$t" >"$B/merge_$t.log" 2>&1 || true
  done
fi
exit "$fail"
