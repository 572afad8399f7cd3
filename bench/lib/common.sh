# Helpers for bench/run.sh (sourced). Everything listens on 127.0.0.1 only.

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  local p i
  for i in $(seq 1 200); do
    # below the ephemeral range (32768+), where outgoing connections take
    # their local ports and a bind can fail although nothing listens
    p=$((10000 + RANDOM % 22000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      case " ${USED_PORTS:-} " in *" $p "*) continue ;; esac
      USED_PORTS="${USED_PORTS:-} $p"
      echo "$p"
      return 0
    fi
  done
  echo "free_port: none found" >&2
  return 1
}

# wait_http URL [SECONDS]: until the URL answers (any HTTP status), or fail.
wait_http() {
  local url=$1 secs=${2:-10} i
  for i in $(seq 1 $((secs * 20))); do
    if curl -s -o /dev/null --max-time 1 "$url"; then return 0; fi
    sleep 0.05
  done
  return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null; }

# The chat.completion every bench upstream answers with (~300 B).
CHAT_ANSWER='{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,"model":"up-model","choices":[{"index":0,"message":{"role":"assistant","content":"PONG"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":2,"total_tokens":21},"system_fingerprint":"fp_bench"}'

# nginx_conf DIR WORKERS HTTP: DIR/nginx.conf with what every bench nginx
# shares (pid, error log and temp paths in DIR, no access log, connections
# kept for the whole run, 4 MiB bodies) around HTTP, the text of its http
# block (servers, upstreams, directives of its own).
nginx_conf() {
  local dir=$1 workers=$2 http=$3
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<NGX
worker_processes $workers;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_max_body_size 4m;
    client_body_buffer_size 256k;
    client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp;
    fastcgi_temp_path $dir/tmp; uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
$http
}
NGX
}

# nginx_upstream NAME ADDR: an upstream block with a pooled keepalive;
# nginx_pass SCHEME NAME [DIRECTIVES]: the location that proxies to it over
# HTTP/1.1, as in the reference measurements (DIRECTIVES: an https
# upstream's proxy_ssl_* lines). Both are text for nginx_conf's HTTP.
nginx_upstream() { printf '    upstream %s { server %s; keepalive 128; }\n' "$1" "$2"; }
nginx_pass() {
  printf '        location / {\n            proxy_pass %s://%s;\n            proxy_http_version 1.1;\n            proxy_set_header Connection "";\n%s        }\n' \
    "$1" "$2" "${3:-}"
}

# write_nginx_upstream DIR PORT RESPONSE_FILE WORKERS: an nginx that answers
# every request with the fixed chat.completion JSON in RESPONSE_FILE.
write_nginx_upstream() {
  local dir=$1 port=$2 resp=$3 workers=$4
  nginx_conf "$dir" "$workers" "    default_type application/json;
    server {
        listen 127.0.0.1:$port reuseport;
        location / { return 200 '$(cat "$resp")'; }
    }"
}

# write_nginx_proxy DIR PORT UPSTREAM_PORT WORKERS: nginx proxy_pass with a
# pooled upstream keepalive, as in the reference measurements.
write_nginx_proxy() {
  local dir=$1 port=$2 up=$3 workers=$4
  nginx_conf "$dir" "$workers" "$(nginx_upstream origin_ka "127.0.0.1:$up")
    server {
        listen 127.0.0.1:$port reuseport;
$(nginx_pass http origin_ka)
    }"
}

# nginx_chat_pair UP_PORT NGX_PORT RESPONSE_FILE: the two nginx of the chat
# benchmarks, started and answering: in $TMP/up an upstream answering every
# request with RESPONSE_FILE (on CPU 1), in $TMP/ngx proxy_pass to it (CPU 0).
nginx_chat_pair() {
  write_nginx_upstream "$TMP/up" "$1" "$3" "$WORKERS"
  write_nginx_proxy "$TMP/ngx" "$2" "$1" "$WORKERS"
  nginx_start "$TMP/up" 1
  nginx_start "$TMP/ngx" 0
  nginx_wait "http://127.0.0.1:$1/" upstream "$TMP/up"
  nginx_wait "http://127.0.0.1:$2/" proxy "$TMP/ngx"
}

# nginx_start DIR CPU: nginx with DIR/nginx.conf in the background, on CPU
# 0 or 1 when PIN=1, stopped by bench_cleanup.
nginx_start() {
  if [ "$2" = 1 ]; then
    "${ON_CPU1[@]}" nginx -p "$1" -c "$1/nginx.conf" -e "$1/error.log" &
  else
    "${ON_CPU0[@]}" nginx -p "$1" -c "$1/nginx.conf" -e "$1/error.log" &
  fi
  PIDS+=($!)
  NGINX_PIDS+=($!)
}

# nginx_wait URL WHAT DIR: until the nginx of DIR answers URL; else the
# script ends with its error log.
nginx_wait() {
  wait_http "$1" || { echo "bench: $2 nginx did not start" >&2; cat "$3/error.log" >&2; exit 1; }
}

# cpx_run DIR PORT: cliproxy with DIR/config.yaml on CPU 0 (PIN=1), its
# output in DIR/stdout and DIR/stderr, stopped by bench_cleanup. Returns
# once it answers GET /healthz with 200, else ends the script with its last
# log lines. CPX_RUN_PID is its pid.
cpx_run() {
  local dir=$1 port=$2 i
  "${ON_CPU0[@]}" "$CPX_BIN" --config "$dir/config.yaml" >"$dir/stdout" 2>"$dir/stderr" &
  CPX_RUN_PID=$!
  PIDS+=("$CPX_RUN_PID")
  CPX_PIDS+=("$CPX_RUN_PID")
  for i in $(seq 1 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/healthz")" = 200 ] && return 0
    kill -0 "$CPX_RUN_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "bench: cliproxy ($dir) did not answer /healthz: $(tail -c 600 "$dir/stderr")" >&2
  exit 2
}

# bench_check WHAT URL BODY_FILE PATTERN...: one POST of BODY_FILE (with
# anthropic-version, which the other formats ignore) must answer 200 with
# every PATTERN in its body (kept in $TMP/res/check); else the script ends.
bench_check() {
  local what=$1 url=$2 body=$3 code p
  shift 3
  code=$(curl -s -o "$TMP/res/check" -w '%{http_code}' --max-time 5 -X POST -H 'Content-Type: application/json' \
    -H 'anthropic-version: 2023-06-01' --data-binary @"$body" "$url" || true)
  [ "$code" = 200 ] || { echo "bench: $what check failed: HTTP $code $(head -c 400 "$TMP/res/check")" >&2; exit 2; }
  for p in "$@"; do
    grep -q -- "$p" "$TMP/res/check" ||
      { echo "bench: $what check failed: no $p in $(head -c 400 "$TMP/res/check")" >&2; exit 2; }
  done
}

# bench_keep KEY LOG WHAT: the BENCH line of a wrk log (bench/lib/post.lua)
# into $TMP/res/KEY and "  WHAT: N req/s, p99 N us" on stderr; a log
# without one ends the script.
bench_keep() {
  local line
  line=$(grep '^BENCH' "$2" || true)
  [ -n "$line" ] || { echo "bench: wrk failed for $3:" >&2; cat "$2" >&2; exit 1; }
  echo "$line" >"$TMP/res/$1"
  echo "  $3: $(echo "$line" | field rps) req/s, p99 $(echo "$line" | field p99_us) us" >&2
}

# bench_med KEY FIELD: the median of FIELD over the RUNS runs kept as
# $TMP/res/KEY.<run>; bench_errs KEY: their failed requests, summed.
bench_med() {
  local n
  for n in $(seq 1 "$RUNS"); do field "$2" <"$TMP/res/$1.$n"; done | median
}
bench_errs() {
  local e=0 n k v
  for n in $(seq 1 "$RUNS"); do
    for k in err_connect err_read err_write err_status err_timeout; do
      v=$(field "$k" <"$TMP/res/$1.$n"); e=$((e + v))
    done
  done
  echo "$e"
}

# bench_report NAME: what the script's `summary` prints, to stdout and to
# bench/out/NAME-<time>.txt.
bench_report() {
  local out
  mkdir -p bench/out
  out="bench/out/$1-$(date -u +%Y%m%d-%H%M%S).txt"
  summary | tee "$out"
  echo "(written to $out)" >&2
}

# write_cliproxy_config FILE PORT UPSTREAM_PORT AUTH_DIR WORKERS
# (FAST_PATH=0 in the environment: every request through the Lua pipeline)
write_cliproxy_config() {
  cat >"$1" <<EOF
host: "127.0.0.1"
port: $2
auth-dir: "$4"
debug: false
api-keys: []
request-retry: 0
workers: $5
fast-path: $([ "${FAST_PATH:-1}" = 0 ] && echo false || echo true)
openai-compatibility:
  - name: "bench-upstream"
    base-url: "http://127.0.0.1:$3/v1"
    api-key-entries:
      - api-key: "bench-upstream-key"
    models:
      - name: "up-model"
        alias: "bench-model"
EOF
}

# median of the numbers on stdin (one per line)
median() {
  sort -g | awk '{a[NR]=$1} END { if (NR == 0) { print "nan"; exit } if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2 }'
}

# field NAME < "BENCH k=v ..." line
field() { tr ' ' '\n' | awk -F= -v k="$1" '$1 == k {print $2}'; }

# bench_options "$@": the wrk benchmarks' shared settings from the
# environment (RUNS, DURATION, CONNS, THREADS, WORKERS, PIN, CPX_BIN;
# --quick = 1 run x 3 s) and a check for the tools they need. Needs ROOT.
bench_options() {
  RUNS=${RUNS:-3}
  DURATION=${DURATION:-8s}
  CONNS=${CONNS:-32}
  THREADS=${THREADS:-2}
  WORKERS=${WORKERS:-1}
  PIN=${PIN:-0}
  CPX_BIN=${CPX_BIN:-$ROOT/build/cliproxy}
  if [ "${1:-}" = "--quick" ]; then RUNS=1; DURATION=3s; fi
  local tool
  for tool in wrk nginx curl luajit; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (scripts/setup.sh --test installs it)" >&2; exit 1; }
  done
}

# bench_init NAME: a temporary directory ($TMP, removed on exit) and the
# clean-up of every server the script starts: nginx pids in NGINX_PIDS (QUIT),
# cliproxy in CPX_PID and CPX_PIDS (TERM), all of them in PIDS (waited for,
# then KILL).
# ON_CPU0/ON_CPU1 are command prefixes pinning to a CPU when PIN=1 (prefixes,
# not functions, so that $! is the server's own pid).
bench_init() {
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  PIDS=(); NGINX_PIDS=(); CPX_PID=""; CPX_PIDS=()
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
  ON_CPU0=(); ON_CPU1=()
  if [ "${PIN:-0}" = 1 ] && command -v taskset >/dev/null; then ON_CPU0=(taskset -c 0); ON_CPU1=(taskset -c 1); fi
  mkdir -p "$TMP/body" "$TMP/res"
}

bench_cleanup() {
  local pid i
  for pid in "${NGINX_PIDS[@]}"; do kill -QUIT "$pid" 2>/dev/null || true; done
  [ -n "$CPX_PID" ] && kill -TERM "$CPX_PID" 2>/dev/null || true
  for pid in "${CPX_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
