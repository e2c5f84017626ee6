#!/usr/bin/env bash
# benches/h2.sh — HTTP/2 side by side: tokengate and nginx each terminating HTTP/2 from h2load,
# in cleartext with prior knowledge (h2c) and over TLS (ALPN h2), both proxying HTTP/1.1 to
# the same upstream (nginx, `return 200`, one worker). The nginx under comparison checks the
# bearer token with a `map` of 1 001 keys, as in ../shared/bench/h2-compare.sh (whose h2c pair
# this repeats, with the TLS pair added the same way).
#
#   benches/h2.sh                       # ROUNDS=5 DURATION=5 CONNS=64 STREAMS=10
#   PROTOS=h2c ROUNDS=3 benches/h2.sh   # one protocol
#   BIN=/path/to/tokengate benches/h2.sh
#
# Placement (PIN=1): tokengate and the nginx under test on CPU 0 (each alone while measured:
# the other idles), h2load and the upstream on CPU 1. Rounds interleave the targets (odd rounds
# nginx first, even rounds tokengate first). Per target and protocol: req/s (median over the
# rounds), the median of the per-round req/s ratios to nginx, and CPU µs per request of the
# proxy process (user + system, from /proc). Every answer must be 2xx.
# Needs h2load (nghttp2-client), nginx, openssl, curl, python3. Loopback and ephemeral ports
# only; stops what it starts.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}; DURATION=${DURATION:-5}; CONNS=${CONNS:-64}; STREAMS=${STREAMS:-10}
PROTOS=${PROTOS:-h2c tls}; PIN=${PIN:-1}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
for tool in h2load openssl curl python3; do
  command -v "$tool" >/dev/null || { echo "h2.sh: needs $tool" >&2; exit 2; }
done
[[ -x $NGINX ]] || { echo "h2.sh: needs nginx" >&2; exit 2; }
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/tokengate
fi
WORK=$(mktemp -d /tmp/tokengate-h2.XXXXXX)
# shellcheck source=benches/lib.sh
. benches/lib.sh
chmod 755 "$WORK"
KEY=bench-admin-key-0123456789abcdefghijklmnopqrstuvwxyz
NGINX_TOKEN=tg_bench_7f3a9c2e4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f3a

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
chmod 644 "$WORK/key.pem"

nginx_conf() { # dir http-body
  mkdir -p "$WORK/$1"; chmod 755 "$WORK/$1"
  cat >"$WORK/$1/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/$1/pid; error_log $WORK/$1/err.log;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $WORK/$1; proxy_temp_path $WORK/$1;
  fastcgi_temp_path $WORK/$1; uwsgi_temp_path $WORK/$1; scgi_temp_path $WORK/$1; $2 }
CONF
}
UP=$(free_port); NG_H2C=$(free_port); NG_TLS=$(free_port)
nginx_conf up "server { listen 127.0.0.1:$UP; keepalive_requests 100000000;
  location / { return 200 '{\"ok\":true}\n'; } }"
keys=$(for i in $(seq 1000); do printf '"Bearer tg_filler_%08d" 1; ' "$i"; done)
location="location /sd/ { if (\$ok = 0) { return 401; } proxy_pass http://u/; proxy_http_version 1.1;
    proxy_set_header Connection \"\"; proxy_set_header Authorization \"\";
    proxy_set_header X-Forwarded-For \$remote_addr; }"
nginx_conf ng "map_hash_bucket_size 128;
  map \$http_authorization \$ok { default 0; \"Bearer $NGINX_TOKEN\" 1; $keys }
  upstream u { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$NG_H2C http2; keepalive_requests 100000000;
    http2_max_requests 100000000; $location }
  server { listen 127.0.0.1:$NG_TLS ssl http2; keepalive_requests 100000000;
    http2_max_requests 100000000; ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem; ssl_protocols TLSv1.3; $location }"
$(cpu 1) "$NGINX" -p "$WORK/up" -c nginx.conf >"$WORK/up.log" 2>&1 &
PIDS+=($!)
$(cpu 0) "$NGINX" -p "$WORK/ng" -c nginx.conf >"$WORK/ng.log" 2>&1 &
NG_MASTER=$!; PIDS+=("$NG_MASTER")
wait_up "http://127.0.0.1:$UP/"

# Two gateways, one per protocol (a TLS listener serves only TLS), each with its token.
gateway() { # name port tls(0|1) -> starts it, sets GW_PID and GW_TOKEN
  local d=$WORK/$1 admin; mkdir -p "$d"; admin=$(free_port)
  {
    echo "[proxy]"; echo "listen = \"127.0.0.1:$2\""; echo "access_log = false"
    [[ $3 == 1 ]] && echo "tls = { cert = \"$WORK/cert.pem\", key = \"$WORK/key.pem\" }"
    echo "[admin]"; echo "listen = \"127.0.0.1:$admin\""; echo "key_file = \"$d/admin.key\""
    echo "[store]"; echo "url = \"sqlite://$d/tokengate.db\""
    echo "[[routes]]"; echo 'path_prefix = "/sd/"'; echo 'access = "security-director"'
    echo "upstream = \"http://127.0.0.1:$UP\""; echo "strip_prefix = true"
  } >"$d/tokengate.toml"
  TOKENGATE_ADMIN_KEY=$KEY RUST_LOG=warn $(cpu 0) "$BIN" --config "$d/tokengate.toml" serve \
    >"$d/log" 2>&1 &
  GW_PID=$!; PIDS+=("$GW_PID")
  wait_up "http://127.0.0.1:$admin/healthz"
  GW_TOKEN=$(curl -sf -X POST "http://127.0.0.1:$admin/v1/tokens" -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' -d '{"name":"bench","access":["security-director"]}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
}
TG_H2C=$(free_port); TG_TLS=$(free_port)
gateway h2c "$TG_H2C" 0; TG_H2C_PID=$GW_PID; TOKEN_H2C=$GW_TOKEN
gateway tls "$TG_TLS" 1; TG_TLS_PID=$GW_PID; TOKEN_TLS=$GW_TOKEN
NG_WORKER=$(pgrep -P "$NG_MASTER" | head -1)

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# measure URL TOKEN PID -> "req/s cpu_us_per_request"
measure() {
  local t0 t1 out rps ok n
  t0=$(ticks "$3")
  out=$($(cpu 1) h2load -c"$CONNS" -m"$STREAMS" -D "$DURATION" -H "Authorization: Bearer $2" \
    "$1" 2>&1)
  t1=$(ticks "$3")
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
  ok=$(awk '/^status codes:/ {print $3 + 0}' <<<"$out")
  n=$(awk '/^requests:/ {print $2}' <<<"$out")
  local bad; bad=$(awk '/^status codes:/ {print $5 + $7 + $9}' <<<"$out")
  [[ ${ok:-0} -gt 0 && ${bad:-1} -eq 0 ]] || {
    echo "h2.sh: $1: not every answer was 2xx:" >&2; tail -8 <<<"$out" >&2; exit 1; }
  echo "$rps $(python3 -c "print(round(($t1 - $t0) * 1e6 / $hz / $n, 1))")"
}
url() { # target proto
  local scheme=http port
  case $1-$2 in
    nginx-h2c) port=$NG_H2C ;; nginx-tls) port=$NG_TLS; scheme=https ;;
    tokengate-h2c) port=$TG_H2C ;; tokengate-tls) port=$TG_TLS; scheme=https ;;
  esac
  echo "$scheme://127.0.0.1:$port/sd/"
}
# Every pair answers before the rounds start (a warm-up second each).
for p in $PROTOS; do
  for t in nginx tokengate; do
    tok=$NGINX_TOKEN; [[ $t-$p == tokengate-h2c ]] && tok=$TOKEN_H2C
    [[ $t-$p == tokengate-tls ]] && tok=$TOKEN_TLS
    h2load -c4 -m1 -D 1 -H "Authorization: Bearer $tok" "$(url $t "$p")" >/dev/null 2>&1
  done
done

declare -A RPS CPU RATIO
printf '%-5s %-5s %-10s %10s %10s %8s\n' round proto target "req/s" "CPUus/rq" "/nginx"
for r in $(seq "$ROUNDS"); do
  order="nginx tokengate"; (( r % 2 == 0 )) && order="tokengate nginx"
  for p in $PROTOS; do
    declare -A got=()
    for t in $order; do
      case $t-$p in
        nginx-*) pid=$NG_WORKER; tok=$NGINX_TOKEN ;;
        tokengate-h2c) pid=$TG_H2C_PID; tok=$TOKEN_H2C ;;
        tokengate-tls) pid=$TG_TLS_PID; tok=$TOKEN_TLS ;;
      esac
      read -r rps us <<<"$(measure "$(url $t "$p")" "$tok" "$pid")"
      got[$t]=$rps
      RPS[$t-$p]+="$rps "; CPU[$t-$p]+="$us "
      printf '%-5s %-5s %-10s %10s %10s\n' "$r" "$p" "$t" "$rps" "$us"
    done
    RATIO[$p]+="$(python3 -c "print(round(${got[tokengate]} / ${got[nginx]}, 3))") "
  done
done
med() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo
echo "| protocol | target | req/s (median) | req/s ÷ nginx (median of rounds) | CPU µs/req (median) | per-round ratios |"
echo "|---|---|---|---|---|---|"
for p in $PROTOS; do
  for t in nginx tokengate; do
    ratio=1.00; rounds=-
    [[ $t == tokengate ]] && { ratio=$(med <<<"${RATIO[$p]}"); rounds=${RATIO[$p]% }; }
    echo "| $p | $t | $(med <<<"${RPS[$t-$p]}") | $ratio | $(med <<<"${CPU[$t-$p]}") | $rounds |"
  done
done
