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

# write_nginx_upstream DIR PORT RESPONSE_FILE WORKERS: an nginx that answers
# every request with the fixed chat.completion JSON in RESPONSE_FILE.
write_nginx_upstream() {
  local dir=$1 port=$2 resp=$3 workers=$4 body
  body=$(cat "$resp")
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
worker_processes $workers;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type application/json;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_max_body_size 4m;
    client_body_buffer_size 256k;
    client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp;
    fastcgi_temp_path $dir/tmp; uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
    server {
        listen 127.0.0.1:$port reuseport;
        location / { return 200 '$body'; }
    }
}
EOF
}

# write_nginx_proxy DIR PORT UPSTREAM_PORT WORKERS: nginx proxy_pass with a
# pooled upstream keepalive, as in the reference measurements.
write_nginx_proxy() {
  local dir=$1 port=$2 up=$3 workers=$4
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
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
    upstream origin_ka { server 127.0.0.1:$up; keepalive 128; }
    server {
        listen 127.0.0.1:$port reuseport;
        location / {
            proxy_pass http://origin_ka;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
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
