#!/usr/bin/env bash
# benches/load.sh — the side-by-side load comparison in one command:
# builds the release binary, writes a config routing /sd/ to the comparison script's upstream
# (127.0.0.1:9001), creates a token through the CLI, then runs ../shared/bench/proxy-compare.sh
# (direct upstream, nginx, HAProxy and tokengate, interleaved rounds, medians and ratios).
#
#   benches/load.sh                         # access log off (as nginx in the comparison)
#   ACCESS_LOG=true TARGETS="nginx tokengate" benches/load.sh   # the cost of the access log
#   PIN=0 benches/load.sh                   # unpinned run
#   MODE=forward-auth benches/load.sh        # nginx auth_request -> tokengate vs nginx map (benches/forward_auth.sh)
#
# Every variable of proxy-compare.sh (ROUNDS, DURATION, CONNS, TARGETS, PIN, ...) passes through.
# Needs wrk, nginx, haproxy, curl (apt-get install wrk nginx haproxy curl). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${MODE:-} == forward-auth ]]; then exec benches/forward_auth.sh "$@"; fi
COMPARE=${PROXY_COMPARE:-../shared/bench/proxy-compare.sh}
[[ -x $COMPARE ]] || { echo "load.sh: $COMPARE not found (set PROXY_COMPARE)" >&2; exit 2; }
PORT=${TG_PORT:-18080}
ADMIN_PORT=${TG_ADMIN_PORT:-18090}
ACCESS_LOG=${ACCESS_LOG:-false}

# TOKENGATE_BIN: measure a given binary (e.g. an older build for an A/B comparison).
if [[ -n ${TOKENGATE_BIN:-} ]]; then
  BIN=$TOKENGATE_BIN
else
  cargo build --release --quiet
  BIN=$PWD/target/release/tokengate
fi
WORK=$(mktemp -d /tmp/tokengate-load.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
KEY="bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat >"$WORK/tokengate.toml" <<CONF
[proxy]
listen = "127.0.0.1:$PORT"
access_log = $ACCESS_LOG
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
key_file = "$WORK/admin.key"
[store]
url = "sqlite://$WORK/tokengate.db"
[[routes]]
path_prefix = "/sd/"
access = "security-director"
upstream = "http://127.0.0.1:${UPSTREAM_PORT:-9001}"
strip_prefix = true
CONF

# Create the token on a short-lived instance, then let proxy-compare start (and pin) its own.
TOKENGATE_ADMIN_KEY=$KEY RUST_LOG=warn "$BIN" --config "$WORK/tokengate.toml" serve &
SETUP_PID=$!
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/healthz" && break
  sleep 0.1
done
TOKEN=$(TOKENGATE_ADMIN_KEY=$KEY "$BIN" --config "$WORK/tokengate.toml" --json \
  token create bench --access security-director |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
kill -TERM "$SETUP_PID"
wait "$SETUP_PID" || true

echo "tokengate: access_log=$ACCESS_LOG, token index of 1 token" >&2
TOKENGATE_CMD="env TOKENGATE_ADMIN_KEY=$KEY RUST_LOG=${RUST_LOG:-warn,tokengate::access=info} $BIN --config $WORK/tokengate.toml serve" \
TOKENGATE_URL="http://127.0.0.1:$PORT/sd/" \
TOKENGATE_TOKEN="$TOKEN" \
  "$COMPARE"
