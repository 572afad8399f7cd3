#!/usr/bin/env bash
# Translated-route benchmark (issue 3), all in one run on 127.0.0.1 with free ports:
#   direct      wrk -> nginx upstream (answers every POST with a ~300 B chat.completion)
#   nginx       wrk -> nginx proxy_pass (upstream keepalive 128) -> upstream, 78 KB chat body
#   passthrough wrk -> cliproxy POST /v1/chat/completions -> upstream, the same 78 KB chat body
#   translated  wrk -> cliproxy POST /v1/messages (a 78 KB Claude-Code-shaped Anthropic request:
#               3 system blocks, 24 tools with input_schema, a mid-conversation system message,
#               adaptive thinking) -> Chat Completions upstream, answer translated back to an
#               Anthropic message
# RUNS runs each (medians), then translated/nginx req/s against the target (>= 0.7x).
#
#   bench/translated.sh            # 3 runs x 8 s per case (about 2 minutes)
#   bench/translated.sh --quick    # 1 run x 3 s per case
# Environment as bench/run.sh: CPX_BIN, RUNS, DURATION, CONNS, THREADS, WORKERS, PIN.
# Writes the summary to stdout and to bench/out/translated-<time>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. bench/lib/common.sh

bench_options "$@"
[ -x "$CPX_BIN" ] || { echo "bench: no cliproxy binary at $CPX_BIN (build it with scripts/build.sh)" >&2; exit 2; }

bench_init cpx-bench-tr

luajit bench/lib/make_body.lua "$TMP/body/chat.json" 78000 bench-model 2>/dev/null
luajit bench/lib/make_claude_body.lua "$TMP/body/claude.json" 78000 bench-model 2>/dev/null
printf '%s' "$CHAT_ANSWER" >"$TMP/body/response.json"
CHAT_B=$(wc -c <"$TMP/body/chat.json"); CLAUDE_B=$(wc -c <"$TMP/body/claude.json")

UP_PORT=$(free_port); NGX_PORT=$(free_port); CPX_PORT=$(free_port)
nginx_chat_pair "$UP_PORT" "$NGX_PORT" "$TMP/body/response.json"

# One upstream model per wrk run: wrk stops with requests in flight and cliproxy
# (known bug) cools a credential+model down for 60 s after "client closed
# request"; a fresh model per run keeps the next run from measuring 429s.
NMODELS=$((2 * (RUNS + 1) + 2))
mkdir -p "$TMP/cpx/auths"
{
  printf 'host: "127.0.0.1"\nport: %s\nauth-dir: "%s"\ndebug: false\napi-keys: []\nrequest-retry: 0\nworkers: %s\n' "$CPX_PORT" "$TMP/cpx/auths" "$WORKERS"
  printf 'openai-compatibility:\n  - name: "bench-upstream"\n    base-url: "http://127.0.0.1:%s/v1"\n    api-key-entries:\n      - api-key: "bench-upstream-key"\n    models:\n' "$UP_PORT"
  printf '      - name: "up-model"\n        alias: "bench-model"\n'
  for k in $(seq 1 "$NMODELS"); do printf '      - name: "up-model-%s"\n        alias: "bench-model-%s"\n' "$k" "$k"; done
} >"$TMP/cpx/config.yaml"
cpx_run "$TMP/cpx" "$CPX_PORT"

declare -A URL BODY EXPECT
URL[direct]="http://127.0.0.1:$UP_PORT/v1/chat/completions";       BODY[direct]=chat;   EXPECT[direct]='"chat.completion"'
URL[nginx]="http://127.0.0.1:$NGX_PORT/v1/chat/completions";       BODY[nginx]=chat;    EXPECT[nginx]='"chat.completion"'
URL[passthrough]="http://127.0.0.1:$CPX_PORT/v1/chat/completions"; BODY[passthrough]=chat; EXPECT[passthrough]='"chat.completion"'
URL[translated]="http://127.0.0.1:$CPX_PORT/v1/messages";          BODY[translated]=claude; EXPECT[translated]='"type":"message"'
CASES=(direct nginx passthrough translated)

for c in "${CASES[@]}"; do bench_check "$c" "${URL[$c]}" "$TMP/body/${BODY[$c]}.json" "${EXPECT[$c]}"; done
bench_check translated "${URL[translated]}" "$TMP/body/claude.json" '"text":"PONG"'

MODEL_N=0
run_wrk() { # case duration
  local body="$TMP/body/${BODY[$1]}.json"
  if [ "$1" = passthrough ] || [ "$1" = translated ]; then
    MODEL_N=$((MODEL_N + 1))
    body="$TMP/body/${BODY[$1]}.$MODEL_N.json"
    sed "s/\"model\":\"bench-model\"/\"model\":\"bench-model-$MODEL_N\"/" "$TMP/body/${BODY[$1]}.json" >"$body"
  fi
  "${ON_CPU1[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$2" --latency -s bench/lib/post.lua "${URL[$1]}" -- "$body" 'anthropic-version: 2023-06-01' 2>&1
}
echo "bench: wrk -t$THREADS -c$CONNS -d$DURATION, $RUNS run(s) per case, workers=$WORKERS, pin=$PIN; chat body ${CHAT_B} B, Anthropic body ${CLAUDE_B} B" >&2
for c in "${CASES[@]}"; do run_wrk "$c" 1s >/dev/null; done # warm-up
for r in $(seq 1 "$RUNS"); do
  for c in "${CASES[@]}"; do
    run_wrk "$c" "$DURATION" >"$TMP/res/$c.$r.log"
    bench_keep "$c.$r" "$TMP/res/$c.$r.log" "run $r $c"
  done
done

med() { bench_med "$1" "$2"; }
errs() { bench_errs "$1"; }
summary() {
  echo "cliproxy translated-route benchmark — $(date -u '+%Y-%m-%d %H:%M:%SZ'), $(nproc) CPUs"
  echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency, median of $RUNS run(s); workers: $WORKERS; pinned: $PIN"
  echo "bodies: chat ${CHAT_B} B; Anthropic (Claude Code shape) ${CLAUDE_B} B"
  echo
  printf '%-12s %-22s %10s %9s %9s %7s\n' case route 'req/s' 'p50 ms' 'p99 ms' errors
  for c in "${CASES[@]}"; do
    case $c in direct) route='chat -> upstream';; nginx) route='chat -> nginx';; passthrough) route='chat -> chat';; translated) route='anthropic -> chat';; esac
    printf '%-12s %-22s %10.0f %9.3f %9.3f %7s\n' "$c" "$route" "$(med "$c" rps)" \
      "$(awk -v x="$(med "$c" p50_us)" 'BEGIN{print x/1000}')" "$(awk -v x="$(med "$c" p99_us)" 'BEGIN{print x/1000}')" "$(errs "$c")"
  done
  echo
  for c in "${CASES[@]}"; do
    [ "$(errs "$c")" = 0 ] || echo "WARNING: $c had $(errs "$c") failed requests (non-2xx or socket errors): its req/s is not valid"
  done
  awk -v t="$(med translated rps)" -v n="$(med nginx rps)" -v p="$(med passthrough rps)" 'BEGIN {
    r = t / n
    printf "translated/nginx req/s      = %.2fx  (target >= 0.70x)  %s\n", r, (r >= 0.7 ? "ok" : "MISSED")
    printf "passthrough/nginx req/s     = %.2fx\n", p / n
    printf "translated/passthrough req/s = %.2fx\n", t / p
  }'
}
bench_report translated
