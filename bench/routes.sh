#!/usr/bin/env bash
# Every route people use, against nginx proxy_pass in the same run, plain http:
#   chat       OpenAI client  -> openai-compatibility upstream (POST /v1/chat/completions)
#   messages   Claude Code    -> claude-api-key upstream       (POST /v1/messages)
#   responses  Codex (stream) -> codex-api-key upstream        (POST /v1/responses, SSE answer)
#   gemini     Gemini CLI     -> gemini-api-key upstream       (POST /v1beta/models/M:generateContent)
#   a2chat     Claude Code    -> openai-compatibility upstream (translated both ways)
# each with a small body and a ~78 KB one (Claude Code's size). nginx proxies the
# same request to the same upstream (for a2chat: the 78 KB chat body of run.sh,
# the hop a translation-free proxy would make). RUNS runs per case, medians.
#
#   bench/routes.sh [--quick]     # RUNS=3 DURATION=4s by default (about 5 minutes)
# Environment as run.sh: CPX_BIN, RUNS, DURATION, CONNS, THREADS, WORKERS, PIN;
# ROUTES="chat messages" limits the routes; PERF=1 records `perf record -g` of
# cliproxy during the cliproxy runs into bench/out/perf-<route>-<body>.data.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. bench/lib/common.sh
DURATION=${DURATION:-4s}
bench_options "$@"
[ -x "$CPX_BIN" ] || { echo "bench: no cliproxy binary at $CPX_BIN (build it with scripts/build.sh)" >&2; exit 2; }
ROUTES=${ROUTES:-chat messages responses gemini a2chat}
bench_init cpx-bench-routes
B=$TMP/body

# ---------------------------------------------------------------- bodies
printf '%s' '{"model":"bench-chat","messages":[{"role":"user","content":"Reply with the word PONG, nothing else."}]}' >"$B/chat.small.json"
luajit bench/lib/make_body.lua "$B/chat.large.json" 78000 bench-chat 2>/dev/null
printf '%s' '{"model":"bench-claude","max_tokens":1024,"messages":[{"role":"user","content":"Reply with the word PONG, nothing else."}]}' >"$B/messages.small.json"
luajit bench/lib/make_claude_body.lua "$B/messages.large.json" 78000 bench-claude 2>/dev/null
printf '%s' '{"model":"bench-codex","stream":true,"input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"Reply with the word PONG, nothing else."}]}]}' >"$B/responses.small.json"
luajit bench/lib/make_route_body.lua responses "$B/responses.large.json" 78000 bench-codex
printf '%s' '{"contents":[{"role":"user","parts":[{"text":"Reply with the word PONG, nothing else."}]}]}' >"$B/gemini.small.json"
luajit bench/lib/make_route_body.lua gemini "$B/gemini.large.json" 78000
sed 's/"model":"bench-claude"/"model":"bench-chat"/' "$B/messages.small.json" >"$B/a2chat.small.json"
sed 's/"model":"bench-claude"/"model":"bench-chat"/' "$B/messages.large.json" >"$B/a2chat.large.json"

# the upstream's answers (nginx `return`; \n is nginx's escape)
MSG_ANS='{"id":"msg_bench0001","type":"message","role":"assistant","model":"up-claude","content":[{"type":"text","text":"PONG"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":19,"output_tokens":2}}'
RESP_OBJ='{"id":"resp_bench0001","object":"response","created_at":1700000000,"status":"completed","model":"up-codex","output":[{"id":"msg_b1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"PONG","annotations":[]}]}],"usage":{"input_tokens":19,"output_tokens":2,"total_tokens":21}}'
RESP_ANS='event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":{"id":"resp_bench0001","object":"response","created_at":1700000000,"status":"in_progress","model":"up-codex","output":[]}}\n\nevent: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_b1","output_index":0,"content_index":0,"delta":"PONG"}\n\nevent: response.completed\ndata: {"type":"response.completed","sequence_number":2,"response":'"$RESP_OBJ"'}\n\n'
GEM_ANS='{"candidates":[{"content":{"role":"model","parts":[{"text":"PONG"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":19,"candidatesTokenCount":2,"totalTokenCount":21},"modelVersion":"up-gemini"}'

# ---------------------------------------------------------------- servers
UP_PORT=$(free_port); NGX_PORT=$(free_port); CPX_PORT=$(free_port)
nginx_conf "$TMP/up" "$WORKERS" "    default_type application/json;
    server {
        listen 127.0.0.1:$UP_PORT reuseport;
        location = /v1/chat/completions { return 200 '$CHAT_ANSWER'; }
        location = /v1/messages { return 200 '$MSG_ANS'; }
        location = /v1/responses { default_type text/event-stream; return 200 '$RESP_ANS'; }
        location /v1beta/models/ { return 200 '$GEM_ANS'; }
        location / { return 404 '{\"error\":{\"message\":\"no route\"}}'; }
    }"
write_nginx_proxy "$TMP/ngx" "$NGX_PORT" "$UP_PORT" "$WORKERS"
nginx_start "$TMP/up" 1
nginx_start "$TMP/ngx" 0
nginx_wait "http://127.0.0.1:$UP_PORT/" upstream "$TMP/up"
nginx_wait "http://127.0.0.1:$NGX_PORT/" proxy "$TMP/ngx"

mkdir -p "$TMP/cpx/auths"
cat >"$TMP/cpx/config.yaml" <<YAML
host: "127.0.0.1"
port: $CPX_PORT
auth-dir: "$TMP/cpx/auths"
debug: false
api-keys: []
request-retry: 0
workers: $WORKERS
openai-compatibility:
  - name: "bench-upstream"
    base-url: "http://127.0.0.1:$UP_PORT/v1"
    api-key-entries:
      - api-key: "bench-upstream-key"
    models:
      - { name: "up-chat", alias: "bench-chat" }
claude-api-key:
  - api-key: "bench-claude-key"
    base-url: "http://127.0.0.1:$UP_PORT"
    models:
      - { name: "up-claude", alias: "bench-claude" }
codex-api-key:
  - api-key: "bench-codex-key"
    base-url: "http://127.0.0.1:$UP_PORT/v1"
    models:
      - { name: "up-codex", alias: "bench-codex" }
gemini-api-key:
  - api-key: "bench-gemini-key"
    base-url: "http://127.0.0.1:$UP_PORT"
    models:
      - { name: "up-gemini", alias: "bench-gemini" }
YAML
cpx_run "$TMP/cpx" "$CPX_PORT"
CPX_PID=$CPX_RUN_PID

# route -> path on cliproxy, path on nginx, body for nginx, what the answer holds
declare -A CPATH NPATH NBODY EXPECT
CPATH[chat]=/v1/chat/completions;  NPATH[chat]=/v1/chat/completions; NBODY[chat]=chat;  EXPECT[chat]='"chat.completion"'
CPATH[messages]=/v1/messages;      NPATH[messages]=/v1/messages;     NBODY[messages]=messages; EXPECT[messages]='"type":"message"'
CPATH[responses]=/v1/responses;    NPATH[responses]=/v1/responses;   NBODY[responses]=responses; EXPECT[responses]='response.completed'
CPATH[gemini]=/v1beta/models/bench-gemini:generateContent; NPATH[gemini]=/v1beta/models/up-gemini:generateContent
NBODY[gemini]=gemini; EXPECT[gemini]='"candidates"'
CPATH[a2chat]=/v1/messages;        NPATH[a2chat]=/v1/chat/completions; NBODY[a2chat]=chat; EXPECT[a2chat]='"type":"message"'
declare -A NEXPECT; for r in chat messages responses gemini a2chat; do NEXPECT[$r]=${EXPECT[$r]}; done
NEXPECT[a2chat]='"chat.completion"'
HDRS=('anthropic-version: 2023-06-01')

url() { # target route
  if [ "$1" = nginx ]; then echo "http://127.0.0.1:$NGX_PORT${NPATH[$2]}"; else echo "http://127.0.0.1:$CPX_PORT${CPATH[$2]}"; fi
}
body() { # target route size
  if [ "$1" = nginx ]; then echo "$B/${NBODY[$2]}.$3.json"; else echo "$B/$2.$3.json"; fi
}
for r in $ROUTES; do for s in small large; do for t in nginx cliproxy; do
  want=${EXPECT[$r]}; [ $t = nginx ] && want=${NEXPECT[$r]}
  bench_check "$t $r/$s" "$(url $t $r)" "$(body $t $r $s)" "$want" PONG
done; done; done

run_wrk() { # target route size duration
  "${ON_CPU1[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$4" --latency -s bench/lib/post.lua "$(url "$1" "$2")" -- \
    "$(body "$1" "$2" "$3")" "${HDRS[@]}" 2>&1
}
echo "bench: wrk -t$THREADS -c$CONNS -d$DURATION, $RUNS run(s) per case, workers=$WORKERS, pin=$PIN; routes: $ROUTES" >&2
for r in $ROUTES; do for s in small large; do for t in nginx cliproxy; do run_wrk $t $r $s 1s >/dev/null; done; done; done
mkdir -p bench/out
for n in $(seq 1 "$RUNS"); do
  for r in $ROUTES; do for s in small large; do for t in nginx cliproxy; do
    PERF_PID=""
    if [ "${PERF:-0}" = 1 ] && [ "$t" = cliproxy ] && [ "$n" = 1 ]; then
      perf record -g -o "bench/out/perf-$r-$s.data" -p "$CPX_PID" >/dev/null 2>&1 & PERF_PID=$!
    fi
    run_wrk $t $r $s "$DURATION" >"$TMP/res/$t.$r.$s.$n.log"
    [ -n "$PERF_PID" ] && { kill -INT "$PERF_PID"; wait "$PERF_PID" || true; }
    bench_keep "$t.$r.$s.$n" "$TMP/res/$t.$r.$s.$n.log" "run $n $r/$s $t"
  done; done; done
done

med() { bench_med "$1.$2.$3" "$4"; }
errs() { bench_errs "$1.$2.$3"; }
summary() {
  echo "cliproxy routes benchmark — $(date -u '+%Y-%m-%d %H:%M:%SZ'), $(nproc) CPUs, $(nginx -v 2>&1 | sed 's/.*\///'), $(git rev-parse --short HEAD 2>/dev/null)"
  echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency, median of $RUNS run(s); workers: $WORKERS; pinned: $PIN; plain http upstream"
  echo
  printf '%-10s %-6s %10s %10s %8s %10s %10s %7s\n' route body 'nginx r/s' 'cpx r/s' ratio 'ngx p99ms' 'cpx p99ms' errors
  for r in $ROUTES; do for s in small large; do
    local nr cr
    nr=$(med nginx $r $s rps); cr=$(med cliproxy $r $s rps)
    printf '%-10s %-6s %10.0f %10.0f %7.2fx %10.3f %10.3f %7s\n' "$r" "$s" "$nr" "$cr" \
      "$(awk -v a="$cr" -v b="$nr" 'BEGIN{print a/b}')" \
      "$(awk -v x="$(med nginx $r $s p99_us)" 'BEGIN{print x/1000}')" \
      "$(awk -v x="$(med cliproxy $r $s p99_us)" 'BEGIN{print x/1000}')" \
      "$(( $(errs nginx $r $s) + $(errs cliproxy $r $s) ))"
  done; done
  echo "(targets: same-format >= 0.80x; a2chat large >= 0.50x, small >= 0.60x)"
}
bench_report routes
