#!/usr/bin/env bash
# hack/bench/idle-rss.sh — resident memory of an idle berth daemon, beside containerd's in the same run.
#
# Each daemon gets private root/state directories and socket under a temp dir, serves for a few seconds
# after one client connection (Version, Status, ImageFsInfo: what kubelet and crictl send on connect),
# then VmRSS and VmHWM are read from /proc/PID/status. containerd is measured only if installed
# (Debian's `containerd` package); its CRI plugin loads as it would on a node.
#
# Usage: hack/bench/idle-rss.sh [berth-binary]   (default target/release/berth; `make bench` builds it)
set -euo pipefail
cd "$(dirname "$0")/../.."

berth=${1:-target/release/berth}
settle=${SETTLE_SECONDS:-5}
work=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

rss() { awk -v key="$2:" '$1 == key { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
wait_socket() { for _ in $(seq 200); do [[ -S $1 ]] && return 0; sleep 0.05; done; echo "no socket $1" >&2; return 1; }

mkdir -p "$work/berth"
cat > "$work/berth/config.toml" <<TOML
[daemon]
root = "$work/berth/root"
state = "$work/berth/state"
socket = "$work/berth/state/berth.sock"
TOML
# Both daemons' binaries are read from disk, as on a node that just booted (see evict_from_page_cache).
source hack/bench/pod-daemon.sh
evict_from_page_cache "$berth"
"$berth" serve --config "$work/berth/config.toml" 2>"$work/berth/log" &
pids+=($!); berth_pid=$!
wait_socket "$work/berth/state/berth.sock"
endpoint="unix://$work/berth/state/berth.sock"
"$berth" -r "$endpoint" version >/dev/null
"$berth" -r "$endpoint" info >/dev/null
"$berth" -r "$endpoint" imagefsinfo >/dev/null
sleep "$settle"
# How much of the link order this binary has: well below all of it, the order is stale (a toolchain or
# dependency update, or a binary built together with an example) and the RSS is higher. Reported, not fatal here.
hack/link-order-check.sh "$berth" || true
printf '%-28s %10s %10s\n' "daemon" "VmRSS MiB" "VmHWM MiB"
printf '%-28s %10s %10s\n' "berth $("$berth" --version | awk '{print $2}')" "$(rss "$berth_pid" VmRSS)" "$(rss "$berth_pid" VmHWM)"

if command -v containerd >/dev/null; then
  mkdir -p "$work/containerd"
  cat > "$work/containerd/config.toml" <<TOML
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
[grpc]
  address = "$work/containerd/containerd.sock"
[ttrpc]
  address = "$work/containerd/containerd.sock.ttrpc"
TOML
  evict_from_page_cache "$(command -v containerd)"
  containerd --config "$work/containerd/config.toml" 2>"$work/containerd/log" &
  pids+=($!); containerd_pid=$!
  wait_socket "$work/containerd/containerd.sock"
  # One client connection, as for berth (berth's CLI speaks CRI; containerd's CRI plugin serves it).
  "$berth" -r "unix://$work/containerd/containerd.sock" version >/dev/null || true
  "$berth" -r "unix://$work/containerd/containerd.sock" info >/dev/null || true
  "$berth" -r "unix://$work/containerd/containerd.sock" imagefsinfo >/dev/null || true
  sleep "$settle"
  printf '%-28s %10s %10s\n' "containerd $(containerd --version | awk '{print $3}')" "$(rss "$containerd_pid" VmRSS)" "$(rss "$containerd_pid" VmHWM)"
else
  echo "containerd is not installed (apt-get install containerd) — no peer figure in this run"
fi
