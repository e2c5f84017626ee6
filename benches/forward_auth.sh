#!/usr/bin/env bash
# benches/forward_auth.sh — what a forward-auth check costs, next to nginx checking keys itself
# and next to tokengate proxying the request itself.
#
# One nginx upstream (`return 200`), one release tokengate (proxy and forward-auth listeners,
# route /sd/ -> the upstream, one token), and two nginx fronts (1 worker each). Four variants,
# measured with wrk on /sd/ in interleaved rounds (odd rounds in order, even rounds reversed):
#   map           nginx checks `Authorization: Bearer <token>` against its own `map` (1000 filler
#                 keys + the bench token) and proxies to the upstream
#   auth_request  nginx with README.md's `<!-- forward-auth-config: nginx -->` block verbatim
#                 (addresses localised): one auth_request to tokengate's forward-auth listener per
#                 request, then proxies to the upstream
#   proxy         tokengate's own proxy listener forwarding to the upstream
#   check         wrk straight at tokengate's forward-auth listener (`GET /auth` with the headers
#                 nginx's subrequest carries): the cost of a check at saturation
# Prints per variant the median req/s, p99 latency and CPU µs per request of the proxy side
# (map: the front nginx; auth_request: front nginx + tokengate; proxy: tokengate), read from
# /proc/<pid>/stat (utime+stime, nginx master + workers) around each measured wrk run and
# divided by the requests wrk reports; for auth_request also tokengate's µs per check alone.
# Then the ratios: auth_request req/s / map req/s, and tokengate µs per check / tokengate µs per
# proxied request (the forward-auth target is <= 0.5).
#
#   benches/forward_auth.sh                 # ROUNDS=5 DURATION=5s CONNS=32 PIN=1
#   ROUNDS=2 DURATION=2s benches/forward_auth.sh
#   MODE=forward-auth benches/load.sh       # the same
#
# PIN=1 (default) places tokengate and both nginx fronts on CPU 0, the upstream nginx and wrk on
# CPU 1; PIN=0 leaves placement to the scheduler. Every variant is checked first (401 without
# Authorization, 200 with the token); a wrk run with non-2xx answers or socket errors is
# flagged and makes the script exit 1 after the summary.
#
# Needs wrk, nginx (with auth_request: nginx-light), curl, python3. Loopback and ephemeral ports
# only; stops what it starts.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
PIN=${PIN:-1}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
FILLER=${FILLER:-1000}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
[[ -x $NGINX ]] || { echo "forward_auth.sh: needs nginx (apt-get install nginx-light)" >&2; exit 2; }
for tool in wrk curl python3 pgrep; do
  command -v "$tool" >/dev/null || { echo "forward_auth.sh: needs $tool" >&2; exit 2; }
done
[[ $PIN == 1 ]] && { command -v taskset >/dev/null || { echo "forward_auth.sh: needs taskset (or PIN=0)" >&2; exit 2; }; }
TCK=$(getconf CLK_TCK)

cargo build --release --quiet
BIN=$PWD/target/release/tokengate
WORK=$(mktemp -d /tmp/tokengate-fa.XXXXXX)
# shellcheck source=benches/lib.sh
. benches/lib.sh
# ticks PID...: utime+stime (fields 14 and 15 of /proc/PID/stat, clock ticks) summed.
ticks() {
  local total=0 p s f
  for p in "$@"; do
    s=$(<"/proc/$p/stat"); s=${s##*) }   # drop "pid (comm) ": s starts at field 3
    read -ra f <<<"$s"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}
# nginx_pids MASTER: the master and its workers.
nginx_pids() { { echo "$1"; pgrep -P "$1" || true; } | tr '\n' ' '; }
# nginx_start NAME CPU: runs $WORK/NAME/nginx.conf (prefix $WORK/NAME); sets NGINX_PID.
nginx_start() {
  local d=$WORK/$1
  $(cpu "$2") "$NGINX" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;' &
  PIDS+=($!)
  NGINX_PID=$!
}
# nginx_conf NAME: the nginx.conf around the http-level text on stdin.
nginx_conf() {
  local d=$WORK/$1
  mkdir -p "$d/t"
  { cat <<CONF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $d/t;
  proxy_temp_path $d/t;
  fastcgi_temp_path $d/t;
  uwsgi_temp_path $d/t;
  scgi_temp_path $d/t;
CONF
    cat
    echo "}"
  } >"$d/nginx.conf"
}

# The upstream.
UP_PORT=$(free_port)
nginx_conf up <<CONF
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok\n"; } }
CONF
nginx_start up 1
wait_up "http://127.0.0.1:$UP_PORT/"

# tokengate: proxy + forward-auth listeners, /sd/ -> the upstream.
TG_PROXY=$(free_port); TG_ADMIN=$(free_port); TG_FA=$(free_port)
cat >"$WORK/tokengate.toml" <<CONF
[proxy]
listen = "127.0.0.1:$TG_PROXY"
access_log = false
[admin]
listen = "127.0.0.1:$TG_ADMIN"
key_file = "$WORK/admin.key"
[store]
url = "sqlite://$WORK/tokengate.db"
[forward_auth]
listen = "127.0.0.1:$TG_FA"
[[routes]]
path_prefix = "/sd/"
access = "security-director"
upstream = "http://127.0.0.1:$UP_PORT"
strip_prefix = false
CONF
KEY="bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TOKENGATE_ADMIN_KEY=$KEY RUST_LOG=warn $(cpu 0) "$BIN" --config "$WORK/tokengate.toml" serve &
PIDS+=($!)
TG_PID=$!
wait_up "http://127.0.0.1:$TG_ADMIN/healthz"
TOKEN=$(TOKENGATE_ADMIN_KEY=$KEY "$BIN" --config "$WORK/tokengate.toml" --json \
  token create bench --access security-director |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
AUTH="Authorization: Bearer $TOKEN"

# Front 1: nginx with its own map of keys.
MAP_PORT=$(free_port)
{
  echo '  map_hash_max_size 8192;'
  echo '  map_hash_bucket_size 128;'
  # shellcheck disable=SC2016  # nginx variables, not shell ones
  echo '  map $http_authorization $ok {'
  echo '    default 0;'
  python3 - "$FILLER" <<'PY'
import secrets, string, sys
alphabet = string.ascii_letters + string.digits
for _ in range(int(sys.argv[1])):
    print('    "Bearer tg_%s" 1;' % "".join(secrets.choice(alphabet) for _ in range(36)))
PY
  echo "    \"Bearer $TOKEN\" 1;"
  echo '  }'
  cat <<CONF
  server {
    listen 127.0.0.1:$MAP_PORT;
    location /sd/ {
      if (\$ok = 0) { return 401; }
      proxy_set_header Authorization "";
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://api;
    }
  }
  upstream api { server 127.0.0.1:$UP_PORT; keepalive 64; }
CONF
} | nginx_conf map
nginx_start map 0
MAP_PID=$NGINX_PID

# Front 2: README.md's auth_request configuration, addresses localised.
AR_PORT=$(free_port)
python3 - README.md "127.0.0.1:$TG_FA" "127.0.0.1:$UP_PORT" "$AR_PORT" <<'PY' | nginx_conf ar
import sys
readme, checks, upstream, port = sys.argv[1:]
marker = "<!-- forward-auth-config: nginx -->"
text = open(readme).read()
if marker not in text:
    sys.exit(f"forward_auth.sh: README.md has no {marker}")
body = text.split(marker, 1)[1].split("```", 1)[1].split("\n", 1)[1].split("\n```", 1)[0]
for needle in ("127.0.0.1:8081", "127.0.0.1:9001", "listen 8000;"):
    if needle not in body:
        sys.exit(f"forward_auth.sh: README's nginx block has no {needle!r}")
print(body.replace("127.0.0.1:8081", checks).replace("127.0.0.1:9001", upstream)
      .replace("listen 8000;", f"listen 127.0.0.1:{port};"))
PY
nginx_start ar 0
AR_PID=$NGINX_PID
wait_up "http://127.0.0.1:$MAP_PORT/sd/" -H "$AUTH"
wait_up "http://127.0.0.1:$AR_PORT/sd/" -H "$AUTH"

declare -A URL=([map]="http://127.0.0.1:$MAP_PORT/sd/" [auth_request]="http://127.0.0.1:$AR_PORT/sd/" [proxy]="http://127.0.0.1:$TG_PROXY/sd/" [check]="http://127.0.0.1:$TG_FA/auth")
VARIANTS=(map auth_request proxy check)
# The headers the `check` variant sends, as nginx's subrequest would (the caller's own).
CHECK_HEADERS=(-H "X-Forwarded-Method: GET" -H "X-Forwarded-Uri: /sd/" -H "X-Forwarded-Host: 127.0.0.1" -H "X-Forwarded-For: 127.0.0.1")
extra() { [[ $1 == check ]] && printf '%s\0' "${CHECK_HEADERS[@]}"; true; }
for v in "${VARIANTS[@]}"; do
  mapfile -d '' -t more < <(extra "$v")
  code=$(curl -s -o /dev/null -w '%{http_code}' "${more[@]}" "${URL[$v]}")
  [[ $code == 401 ]] || { echo "$v: without Authorization got $code, not 401" >&2; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' "${more[@]}" -H "$AUTH" "${URL[$v]}")
  [[ $code == 200 ]] || { echo "$v: with the token got $code, not 200" >&2; exit 1; }
done
echo "verified: 401 without Authorization, 200 with the token (map: $FILLER filler keys + 1)" >&2

# run VARIANT ROUND -> "rps p99_ms requests tg_ticks front_ticks errors"
run() {
  local v=$1 out=$WORK/wrk-$1-$2.txt tg0 tg1 fr0=0 fr1=0 front=()
  case $v in
    map) read -ra front <<<"$(nginx_pids "$MAP_PID")" ;;
    auth_request) read -ra front <<<"$(nginx_pids "$AR_PID")" ;;
  esac
  local more=()
  mapfile -d '' -t more < <(extra "$v")
  $(cpu 1) wrk -t1 -c"$CONNS" -d1s -H "$AUTH" "${more[@]}" "${URL[$v]}" >/dev/null
  tg0=$(ticks "$TG_PID"); (( ${#front[@]} )) && fr0=$(ticks "${front[@]}")
  $(cpu 1) wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "$AUTH" "${more[@]}" "${URL[$v]}" >"$out"
  tg1=$(ticks "$TG_PID"); (( ${#front[@]} )) && fr1=$(ticks "${front[@]}")
  python3 - "$out" $((tg1 - tg0)) $((fr1 - fr0)) <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
n = int(re.search(r"(\d+) requests in", t).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", t)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
err = []
m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
if m: err.append("non-2xx=" + m.group(1))
m = re.search(r"Socket errors: (.*)", t)
if m: err.append("socket errors: " + m.group(1).replace(" ", ""))
print(rps, round(p99, 3), n, sys.argv[2], sys.argv[3], ";".join(err) or "-")
PY
}

declare -A RPS P99 PATHUS TGUS
FAILED=0
for r in $(seq "$ROUNDS"); do
  order=("${VARIANTS[@]}")
  (( r % 2 == 0 )) && order=(check proxy auth_request map)
  for v in "${order[@]}"; do
    res=$(run "$v" "$r")
    read -r rps p99 n tg fr err <<<"$res"
    res=$(python3 -c '
import sys
v, n, tg, fr, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
us = lambda t: t / tck * 1e6 / max(n, 1)
path = {"map": fr, "auth_request": fr + tg, "proxy": tg, "check": tg}[v]
print(f"{us(path):.2f} {us(tg):.2f}")' "$v" "$n" "$tg" "$fr" "$TCK")
    read -r path_us tg_us <<<"$res"
    RPS[$v]+="$rps "; P99[$v]+="$p99 "; PATHUS[$v]+="$path_us "; TGUS[$v]+="$tg_us "
    line="round $r $v: $rps req/s, p99 $p99 ms, $n requests, path $path_us µs/req"
    [[ $v == auth_request ]] && line+=", tokengate $tg_us µs/check"
    echo "$line" >&2
    if [[ $err != - ]]; then
      echo "FLAG: round $r $v: $err (wrk output: see below)" >&2
      cat "$WORK/wrk-$v-$r.txt" >&2
      FAILED=1
    fi
  done
done

python3 - "${RPS[map]}" "${RPS[auth_request]}" "${RPS[proxy]}" "${RPS[check]}" \
  "${P99[map]}" "${P99[auth_request]}" "${P99[proxy]}" "${P99[check]}" \
  "${PATHUS[map]}" "${PATHUS[auth_request]}" "${PATHUS[proxy]}" "${PATHUS[check]}" \
  "${TGUS[auth_request]}" <<'PY'
import statistics, sys
names = ["map", "auth_request", "proxy", "check"]
col = lambda i: [float(x) for x in sys.argv[1 + i].split()]
med = lambda i: statistics.median(col(i))
rps = {n: med(i) for i, n in enumerate(names)}
p99 = {n: med(4 + i) for i, n in enumerate(names)}
path = {n: med(8 + i) for i, n in enumerate(names)}
check = med(12)
print(f"{'variant':13} {'req/s':>9} {'p99 ms':>8} {'CPU µs/req':>11} {'tokengate µs/check':>19}   (medians; CPU of the proxy side)")
for n in names:
    extra = f"{check:19.1f}" if n == "auth_request" else f"{'':19}"
    print(f"{n:13} {rps[n]:9.0f} {p99[n]:8.2f} {path[n]:11.1f} {extra}")
print(f"auth_request req/s / map req/s:                          {rps['auth_request'] / rps['map']:.3f}")
print(f"auth_request CPU µs/req / map CPU µs/req:                {path['auth_request'] / path['map']:.3f}")
print(f"tokengate µs per check behind nginx / µs per proxied request: {check / path['proxy']:.3f}  (target <= 0.5)")
print(f"tokengate µs per check at saturation / µs per proxied request: {path['check'] / path['proxy']:.3f}")
PY
if (( FAILED )); then
  echo "forward_auth.sh: some wrk runs had non-2xx answers or socket errors (FLAG lines above)" >&2
  exit 1
fi
