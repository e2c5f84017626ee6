#!/usr/bin/env bash
# benches/scale.sh — the 1 M-token scale case in one command: seeds a SQLite store directly
# (examples/seed_tokens.rs, not through the admin API), starts the release binary on it and
# reports start-up to ready, RSS once ready (and the peak), and the first request for a cold
# token. Needs curl, bc and python3. Loopback only; stops by itself.
#
#   benches/scale.sh                 # 1 000 000 tokens, 3 start-ups
#   N=200000 RUNS=5 benches/scale.sh
#
# The seeded database is kept in $SCALE_DIR (default /tmp/tokengate-scale) and reused while it
# holds N tokens, since seeding 1 M rows takes ~30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
RUNS=${RUNS:-3}
DIR=${SCALE_DIR:-/tmp/tokengate-scale}
if [[ -n ${TOKENGATE_BIN:-} ]]; then
  BIN=$TOKENGATE_BIN
else
  cargo build --release --quiet --bin tokengate --example seed_tokens
  BIN=$PWD/target/release/tokengate
fi
SEED=$PWD/target/release/examples/seed_tokens
mkdir -p "$DIR"
if [[ $(wc -l <"$DIR/secret" 2>/dev/null) != 2 || $(cat "$DIR/n" 2>/dev/null) != "$N" ]]; then
  rm -f "$DIR"/tokengate.db*
  echo "seeding $N tokens into $DIR/tokengate.db" >&2
  "$SEED" "$DIR/tokengate.db" "$N" >"$DIR/secret"
  echo "$N" >"$DIR/n"
fi
FIRST=$(sed -n 1p "$DIR/secret")
COLD=$(sed -n 2p "$DIR/secret")

# A tiny keep-alive HTTP/1.1 upstream on an ephemeral port.
UP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$UP_PORT" >/dev/null 2>&1 <<'PY' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
UP_PID=$!
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ADMIN_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap 'kill $UP_PID 2>/dev/null || true' EXIT
cat >"$DIR/tokengate.toml" <<CONF
[proxy]
listen = "127.0.0.1:$PORT"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
key_file = "$DIR/admin.key"
[store]
url = "sqlite://$DIR/tokengate.db"
[[routes]]
path_prefix = "/sd/"
access = "security-director"
upstream = "http://127.0.0.1:$UP_PORT"
strip_prefix = true
CONF
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$UP_PORT/" && break; sleep 0.1; done

# first_ms: the first request after start-up (includes connecting to the upstream);
# cold_ms: the first request of another token, over the now-warm upstream connection.
printf '%-4s %8s %14s %13s %9s %8s\n' run ready_s rss_ready_MiB rss_peak_MiB first_ms cold_ms
for run in $(seq "$RUNS"); do
  sync
  start=$(date +%s.%N)
  TOKENGATE_ADMIN_KEY=scale-bench-key-0123456789abcdef RUST_LOG=warn "$BIN" --config "$DIR/tokengate.toml" serve &
  PID=$!
  until curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz"; do
    kill -0 $PID 2>/dev/null || { echo "gateway exited" >&2; exit 1; }
    sleep 0.02
  done
  ready=$(echo "$(date +%s.%N) - $start" | bc)
  rss=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
  hwm=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
  # One curl, two requests on one connection: the first token, then the cold one.
  times=$(curl -s -o /dev/null -w '%{http_code} %{time_total}\n' \
    -H "Authorization: Bearer $FIRST" "http://127.0.0.1:$PORT/sd/" \
    --next -s -o /dev/null -w '%{http_code} %{time_total}\n' \
    -H "Authorization: Bearer $COLD" "http://127.0.0.1:$PORT/sd/")
  codes=$(awk '{print $1}' <<<"$times" | tr '\n' ' ')
  [[ $codes == "200 200 " ]] || { echo "requests answered $codes" >&2; kill $PID; exit 1; }
  first=$(awk 'NR==1 {print $2 * 1000}' <<<"$times")
  cold=$(awk 'NR==2 {print $2 * 1000}' <<<"$times")
  printf '%-4s %8.2f %14d %13d %9.2f %8.2f\n' "$run" "$ready" $((rss / 1024)) $((hwm / 1024)) "$first" "$cold"
  kill -TERM $PID
  wait $PID || true
done
