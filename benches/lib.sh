# shellcheck shell=bash
# benches/lib.sh — helpers the load scripts share (sourced, not run). Before sourcing, a
# script sets PIN (1 = taskset placement) and WORK (its temp dir); it appends the PIDs it
# starts to PIDS, which `cleanup` (installed on EXIT) stops before removing WORK.

# The command prefix that places a process on a CPU (nothing with PIN=0).
cpu() { [[ $PIN == 1 ]] && echo "taskset -c $1"; true; }

# A free ephemeral loopback port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_up URL [curl args...]: until URL answers 2xx (10 s at most, then exit 1).
wait_up() {
  local url=$1; shift
  for _ in $(seq 200); do curl -sf -o /dev/null "$@" "$url" && return 0; sleep 0.05; done
  echo "not up: $url" >&2; exit 1
}

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
