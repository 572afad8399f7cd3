#!/usr/bin/env bash
# A TLS upstream (issue 12): Chat Completions to an openai-compatibility
# account on https://, against nginx proxy_pass https:// in the same run.
#   nginx     wrk -> nginx proxy_pass https://origin (keepalive 128,
#             proxy_ssl_session_reuse on, the chain and name verified)
#   lane      wrk -> cliproxy, fast path: cpx_h1's TLS client (OpenSSL over
#             memory BIOs, pooled connections, sessions resumed)
#   curl      wrk -> cliproxy with fast-path: false: the Lua pipeline and
#             libcurl (its own connection cache and TLS session cache)
#   nginx-h   nginx proxy_pass http:// to the same upstream's plain port
#   lane-h    the lane to that plain port (another model of the same
#             cliproxy): the two -h rows show what TLS itself costs each
# The upstream is nginx terminating TLS (a certificate from a CA made at run
# time with the openssl CLI; cliproxy trusts it through upstream-ca-file,
# nginx through proxy_ssl_trusted_certificate) and answering the fixed
# chat.completion. Each case with a ~100 B and a ~78 KB request body. RUNS
# runs per case (default 3), medians; the ratios are to nginx in the same run.
#
#   bench/tls.sh [--quick]     # RUNS=3 DURATION=4s (about 2.5 minutes)
# Environment as run.sh: CPX_BIN, RUNS, DURATION, CONNS, THREADS, WORKERS, PIN;
# PERF=1 records `perf record -g` of each cliproxy during its first run into
# bench/out/perf-tls-<case>-<body>.data.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. bench/lib/common.sh
DURATION=${DURATION:-4s}
bench_options "$@"
command -v openssl >/dev/null || { echo "bench: openssl is missing (scripts/setup.sh --test installs it)" >&2; exit 1; }
[ -x "$CPX_BIN" ] || { echo "bench: no cliproxy binary at $CPX_BIN (build it with scripts/build.sh)" >&2; exit 2; }
bench_init cpx-bench-tls
B=$TMP/body

printf '%s' '{"model":"bench-chat","messages":[{"role":"user","content":"Reply with the word PONG, nothing else."}]}' >"$B/chat.small.json"
luajit bench/lib/make_body.lua "$B/chat.large.json" 78000 bench-chat 2>/dev/null
for s in small large; do sed 's/"model":"bench-chat"/"model":"bench-plain"/' "$B/chat.$s.json" >"$B/plain.$s.json"; done
CHAT_ANS='{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,"model":"up-chat","choices":[{"index":0,"message":{"role":"assistant","content":"PONG"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":2,"total_tokens":21},"system_fingerprint":"fp_bench"}'

# ---------------------------------------------------------------- certificates
C=$TMP/certs; mkdir -p "$C"
EC=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
( cd "$C"
  openssl req -x509 "${EC[@]}" -keyout ca.key -out ca.pem -days 2 -subj '/CN=cpx bench CA' \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  openssl req "${EC[@]}" -keyout leaf.key -out leaf.csr -subj /CN=localhost
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >leaf.ext
  openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 -extfile leaf.ext
) >/dev/null 2>&1 || { echo "bench: openssl could not make the certificates" >&2; exit 1; }

# ---------------------------------------------------------------- servers
UP_PORT=$(free_port); UPH_PORT=$(free_port); NGX_PORT=$(free_port); NGXH_PORT=$(free_port)
LANE_PORT=$(free_port); CURL_PORT=$(free_port)
mkdir -p "$TMP/up/tmp" "$TMP/ngx/tmp"
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
    ssl_certificate $C/leaf.pem;
    ssl_certificate_key $C/leaf.key;
    ssl_session_cache shared:up:1m;
    ssl_protocols TLSv1.2 TLSv1.3;  # 1.22's default stops at 1.2; real upstreams speak 1.3
    server {
        listen 127.0.0.1:$UP_PORT ssl reuseport;
        listen 127.0.0.1:$UPH_PORT reuseport;
        location = /v1/chat/completions { return 200 '$CHAT_ANS'; }
        location / { return 404 '{"error":{"message":"no route"}}'; }
    }
}
NGX
cat >"$TMP/ngx/nginx.conf" <<NGX
worker_processes $WORKERS;
daemon off;
pid $TMP/ngx/nginx.pid;
error_log $TMP/ngx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_max_body_size 4m;
    client_body_buffer_size 256k;
    client_body_temp_path $TMP/ngx/tmp; proxy_temp_path $TMP/ngx/tmp;
    fastcgi_temp_path $TMP/ngx/tmp; uwsgi_temp_path $TMP/ngx/tmp; scgi_temp_path $TMP/ngx/tmp;
    upstream origin_tls { server 127.0.0.1:$UP_PORT; keepalive 128; }
    upstream origin_plain { server 127.0.0.1:$UPH_PORT; keepalive 128; }
    server {
        listen 127.0.0.1:$NGXH_PORT reuseport;
        location / {
            proxy_pass http://origin_plain;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$NGX_PORT reuseport;
        location / {
            proxy_pass https://origin_tls;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_session_reuse on;
            proxy_ssl_server_name on;
            proxy_ssl_name localhost;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $C/ca.pem;
        }
    }
}
NGX
"${ON_CPU1[@]}" nginx -p "$TMP/up" -c "$TMP/up/nginx.conf" -e "$TMP/up/error.log" & PIDS+=($!); NGINX_PIDS+=($!)
"${ON_CPU0[@]}" nginx -p "$TMP/ngx" -c "$TMP/ngx/nginx.conf" -e "$TMP/ngx/error.log" & PIDS+=($!); NGINX_PIDS+=($!)
for i in $(seq 1 200); do curl -s -o /dev/null --max-time 1 --cacert "$C/ca.pem" "https://localhost:$UP_PORT/" && break; sleep 0.05; done
wait_http "http://127.0.0.1:$NGX_PORT/" || { echo "bench: proxy nginx did not start" >&2; exit 1; }

cpx_start() { # name port fast-path
  mkdir -p "$TMP/$1/auths"
  cat >"$TMP/$1/config.yaml" <<YAML
host: "127.0.0.1"
port: $2
auth-dir: "$TMP/$1/auths"
debug: false
api-keys: []
request-retry: 0
workers: $WORKERS
fast-path: $3
upstream-ca-file: "$C/ca.pem"
openai-compatibility:
  - name: "bench-upstream"
    base-url: "https://localhost:$UP_PORT/v1"
    api-key-entries:
      - api-key: "bench-upstream-key"
    models:
      - { name: "up-chat", alias: "bench-chat" }
  - name: "bench-plain"
    base-url: "http://127.0.0.1:$UPH_PORT/v1"
    api-key-entries:
      - api-key: "bench-upstream-key"
    models:
      - { name: "up-chat", alias: "bench-plain" }
YAML
  "${ON_CPU0[@]}" "$CPX_BIN" --config "$TMP/$1/config.yaml" >"$TMP/$1/stdout" 2>"$TMP/$1/stderr" &
  local pid=$!
  PIDS+=("$pid"); CPX_PIDS+=("$pid"); PID_OF[$1]=$pid
  for i in $(seq 1 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$2/healthz")" = 200 ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "bench: cliproxy ($1) did not answer /healthz: $(tail -c 600 "$TMP/$1/stderr")" >&2; exit 2
}
declare -A PID_OF CRASHES=([lane]=0 [curl]=0)
# A cliproxy that died during a run is noted (and its last log lines kept in
# the summary) and started again, so one crash does not end the benchmark.
cpx_alive() { # name port fast-path
  kill -0 "${PID_OF[$1]}" 2>/dev/null && return 0
  CRASHES[$1]=$((CRASHES[$1] + 1))
  wait "${PID_OF[$1]}" 2>/dev/null || true
  grep -v '\[info\]' "$TMP/$1/stderr" | tail -n 3 >>"$TMP/crashes"
  echo "bench: cliproxy ($1) died; started again" >&2
  cpx_start "$@"
}
cpx_start lane "$LANE_PORT" true
cpx_start curl "$CURL_PORT" false
grep -q 'fast path: 2 model' "$TMP/lane/stderr" || { echo "bench: the lane does not serve the https model: $(grep 'fast path' "$TMP/lane/stderr")" >&2; exit 2; }

declare -A PORT=([nginx]=$NGX_PORT [lane]=$LANE_PORT [curl]=$CURL_PORT [nginx-h]=$NGXH_PORT [lane-h]=$LANE_PORT)
url() { echo "http://127.0.0.1:${PORT[$1]}/v1/chat/completions"; }
body() { case $1 in lane-h) echo "$B/plain.$2.json" ;; *) echo "$B/chat.$2.json" ;; esac; }
TARGETS="nginx lane curl nginx-h lane-h"
for s in small large; do for t in $TARGETS; do
  code=$(curl -s -o "$TMP/res/check" -w '%{http_code}' --max-time 5 -X POST -H 'Content-Type: application/json' \
    --data-binary @"$(body $t $s)" "$(url $t)" || true)
  if [ "$code" != 200 ] || ! grep -q PONG "$TMP/res/check"; then
    echo "bench: $t $s check failed: HTTP $code $(head -c 400 "$TMP/res/check")" >&2; exit 2
  fi
done; done

run_wrk() { # target size duration
  "${ON_CPU1[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$3" --latency -s bench/lib/post.lua "$(url "$1")" -- "$(body "$1" "$2")" 2>&1
}
echo "bench: wrk -t$THREADS -c$CONNS -d$DURATION, $RUNS run(s) per case, workers=$WORKERS, pin=$PIN" >&2
for s in small large; do for t in $TARGETS; do run_wrk $t $s 1s >/dev/null; done; done
for n in $(seq 1 "$RUNS"); do
  for s in small large; do for t in $TARGETS; do
    cpx_alive lane "$LANE_PORT" true
    cpx_alive curl "$CURL_PORT" false
    PERF_PID=""
    if [ "${PERF:-0}" = 1 ] && { [ "$t" = lane ] || [ "$t" = curl ]; } && [ "$n" = 1 ]; then
      perf record -g -o "bench/out/perf-tls-$t-$s.data" -p "${PID_OF[$t]}" >/dev/null 2>&1 & PERF_PID=$!
    fi
    run_wrk $t $s "$DURATION" >"$TMP/res/$t.$s.$n.log"
    [ -n "$PERF_PID" ] && { kill -INT "$PERF_PID"; wait "$PERF_PID" || true; }
    line=$(grep '^BENCH' "$TMP/res/$t.$s.$n.log" || true)
    [ -n "$line" ] || { echo "bench: wrk failed for $t $s:" >&2; cat "$TMP/res/$t.$s.$n.log" >&2; exit 1; }
    echo "$line" >"$TMP/res/$t.$s.$n"
    echo "  run $n $s $t: $(echo "$line" | field rps) req/s, p99 $(echo "$line" | field p99_us) us" >&2
  done; done
done

med() { for n in $(seq 1 "$RUNS"); do field "$3" <"$TMP/res/$1.$2.$n"; done | median; }
errs() {
  local e=0 n k v
  for n in $(seq 1 "$RUNS"); do for k in err_connect err_read err_write err_status err_timeout; do
    v=$(field "$k" <"$TMP/res/$1.$2.$n"); e=$((e + v)); done; done
  echo "$e"
}
summary() {
  echo "cliproxy TLS upstream benchmark — $(date -u '+%Y-%m-%d %H:%M:%SZ'), $(nproc) CPUs, $(nginx -v 2>&1 | sed 's/.*\///'), $(openssl version | cut -d' ' -f1-2), $(git rev-parse --short HEAD 2>/dev/null)"
  echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency, median of $RUNS run(s); workers: $WORKERS; pinned: $PIN; https upstream (nginx, TLS 1.3)"
  echo
  printf '%-6s %-8s %10s %7s %10s %7s\n' body case 'r/s' ratio 'p99 ms' errors
  for s in small large; do
    local nr nh
    nr=$(med nginx $s rps); nh=$(med nginx-h $s rps)
    for t in $TARGETS; do
      local r
      r=$(med $t $s rps)
      case $t in *-h) nr_t=$nh ;; *) nr_t=$nr ;; esac
      printf '%-6s %-8s %10.0f %6.2fx %10.3f %7s\n' "$s" "$t" "$r" "$(awk -v a="$r" -v b="$nr_t" 'BEGIN{print a/b}')" \
        "$(awk -v x="$(med $t $s p99_us)" 'BEGIN{print x/1000}')" "$(errs $t $s)"
    done
  done
  echo "(ratios: https rows to nginx, -h rows to nginx-h; target: lane >= 0.80x nginx; curl is the libcurl alternative)"
  if [ "${CRASHES[lane]}" -gt 0 ] || [ "${CRASHES[curl]}" -gt 0 ]; then
    echo "cliproxy died and was restarted: lane ${CRASHES[lane]} time(s), curl ${CRASHES[curl]} time(s); last lines:"
    sed 's/^/  /' "$TMP/crashes"
  fi
}
mkdir -p bench/out
OUT="bench/out/tls-$(date -u +%Y%m%d-%H%M%S).txt"
summary | tee "$OUT"
echo "(written to $OUT)" >&2
