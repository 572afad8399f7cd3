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
CHAT_ANS='{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,"model":"up-chat","choices":[{"index":0,"message":{"role":"assistant","content":"PONG"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":2,"total_tokens":21},"system_fingerprint":"fp_bench"}'
MSG_ANS='{"id":"msg_bench0001","type":"message","role":"assistant","model":"up-claude","content":[{"type":"text","text":"PONG"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":19,"output_tokens":2}}'
RESP_OBJ='{"id":"resp_bench0001","object":"response","created_at":1700000000,"status":"completed","model":"up-codex","output":[{"id":"msg_b1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"PONG","annotations":[]}]}],"usage":{"input_tokens":19,"output_tokens":2,"total_tokens":21}}'
RESP_ANS='event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":{"id":"resp_bench0001","object":"response","created_at":1700000000,"status":"in_progress","model":"up-codex","output":[]}}\n\nevent: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_b1","output_index":0,"content_index":0,"delta":"PONG"}\n\nevent: response.completed\ndata: {"type":"response.completed","sequence_number":2,"response":'"$RESP_OBJ"'}\n\n'
GEM_ANS='{"candidates":[{"content":{"role":"model","parts":[{"text":"PONG"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":19,"candidatesTokenCount":2,"totalTokenCount":21},"modelVersion":"up-gemini"}'

# ---------------------------------------------------------------- servers
UP_PORT=$(free_port); NGX_PORT=$(free_port); CPX_PORT=$(free_port)
mkdir -p "$TMP/up/tmp"
cat >"$TMP/up/nginx.conf" <<NGX
worker_processes $WORKERS;
daemon off;
pid $TMP/up/nginx.pid;
error_log $TMP/up/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type application/json;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_max_body_size 4m;
    client_body_buffer_size 256k;
    client_body_temp_path $TMP/up/tmp; proxy_temp_path $TMP/up/tmp;
    fastcgi_temp_path $TMP/up/tmp; uwsgi_temp_path $TMP/up/tmp; scgi_temp_path $TMP/up/tmp;
    server {
        listen 127.0.0.1:$UP_PORT reuseport;
        location = /v1/chat/completions { return 200 '$CHAT_ANS'; }
        location = /v1/messages { return 200 '$MSG_ANS'; }
        location = /v1/responses { default_type text/event-stream; return 200 '$RESP_ANS'; }
        location /v1beta/models/ { return 200 '$GEM_ANS'; }
        location / { return 404 '{"error":{"message":"no route"}}'; }
    }
}
NGX
write_nginx_proxy "$TMP/ngx" "$NGX_PORT" "$UP_PORT" "$WORKERS"
"${ON_CPU1[@]}" nginx -p "$TMP/up" -c "$TMP/up/nginx.conf" -e "$TMP/up/error.log" & PIDS+=($!); NGINX_PIDS+=($!)
"${ON_CPU0[@]}" nginx -p "$TMP/ngx" -c "$TMP/ngx/nginx.conf" -e "$TMP/ngx/error.log" & PIDS+=($!); NGINX_PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/" || { echo "bench: upstream nginx did not start" >&2; cat "$TMP/up/error.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$NGX_PORT/" || { echo "bench: proxy nginx did not start" >&2; exit 1; }

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
"${ON_CPU0[@]}" "$CPX_BIN" --config "$TMP/cpx/config.yaml" >"$TMP/cpx/stdout" 2>"$TMP/cpx/stderr" & CPX_PID=$!
PIDS+=("$CPX_PID")
ok=0
for i in $(seq 1 200); do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$CPX_PORT/healthz")" = 200 ]; then ok=1; break; fi
  kill -0 "$CPX_PID" 2>/dev/null || break
  sleep 0.05
done
[ "$ok" = 1 ] || { echo "bench: cliproxy did not answer /healthz: $(tail -c 600 "$TMP/cpx/stderr")" >&2; exit 2; }

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
  code=$(curl -s -o "$TMP/res/check" -w '%{http_code}' --max-time 5 -X POST -H 'Content-Type: application/json' \
    -H "${HDRS[0]}" --data-binary @"$(body $t $r $s)" "$(url $t $r)" || true)
  want=${EXPECT[$r]}; [ $t = nginx ] && want=${NEXPECT[$r]}
  if [ "$code" != 200 ] || ! grep -q "$want" "$TMP/res/check" || ! grep -q PONG "$TMP/res/check"; then
    echo "bench: $t $r/$s check failed: HTTP $code $(head -c 400 "$TMP/res/check")" >&2; exit 2
  fi
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
    line=$(grep '^BENCH' "$TMP/res/$t.$r.$s.$n.log" || true)
    [ -n "$line" ] || { echo "bench: wrk failed for $t $r/$s:" >&2; cat "$TMP/res/$t.$r.$s.$n.log" >&2; exit 1; }
    echo "$line" >"$TMP/res/$t.$r.$s.$n"
    echo "  run $n $r/$s $t: $(echo "$line" | field rps) req/s, p99 $(echo "$line" | field p99_us) us" >&2
  done; done; done
done

med() { for n in $(seq 1 "$RUNS"); do field "$4" <"$TMP/res/$1.$2.$3.$n"; done | median; }
errs() {
  local e=0 n k v
  for n in $(seq 1 "$RUNS"); do for k in err_connect err_read err_write err_status err_timeout; do
    v=$(field "$k" <"$TMP/res/$1.$2.$3.$n"); e=$((e + v)); done; done
  echo "$e"
}
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
OUT="bench/out/routes-$(date -u +%Y%m%d-%H%M%S).txt"
summary | tee "$OUT"
echo "(written to $OUT)" >&2
