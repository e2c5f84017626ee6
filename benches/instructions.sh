#!/usr/bin/env bash
# benches/instructions.sh — user-space instructions per request, exact and repeatable: the
# release binary under `valgrind --tool=callgrind`, driven by h2load on one keep-alive
# connection, one request at a time. Wall-clock figures on this shared 2-core machine move by
# several per cent from run to run; instruction counts move by well under 1 %, so a change of a
# few per cent is visible here when wrk cannot see it.
#
# Cases (each against a fresh gateway with one token and one route /sd/ -> a local nginx that
# answers `return 200`):
#   proxy    GET /sd/x with a valid token, HTTP/1.1 (h2load --h1)
#   refusal  GET /sd/x without Authorization: the 401
#   check    GET /auth on the forward-auth listener with the headers nginx's auth_request sends
#   h2       GET /sd/x with a valid token over h2c (HTTP/2 with prior knowledge), one stream
#   large    GET /sd/large with a valid token, HTTP/1.1: a 256 KiB response (not in the default
#            CASES; what copying a body costs, e.g. for hyper's writev setting)
# For each case the gateway runs twice, with N1 and N2 requests; instructions per request =
# (Ir(N2) - Ir(N1)) / (N2 - N1), which cancels start-up, the token's creation and shutdown.
# TOKIO_WORKER_THREADS=1 and the access log off, as in BENCHMARKS.md's earlier tables.
#
#   benches/instructions.sh                     # all cases, REPS=2, N1=5000, N2=25000
#   CASES="proxy refusal" REPS=1 benches/instructions.sh
#   BIN=/path/to/other/tokengate benches/instructions.sh   # another build (no cargo build)
#   PROFILE_DIR=/tmp/prof CASES=proxy REPS=1 benches/instructions.sh
#       # also keeps each run's callgrind output there, as CASE-N.out, for callgrind_annotate
#
# Needs valgrind, h2load (nghttp2-client), nginx, curl, python3. Loopback and ephemeral ports
# only; stops what it starts. Prints one line per case and repetition, then a summary table.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
REPS=${REPS:-2}
N1=${N1:-5000}
N2=${N2:-25000}
CASES=${CASES:-proxy refusal check h2}
PIN=0
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
for tool in valgrind h2load curl python3; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: needs $tool" >&2; exit 2; }
done
[[ -x $NGINX ]] || { echo "instructions.sh: needs nginx" >&2; exit 2; }
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/tokengate
fi
WORK=$(mktemp -d /tmp/tokengate-ir.XXXXXX)
# shellcheck source=benches/lib.sh
. benches/lib.sh
KEY=bench-admin-key-0123456789abcdefghijklmnopqrstuvwxyz

# The upstream: nginx answering 200 to everything, one worker.
UP=$(free_port)
mkdir -p "$WORK/up"
cat >"$WORK/up/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/up/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/up; proxy_temp_path $WORK/up; fastcgi_temp_path $WORK/up;
  uwsgi_temp_path $WORK/up; scgi_temp_path $WORK/up;
  server {
    listen 127.0.0.1:$UP; keepalive_requests 1000000;
    location / { return 200 "ok\n"; }
    location = /sd/large { alias $WORK/up/large.bin; }
  }
}
CONF
head -c 262144 /dev/urandom >"$WORK/up/large.bin"
# nginx's worker (run by root, it is `nobody`) reads the file: the temp dir is 0700.
chmod 755 "$WORK" "$WORK/up"; chmod 644 "$WORK/up/large.bin"
"$NGINX" -p "$WORK/up" -e "$WORK/up/error.log" -c "$WORK/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_up "http://127.0.0.1:$UP/"

# run_case CASE N: Ir of one gateway process serving N requests of CASE.
run_case() {
  local case=$1 n=$2 d proxy admin fa pid token out
  d=$(mktemp -d "$WORK/gw.XXXXXX")
  proxy=$(free_port); admin=$(free_port); fa=$(free_port)
  cat >"$d/tokengate.toml" <<CONF
[proxy]
listen = "127.0.0.1:$proxy"
access_log = false
[admin]
listen = "127.0.0.1:$admin"
key_file = "$d/admin.key"
[store]
url = "sqlite://$d/tokengate.db"
[forward_auth]
listen = "127.0.0.1:$fa"
[[routes]]
path_prefix = "/sd/"
access = "security-director"
upstream = "http://127.0.0.1:$UP"
CONF
  TOKIO_WORKER_THREADS=1 TOKENGATE_ADMIN_KEY=$KEY RUST_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$d/callgrind.out" \
    "$BIN" --config "$d/tokengate.toml" serve 2>"$d/stderr" &
  pid=$!
  for _ in $(seq 1200); do
    curl -sf -o /dev/null "http://127.0.0.1:$admin/healthz" && break
    kill -0 "$pid" 2>/dev/null || { cat "$d/stderr" >&2; exit 1; }
    sleep 0.1
  done
  token=$(curl -sf -X POST "http://127.0.0.1:$admin/v1/tokens" -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' -d '{"name":"bench","access":["security-director"]}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  case $case in
    proxy) out=$(h2load --h1 -c 1 -m 1 -n "$n" -H "Authorization: Bearer $token" \
                 "http://127.0.0.1:$proxy/sd/x") ;;
    refusal) out=$(h2load --h1 -c 1 -m 1 -n "$n" "http://127.0.0.1:$proxy/sd/x") ;;
    large) out=$(h2load --h1 -c 1 -m 1 -n "$n" -H "Authorization: Bearer $token" \
                 "http://127.0.0.1:$proxy/sd/large") ;;
    check) out=$(h2load --h1 -c 1 -m 1 -n "$n" -H "Authorization: Bearer $token" \
                 -H 'X-Forwarded-Uri: /sd/x' -H 'X-Forwarded-Method: GET' \
                 -H 'X-Forwarded-Host: api.example' -H 'X-Forwarded-For: 192.0.2.7' \
                 "http://127.0.0.1:$fa/auth") ;;
    h2) out=$(h2load -c 1 -m 1 -n "$n" -H "Authorization: Bearer $token" \
              "http://127.0.0.1:$proxy/sd/x") ;;
  esac
  local want=2xx; [[ $case == refusal ]] && want=4xx
  # "status codes: 25000 2xx, 0 3xx, 0 4xx, 0 5xx": every answer of the expected class.
  grep -qE "^status codes: (.*, )?$n $want" <<<"$out" || {
    echo "instructions.sh: $case: not every answer was $want:" >&2; echo "$out" >&2; exit 1; }
  kill -TERM "$pid"; wait "$pid" || true
  # callgrind's totals line: the process's instructions (all threads).
  awk '/^(summary|totals):/ { print $2; exit }' "$d/callgrind.out"
  if [[ -n ${PROFILE_DIR:-} ]]; then mkdir -p "$PROFILE_DIR"; cp "$d/callgrind.out" "$PROFILE_DIR/$case-$n.out"; fi
  rm -rf "$d"
}

declare -A RESULT
for case in $CASES; do
  for rep in $(seq "$REPS"); do
    a=$(run_case "$case" "$N1")
    b=$(run_case "$case" "$N2")
    per=$(( (b - a) / (N2 - N1) ))
    echo "$case rep $rep: Ir($N1)=$a Ir($N2)=$b -> $per instructions per request"
    RESULT[$case]="${RESULT[$case]:-}${RESULT[$case]:+, }$per"
  done
done
echo
echo "| case | instructions per request ($REPS reps) |"
echo "|---|---|"
for case in $CASES; do echo "| $case | ${RESULT[$case]} |"; done
