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
nginx_conf "$TMP/up" "$WORKERS" "    default_type application/json;
    ssl_certificate $C/leaf.pem;
    ssl_certificate_key $C/leaf.key;
    ssl_session_cache shared:up:1m;
    ssl_protocols TLSv1.2 TLSv1.3;  # 1.22's default stops at 1.2; real upstreams speak 1.3
    server {
        listen 127.0.0.1:$UP_PORT ssl reuseport;
        listen 127.0.0.1:$UPH_PORT reuseport;
        location = /v1/chat/completions { return 200 '$CHAT_ANSWER'; }
        location / { return 404 '{\"error\":{\"message\":\"no route\"}}'; }
    }"
SSL_PASS="            proxy_ssl_session_reuse on;
            proxy_ssl_server_name on;
            proxy_ssl_name localhost;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $C/ca.pem;
"
nginx_conf "$TMP/ngx" "$WORKERS" "$(nginx_upstream origin_tls "127.0.0.1:$UP_PORT")
$(nginx_upstream origin_plain "127.0.0.1:$UPH_PORT")
    server {
        listen 127.0.0.1:$NGXH_PORT reuseport;
$(nginx_pass http origin_plain)
    }
    server {
        listen 127.0.0.1:$NGX_PORT reuseport;
$(nginx_pass https origin_tls "$SSL_PASS")
    }"
nginx_start "$TMP/up" 1
nginx_start "$TMP/ngx" 0
for i in $(seq 1 200); do curl -s -o /dev/null --max-time 1 --cacert "$C/ca.pem" "https://localhost:$UP_PORT/" && break; sleep 0.05; done
nginx_wait "http://127.0.0.1:$NGX_PORT/" proxy "$TMP/ngx"

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
  cpx_run "$TMP/$1" "$2"
  PID_OF[$1]=$CPX_RUN_PID
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
for s in small large; do for t in $TARGETS; do bench_check "$t $s" "$(url $t)" "$(body $t $s)" PONG; done; done

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
    bench_keep "$t.$s.$n" "$TMP/res/$t.$s.$n.log" "run $n $s $t"
  done; done
done

med() { bench_med "$1.$2" "$3"; }
errs() { bench_errs "$1.$2"; }
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
bench_report tls
