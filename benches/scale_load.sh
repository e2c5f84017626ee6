#!/usr/bin/env bash
# benches/scale_load.sh — the two load scale cases of the performance issue, in one command.
#
#  1. Client IPs: one token used from 10 000 distinct client IPs versus from one IP. wrk
#     connects from 127.0.0.1, which the gateway trusts as a proxy, and a Lua script sets
#     X-Forwarded-For (so both runs parse the same header; only the number of IPs differs).
#  2. Invalid-token flood: FLOOD_CONNS (60) connections send distinct unknown secrets, well
#     formed with a valid checksum (examples/unknown_secrets.rs: each costs a hash and an index
#     miss), each request from its own client IP out of 2^20 (so the failed-auth limiter never
#     answers 429: this measures the refusal path), while VALID_CONNS (4) connections send
#     the valid token (about 90 % of the requests are invalid; the share is printed). The
#     baseline run is the same connections, all valid. The valid connections' p99 is compared.
#
#   benches/scale_load.sh                 # ROUNDS=5 DURATION=5s
#
# Rounds interleave the variants, in alternating order; the tables show medians. The gateway is pinned to CPU 0,
# wrk and the upstream (nginx, one worker) to CPU 1, as in proxy-compare.sh. Needs wrk, nginx,
# curl, bc, python3. Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
FLOOD_CONNS=${FLOOD_CONNS:-60}
VALID_CONNS=${VALID_CONNS:-4}
DURATION=${DURATION:-5s}
UP_PORT=${UPSTREAM_PORT:-19101}
PORT=${TG_PORT:-19180}
ADMIN_PORT=${TG_ADMIN_PORT:-19190}
if [[ -n ${TOKENGATE_BIN:-} ]]; then
  BIN=$TOKENGATE_BIN
else
  cargo build --release --quiet --bin tokengate
  BIN=$PWD/target/release/tokengate
fi
cargo build --release --quiet --example unknown_secrets
WORK=$(mktemp -d /tmp/tokengate-scale-load.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $WORK/up.pid ]] && kill "$(cat "$WORK/up.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/upstream.conf" <<EOF
worker_processes 1;
pid $WORK/up.pid;
error_log $WORK/up.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/t1; proxy_temp_path $WORK/t2; fastcgi_temp_path $WORK/t3;
  uwsgi_temp_path $WORK/t4; scgi_temp_path $WORK/t5;
  keepalive_requests 1000000; keepalive_timeout 60s;
  server { listen 127.0.0.1:$UP_PORT backlog=4096; default_type application/json;
           location / { return 200 '{"ok":true}\n'; } }
}
EOF
taskset -c 1 nginx -c "$WORK/upstream.conf"

KEY="bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat >"$WORK/tokengate.toml" <<CONF
[proxy]
listen = "127.0.0.1:$PORT"
access_log = false
trusted_proxies = ["127.0.0.1/32"]
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
key_file = "$WORK/admin.key"
[store]
url = "sqlite://$WORK/tokengate.db"
[[routes]]
path_prefix = "/sd/"
access = "security-director"
upstream = "http://127.0.0.1:$UP_PORT"
strip_prefix = true
CONF
TOKENGATE_ADMIN_KEY=$KEY RUST_LOG=warn taskset -c 0 "$BIN" --config "$WORK/tokengate.toml" serve &
PIDS+=($!)
TG_PID=$!
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/healthz" && break
  sleep 0.1
done
TOKEN=$(TOKENGATE_ADMIN_KEY=$KEY "$BIN" --config "$WORK/tokengate.toml" --json \
  token create bench --access security-director |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
URL="http://127.0.0.1:$PORT/sd/"
target/release/examples/unknown_secrets 100000 >"$WORK/unknown.txt"
[[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$URL") == 200 ]] ||
  { echo "the token is not accepted" >&2; exit 1; }

# --- Lua scripts ------------------------------------------------------------------------
# Requests are built once, when the script loads, so that wrk (sharing CPU 1 with the
# upstream) spends its time sending them, not formatting them in Lua.
# Client IPs: N distinct X-Forwarded-For values, cycled.
cat >"$WORK/ips.lua" <<'LUA'
local n, i = tonumber(os.getenv("IPS")), 0
local token = os.getenv("TOKEN")
local reqs = {}
for k = 1, n do
  local ip = "10." .. math.floor(k / 65536) % 256 .. "." .. math.floor(k / 256) % 256 .. "." .. k % 256
  reqs[k] = wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. token, ["X-Forwarded-For"] = ip })
end
request = function()
  i = i % n + 1
  return reqs[i]
end
LUA
# Flood: 100 000 distinct unknown secrets, cycled, each with a random client IP out of 2^20.
cat >"$WORK/flood.lua" <<LUA
local reqs = {}
math.randomseed(os.time())
for line in io.lines("$WORK/unknown.txt") do
  local r = math.random(0, 1048575)
  local ip = "10." .. math.floor(r / 65536) .. "." .. math.floor(r / 256) % 256 .. "." .. r % 256
  reqs[#reqs + 1] = wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. line, ["X-Forwarded-For"] = ip })
end
local i = 0
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
done = function(summary, latency, requests)
  io.write(string.format("FLOOD requests=%d non2xx=%d\n", summary.requests, summary.errors.status))
end
LUA
cat >"$WORK/report.lua" <<'LUA'
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d rps=%.0f p50=%.3f p99=%.3f non2xx=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.errors.status))
end
LUA
cat "$WORK/report.lua" >>"$WORK/ips.lua"

run_ips() { # IPS -> RESULT line
  IPS=$1 TOKEN=$TOKEN taskset -c 1 wrk -t1 -c64 -d"$DURATION" -s "$WORK/ips.lua" "$URL" | grep '^RESULT'
}
run_valid() { # conns -> RESULT line (valid token only)
  printf 'local r = wrk.format("GET", nil, { ["Authorization"] = "Bearer %s" })\nrequest = function() return r end\n' "$TOKEN" >"$WORK/valid.lua"
  cat "$WORK/report.lua" >>"$WORK/valid.lua"
  taskset -c 1 wrk -t1 -c"$1" -d"$DURATION" -s "$WORK/valid.lua" "$URL" | grep '^RESULT'
}
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

declare -a ONE TENK BASE FLOOD FLOODN
run_base() { # -> RESULT line of the valid connections, all FLOOD_CONNS others valid too
  taskset -c 1 wrk -t1 -c"$FLOOD_CONNS" -d"$DURATION" -H "Authorization: Bearer $TOKEN" "$URL" >/dev/null &
  run_valid "$VALID_CONNS"
  wait $!
}
run_flood() { # -> RESULT line of the valid connections, FLOOD_CONNS others flooding
  taskset -c 1 wrk -t1 -c"$FLOOD_CONNS" -d"$DURATION" -s "$WORK/flood.lua" "$URL" >"$WORK/flood.out" &
  run_valid "$VALID_CONNS"
  wait $!
}
for r in $(seq "$ROUNDS"); do
  # Each pair runs in alternating order (odd rounds A then B, even rounds B then A), so that
  # whatever a run leaves behind (usage still to flush, limiter entries, WAL to checkpoint)
  # weighs on both variants alike.
  if ((r % 2)); then
    one=$(run_ips 1); tenk=$(run_ips 10000)
    base=$(run_base); flood=$(run_flood)
  else
    tenk=$(run_ips 10000); one=$(run_ips 1)
    flood=$(run_flood); base=$(run_base)
  fi
  fl=$(grep '^FLOOD' "$WORK/flood.out")
  bad=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$fl")
  fl="$fl invalid_share=$(echo "scale=3; $bad / ($bad + $(field requests "$flood"))" | bc)"
  echo "round $r: 1 IP $(field rps "$one") req/s | 10k IPs $(field rps "$tenk") req/s |" \
    "valid p99 $(field p99 "$base") ms, under flood $(field p99 "$flood") ms ($fl)" >&2
  ONE+=("$one"); TENK+=("$tenk"); BASE+=("$base"); FLOOD+=("$flood"); FLOODN+=("$fl")
done
RSS=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$TG_PID/status")
ratio_ips=$(for i in "${!ONE[@]}"; do echo "$(field rps "${TENK[$i]}") / $(field rps "${ONE[$i]}")" | bc -l; done | median)
ratio_p99=$(for i in "${!BASE[@]}"; do echo "$(field p99 "${FLOOD[$i]}") / $(field p99 "${BASE[$i]}")" | bc -l; done | median)
med() { local k=$1; shift; for x in "$@"; do field "$k" "$x"; done | median; }
printf '\n%-28s %10s %9s %9s\n' case req/s p50_ms p99_ms
printf '%-28s %10.0f %9.3f %9.3f\n' "1 client IP" "$(med rps "${ONE[@]}")" "$(med p50 "${ONE[@]}")" "$(med p99 "${ONE[@]}")"
printf '%-28s %10.0f %9.3f %9.3f\n' "10 000 client IPs" "$(med rps "${TENK[@]}")" "$(med p50 "${TENK[@]}")" "$(med p99 "${TENK[@]}")"
printf '%-28s %10.0f %9.3f %9.3f\n' "valid, no flood" "$(med rps "${BASE[@]}")" "$(med p50 "${BASE[@]}")" "$(med p99 "${BASE[@]}")"
printf '%-28s %10.0f %9.3f %9.3f\n' "valid, under flood" "$(med rps "${FLOOD[@]}")" "$(med p50 "${FLOOD[@]}")" "$(med p99 "${FLOOD[@]}")"
printf '\n10k IPs / 1 IP throughput (median of per-round ratios): %.3f\n' "$ratio_ips"
printf 'valid p99 under flood / without (median of per-round ratios): %.2f\n' "$ratio_p99"
printf 'flood runs: %s\n' "$(printf '%s; ' "${FLOODN[@]}")"
printf 'gateway RSS after the runs: %s MiB\n' "$RSS"
curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" -H "Authorization: Bearer $KEY" |
  grep -E '^tokengate_(auth_refusals|usage_dropped|usage_pending|token_cache)' | head -20 || true
