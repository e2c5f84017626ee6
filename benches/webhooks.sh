#!/usr/bin/env bash
# benches/webhooks.sh — webhook delivery, end to end, with the release binary and a local
# receiver (Python, plain HTTP on loopback; it verifies every signature with the
# standardwebhooks package when that is installed). Not part of CI.
#
#   1. latency: LAT changes (token.created), one at a time; per event the time from sending
#      the admin request to the receiver's answer (p50, p99, max): the API's commit, then
#      wake → claim → sign → POST.
#   2. drain: N events queued (16 creates at a time) while the receiver answers 503, then it
#      answers 204: each row's second attempt falls due ~5 s after its first, so when the
#      queueing takes under 4 s all are due together: how long until all N are delivered, in
#      events/s (one endpoint: one lane, 16 attempts in flight).
#
#   N=1000 LAT=200 benches/webhooks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
LAT=${LAT:-200}
PIN=0
WORK=$(mktemp -d)
source benches/lib.sh

cargo build --release -q
BIN=target/release/tokengate
RPORT=$(free_port)
PPORT=$(free_port)
APORT=$(free_port)

cat >"$WORK/receiver.py" <<'PY'
import http.server, os, sys, time, json
port, log, flag, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
try:
    from standardwebhooks.webhooks import Webhook
    wh = Webhook(open(secret).read().strip())
except Exception:
    wh = None
out = open(log, "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        down = os.path.exists(flag)
        if not down:
            if wh:
                wh.verify(body, {k: self.headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")})
            name = json.loads(body)["data"]["name"]
            out.write(f"{time.time():.6f} {name}\n")
        self.send_response(503 if down else 204)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY

cat >"$WORK/tokengate.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PPORT"
access_log = false
failed_auth_limit = 0
[admin]
listen = "127.0.0.1:$APORT"
key_file = "$WORK/admin.key"
[store]
url = "sqlite://$WORK/tokengate.db"
[[webhooks.endpoints]]
url = "http://127.0.0.1:$RPORT/hooks"
secret_file = "$WORK/webhook.secret"
events = ["token.created"]
EOF
export TOKENGATE_ADMIN_KEY=bench-admin-key-0123456789abcdefghijklmnop
RUST_LOG=warn $BIN --config "$WORK/tokengate.toml" serve 2>"$WORK/gateway.log" &
PIDS+=($!)
wait_up "http://127.0.0.1:$APORT/healthz"
python3 "$WORK/receiver.py" "$RPORT" "$WORK/got.log" "$WORK/down" "$WORK/webhook.secret" &
PIDS+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$RPORT/" && break; sleep 0.05; done
: >"$WORK/got.log"

create() {
  curl -sf -o /dev/null -X POST "http://127.0.0.1:$APORT/v1/tokens" \
    -H "Authorization: Bearer $TOKENGATE_ADMIN_KEY" -H 'content-type: application/json' \
    -d "{\"name\":\"$1\",\"access\":[\"security-director\"]}"
}
lines() { wc -l <"$WORK/got.log" | tr -d ' '; }

echo "== latency: $LAT changes, one at a time"
for i in $(seq "$LAT"); do
  before=$(lines)
  echo "$(date +%s.%N) lat-$i" >>"$WORK/sent.log"
  create "lat-$i"
  for _ in $(seq 2000); do [[ $(lines) -gt $before ]] && break; sleep 0.001; done
done
python3 - "$WORK/sent.log" "$WORK/got.log" <<'PY'
import sys
sent = {n: float(t) for t, n in (l.split() for l in open(sys.argv[1]))}
got = {n: float(t) for t, n in (l.split() for l in open(sys.argv[2]))}
d = sorted((got[n] - sent[n]) * 1000 for n in sent if n in got)
q = lambda p: d[min(len(d) - 1, int(p * len(d)))]
print(f"delivered {len(d)}/{len(sent)}; ms from sending the change to its delivery: p50 {q(.5):.1f}, p99 {q(.99):.1f}, max {d[-1]:.1f}")
print("(includes starting curl and the admin API's committed write)")
PY

echo "== drain: $N events due at once"
# The gateway stops; N copies of a delivered row go into its outbox as new pending deliveries
# (due now); it starts again: what is timed is the dispatcher alone, from start to the last.
kill -TERM "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true
python3 - "$WORK/tokengate.db" "$N" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
ep, url, payload = db.execute("SELECT endpoint, url, payload FROM webhook_outbox LIMIT 1").fetchone()
now = int(time.time() * 1000)
db.executemany(
    "INSERT INTO webhook_outbox (id, endpoint, url, event_type, payload, created_at, next_attempt_at)"
    " VALUES (?, ?, ?, 'token.created', ?, ?, ?)",
    [(f"msg_bench{i:06d}", ep, url, payload, now, now) for i in range(int(sys.argv[2]))])
db.commit()
PY
: >"$WORK/got.log"
start=$(date +%s.%N)
RUST_LOG=warn $BIN --config "$WORK/tokengate.toml" serve 2>>"$WORK/gateway.log" &
PIDS+=($!)
while [[ $(lines) -lt $N ]]; do sleep 0.02; done
python3 - "$start" "$WORK/got.log" "$N" <<'PY'
import sys
start = float(sys.argv[1])
times = sorted(float(l.split()[0]) for l in open(sys.argv[2]))
n = int(sys.argv[3])
print(f"first delivery {times[0] - start:.2f} s after the start; all {n} in {times[-1] - times[0]:.2f} s from the first: {n / max(times[-1] - times[0], 1e-9):.0f} events/s")
PY
curl -s -H "Authorization: Bearer $TOKENGATE_ADMIN_KEY" "http://127.0.0.1:$APORT/metrics" | grep '^tokengate_webhook'
