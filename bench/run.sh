#!/usr/bin/env bash
# Passthrough benchmark, all in one run on 127.0.0.1 with free ports:
#   (a) direct   wrk -> nginx upstream (answers every POST with a ~250 B chat.completion)
#   (b) nginx    wrk -> nginx proxy_pass (upstream keepalive 128) -> (a)
#   (c) cliproxy wrk -> cliproxy (one openai-compatibility entry) -> (a)
# for a ~100 B chat request and a ~78 KB one (the size Claude Code sends),
# RUNS runs each (medians), then the ratios against the targets of issue 2.
#
#   bench/run.sh            # 3 runs x 8 s per case (about 2.5 minutes)
#   bench/run.sh --quick    # 1 run x 3 s per case
# Environment: CPX_BIN (default build/cliproxy), RUNS, DURATION, CONNS, THREADS,
# WORKERS (nginx worker_processes and cliproxy workers, default 1),
# PIN=1 (proxy on CPU 0, wrk and upstream on CPU 1, as in the reference figures).
# Writes the summary to stdout and to bench/out/summary-<time>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. bench/lib/common.sh

bench_options "$@"

bench_init cpx-bench

# ---------------------------------------------------------------- fixtures
printf '%s' '{"model":"bench-model","messages":[{"role":"user","content":"Reply with the word PONG, nothing else."}]}' >"$TMP/body/small.json"
luajit bench/lib/make_body.lua "$TMP/body/large.json" 78000 bench-model 2>/dev/null
printf '%s' "$CHAT_ANSWER" >"$TMP/body/response.json"
SMALL_B=$(wc -c <"$TMP/body/small.json")
LARGE_B=$(wc -c <"$TMP/body/large.json")
RESP_B=$(wc -c <"$TMP/body/response.json")

# ---------------------------------------------------------------- servers
UP_PORT=$(free_port); NGX_PORT=$(free_port); CPX_PORT=$(free_port)
nginx_chat_pair "$UP_PORT" "$NGX_PORT" "$TMP/body/response.json"

CPX_OK=0
CPX_NOTE=""
IDLE_RSS=""
mkdir -p "$TMP/cpx/auths"
write_cliproxy_config "$TMP/cpx/config.yaml" "$CPX_PORT" "$UP_PORT" "$TMP/cpx/auths" "$WORKERS"
if [ -x "$CPX_BIN" ]; then
  "${ON_CPU0[@]}" "$CPX_BIN" --config "$TMP/cpx/config.yaml" >"$TMP/cpx/stdout" 2>"$TMP/cpx/stderr" & CPX_PID=$!
  PIDS+=("$CPX_PID")
  for i in $(seq 1 200); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$CPX_PORT/healthz")" = 200 ]; then CPX_OK=1; break; fi
    kill -0 "$CPX_PID" 2>/dev/null || break
    sleep 0.05
  done
  if [ "$CPX_OK" = 1 ]; then
    sleep 1
    IDLE_RSS=$(rss_kib "$CPX_PID")
  else
    CPX_NOTE="cliproxy did not answer /healthz: $(tail -c 600 "$TMP/cpx/stderr" | tr '\n' ' ')"
  fi
else
  CPX_NOTE="no cliproxy binary at $CPX_BIN (build it with scripts/build.sh)"
fi

# Each target must answer the request with the upstream's chat.completion.
check() { # name url bodyfile
  local code
  code=$(curl -s -o "$TMP/res/check.$1" -w '%{http_code}' --max-time 5 -X POST -H 'Content-Type: application/json' --data-binary @"$3" "$2" || true)
  if [ "$code" != 200 ] || ! grep -q '"chat.completion"' "$TMP/res/check.$1"; then
    echo "HTTP $code: $(head -c 300 "$TMP/res/check.$1" 2>/dev/null)"
    return 1
  fi
}
DIRECT_URL="http://127.0.0.1:$UP_PORT/v1/chat/completions"
NGX_URL="http://127.0.0.1:$NGX_PORT/v1/chat/completions"
CPX_URL="http://127.0.0.1:$CPX_PORT/v1/chat/completions"
for b in small large; do
  check "direct.$b" "$DIRECT_URL" "$TMP/body/$b.json" >/dev/null || { echo "bench: upstream check failed" >&2; exit 1; }
  check "nginx.$b" "$NGX_URL" "$TMP/body/$b.json" >/dev/null || { echo "bench: nginx proxy check failed" >&2; exit 1; }
  if [ "$CPX_OK" = 1 ] && ! msg=$(check "cliproxy.$b" "$CPX_URL" "$TMP/body/$b.json"); then
    CPX_OK=0; CPX_NOTE="cliproxy answered the $b request with $msg"
  fi
done

TARGETS=(direct nginx)
[ "$CPX_OK" = 1 ] && TARGETS+=(cliproxy)
url_of() { case $1 in direct) echo "$DIRECT_URL" ;; nginx) echo "$NGX_URL" ;; cliproxy) echo "$CPX_URL" ;; esac; }

run_wrk() { # target body duration -> BENCH line
  "${ON_CPU1[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$3" --latency -s bench/lib/post.lua "$(url_of "$1")" -- "$TMP/body/$2.json" 2>&1
}

echo "bench: wrk -t$THREADS -c$CONNS -d$DURATION, $RUNS run(s) per case, workers=$WORKERS, pin=$PIN; bodies ${SMALL_B} B and ${LARGE_B} B, response ${RESP_B} B" >&2
for t in "${TARGETS[@]}"; do for b in small large; do run_wrk "$t" "$b" 1s >/dev/null; done; done # warm-up
for r in $(seq 1 "$RUNS"); do
  for b in small large; do
    for t in "${TARGETS[@]}"; do
      run_wrk "$t" "$b" "$DURATION" >"$TMP/res/$t.$b.$r.log"
      line=$(grep '^BENCH' "$TMP/res/$t.$b.$r.log" || true)
      [ -n "$line" ] || { echo "bench: wrk failed for $t/$b:" >&2; cat "$TMP/res/$t.$b.$r.log" >&2; exit 1; }
      echo "$line" >"$TMP/res/$t.$b.$r"
      echo "  run $r $b $t: $(echo "$line" | field rps) req/s, p99 $(echo "$line" | field p99_us) us" >&2
    done
  done
done
PEAK_RSS=""
[ "$CPX_OK" = 1 ] && PEAK_RSS=$(hwm_kib "$CPX_PID")

# ---------------------------------------------------------------- summary
med() { bench_med "$1.$2" "$3"; } # target body field
errs() { bench_errs "$1.$2"; }

summary() {
  echo "cliproxy passthrough benchmark — $(date -u '+%Y-%m-%d %H:%M:%SZ'), $(nproc) CPUs, $(nginx -v 2>&1 | sed 's/.*\///'), $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
  echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency, median of $RUNS run(s); nginx/cliproxy workers: $WORKERS; pinned: $PIN"
  echo "bodies: small ${SMALL_B} B, large ${LARGE_B} B (Claude-Code-sized chat request); upstream answer ${RESP_B} B"
  echo
  printf '%-10s %-6s %12s %10s %10s %8s\n' case body 'req/s' 'p50 ms' 'p99 ms' errors
  for b in small large; do
    for t in direct nginx cliproxy; do
      if [ -f "$TMP/res/$t.$b.1" ]; then
        printf '%-10s %-6s %12.0f %10.3f %10.3f %8s\n' "$t" "$b" "$(med "$t" "$b" rps)" \
          "$(awk -v x="$(med "$t" "$b" p50_us)" 'BEGIN{print x/1000}')" \
          "$(awk -v x="$(med "$t" "$b" p99_us)" 'BEGIN{print x/1000}')" "$(errs "$t" "$b")"
      else
        printf '%-10s %-6s %12s %10s %10s %8s\n' "$t" "$b" n/a n/a n/a -
      fi
    done
  done
  echo
  if [ "$CPX_OK" != 1 ]; then
    echo "cliproxy: NOT MEASURED — $CPX_NOTE"
    return
  fi
  for b in small large; do
    awk -v b="$b" -v crps="$(med cliproxy "$b" rps)" -v nrps="$(med nginx "$b" rps)" \
        -v c99="$(med cliproxy "$b" p99_us)" -v n99="$(med nginx "$b" p99_us)" -v d99="$(med direct "$b" p99_us)" 'BEGIN {
      r = crps / nrps; ca = (c99 - d99) / 1000; na = (n99 - d99) / 1000
      printf "%-5s cliproxy/nginx req/s = %.2fx  (target >= 0.80x)  %s\n", b, r, (r >= 0.8 ? "ok" : "MISSED")
      if (na > 0) { q = ca / na; printf "%-5s added p99: cliproxy %.3f ms vs nginx %.3f ms = %.2fx  (target <= 2x)  %s\n", b, ca, na, q, (q <= 2 ? "ok" : "MISSED") }
      else printf "%-5s added p99: cliproxy %.3f ms vs nginx %.3f ms (nginx adds nothing measurable)\n", b, ca, na
    }'
  done
  awk -v k="$IDLE_RSS" -v p="$PEAK_RSS" 'BEGIN {
    printf "idle RSS after start: %.1f MiB  (target < 20 MiB)  %s\n", k / 1024, (k / 1024 < 20 ? "ok" : "MISSED")
    if (p != "") printf "peak RSS during the run (VmHWM): %.1f MiB\n", p / 1024
  }'
}

mkdir -p bench/out
OUT="bench/out/summary-$(date -u +%Y%m%d-%H%M%S).txt"
summary | tee "$OUT"
echo "(written to $OUT)" >&2
[ "$CPX_OK" = 1 ] || exit 2
