#!/usr/bin/env bash
# benches/ratelimit.sh — what a per-token rate limit costs a proxied request.
#
# One release gateway with the local backend and one with the Redis backend (127.0.0.1:6379,
# or REDIS_URL), both in front of one nginx upstream (`return 200`). Three variants, measured
# with wrk in interleaved rounds (odd rounds in order, even rounds reversed), so the ratios
# compare runs made a few seconds apart on the same noisy machine:
#   none   a token without a rate limit (local gateway)
#   local  a token limited to 1 000 000 per 1 s: it never trips at these rates (local gateway)
#   redis  the same limit with the Redis backend: one script round trip per request
# Prints per variant the median req/s and p99 latency, and the ratios to `none`.
#
#   benches/ratelimit.sh                    # ROUNDS=5 DURATION=5s CONNS=32 PIN=1
#
# PIN=1 (default) places the gateways on CPU 0 and nginx and wrk on CPU 1 (as
# ../shared/bench/proxy-compare.sh does), so the proxy's cost is what moves the ratios.
#
# Needs wrk, nginx, curl, python3 and a Redis server. Loopback only; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
PIN=${PIN:-1}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
for tool in wrk nginx curl python3; do
  command -v "$tool" >/dev/null || { echo "ratelimit.sh: needs $tool" >&2; exit 2; }
done

cargo build --release --quiet
BIN=$PWD/target/release/tokengate
WORK=$(mktemp -d /tmp/tokengate-rl.XXXXXX)
# shellcheck source=benches/lib.sh
. benches/lib.sh

UP_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok\n"; } }
}
CONF
$(cpu 1) nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_up "http://127.0.0.1:$UP_PORT/"

KEY="bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# start NAME BACKEND: a gateway on fresh ports; sets ${NAME}_PROXY and ${NAME}_ADMIN.
start() {
  local name=$1 backend=$2 proxy admin
  proxy=$(free_port); admin=$(free_port)
  cat >"$WORK/$name.toml" <<CONF
[proxy]
listen = "127.0.0.1:$proxy"
access_log = false
[admin]
listen = "127.0.0.1:$admin"
key_file = "$WORK/$name.key"
[store]
url = "sqlite://$WORK/$name.db"
[rate_limit]
backend = "$backend"
redis_url = "$REDIS_URL"
on_backend_error = "deny"
[[routes]]
path_prefix = "/sd/"
access = "security-director"
upstream = "http://127.0.0.1:$UP_PORT"
strip_prefix = true
CONF
  TOKENGATE_ADMIN_KEY=$KEY RUST_LOG=warn $(cpu 0) "$BIN" --config "$WORK/$name.toml" serve &
  PIDS+=($!)
  wait_up "http://127.0.0.1:$admin/healthz"
  printf -v "${name}_PROXY" '%s' "$proxy"
  printf -v "${name}_ADMIN" '%s' "$admin"
}
# token NAME CONFIG [--rate-limit ...]: prints the secret.
token() {
  local name=$1 conf=$2; shift 2
  TOKENGATE_ADMIN_KEY=$KEY "$BIN" --config "$WORK/$conf.toml" --json \
    token create "$name" --access security-director "$@" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])'
}

start loc local
start red redis
T_NONE=$(token plain loc)
T_LOCAL=$(token limited loc --rate-limit 1000000/1s)
T_REDIS=$(token limited red --rate-limit 1000000/1s)

declare -A URL=([none]="http://127.0.0.1:$loc_PROXY/sd/" [local]="http://127.0.0.1:$loc_PROXY/sd/" [redis]="http://127.0.0.1:$red_PROXY/sd/")
declare -A TOK=([none]=$T_NONE [local]=$T_LOCAL [redis]=$T_REDIS)
VARIANTS=(none local redis)
for v in "${VARIANTS[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${TOK[$v]}" "${URL[$v]}")
  [[ $code == 200 ]] || { echo "$v: got $code, not 200" >&2; exit 1; }
done

run() { # variant -> "rps p99_ms"
  local v=$1
  $(cpu 1) wrk -t1 -c"$CONNS" -d1s -H "Authorization: Bearer ${TOK[$v]}" "${URL[$v]}" >/dev/null
  $(cpu 1) wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "Authorization: Bearer ${TOK[$v]}" "${URL[$v]}" |
    python3 -c '
import re, sys
t = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", t)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
if non2xx: sys.exit("non-2xx answers: " + non2xx.group(1))
print(rps, p99)'
}

declare -A RPS P99
for r in $(seq "$ROUNDS"); do
  order=("${VARIANTS[@]}")
  (( r % 2 == 0 )) && order=(redis local none)
  for v in "${order[@]}"; do
    read -r rps p99 < <(run "$v")
    RPS[$v]+="$rps "; P99[$v]+="$p99 "
    echo "round $r $v: $rps req/s, p99 $p99 ms" >&2
  done
done

python3 - "${RPS[none]}" "${RPS[local]}" "${RPS[redis]}" "${P99[none]}" "${P99[local]}" "${P99[redis]}" <<'PY'
import statistics, sys
names = ["none", "local", "redis"]
rps = {n: [float(x) for x in sys.argv[1 + i].split()] for i, n in enumerate(names)}
p99 = {n: [float(x) for x in sys.argv[4 + i].split()] for i, n in enumerate(names)}
base = statistics.median(rps["none"])
print(f"{'variant':8} {'req/s (median)':>15} {'ratio':>7} {'p99 ms (median)':>16} {'per-request cost':>17}")
for n in names:
    m = statistics.median(rps[n])
    cost = (1 / m - 1 / base) * 1e6
    print(f"{n:8} {m:15.0f} {m / base:7.3f} {statistics.median(p99[n]):16.2f} {cost:14.1f} µs")
PY
