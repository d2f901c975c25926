#!/usr/bin/env bash
# hack/bench/stats.sh — latency of ListContainerStats, ListPodSandboxStats and ListPodSandboxMetrics with N
# running pods (issue 8's benchmark).
#
# Over one CRI connection (examples/stats-bench.rs): N pods of one busybox `sleep` container each, wired by
# Debian's bridge + host-local + portmap + loopback plugins (hack/cni/10-berth-bridge.conflist), so each pod
# stats call also reads the pod's network namespace; then p50/p90 of each call over CALLS calls, one at a
# time. Release build. Root; everything — registry, daemon, bridge, pods — runs in a network namespace of its
# own, so the host's network is untouched.
#
# Usage: hack/bench/stats.sh [PODS] [CALLS]   (defaults 50 and 100)
set -euo pipefail
cd "$(dirname "$0")/../.."
pods=${1:-50}
calls=${2:-100}
target=${CARGO_TARGET_DIR:-target}

if [[ -z ${BERTH_BENCH_IN_NETNS:-} ]]; then
  cargo build --quiet --release --bin berth --example stats-bench
  exec env BERTH_BENCH_IN_NETNS=1 unshare --net "$0" "$@"
fi
ip link set lo up
work=$(mktemp -d "${TMPDIR:-/tmp}/bstats.XXXXXX")
daemon_pid=
cleanup() {
  [[ -n $daemon_pid ]] && { kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; }
  hack/registry.sh stop "$work/registry" >/dev/null 2>&1 || true
  rm -rf "$work" /tmp/berth-bench-logs
}
trap cleanup EXIT

address=$(hack/registry.sh start "$work/registry")
python3 hack/test-images.py --registry "$address" --only busybox --out "$work/images.json" >/dev/null
image="$address/berth-test/busybox:latest"

mkdir -p "$work/cni"
sed 's/"berth0"/"berthstats0"/' hack/cni/10-berth-bridge.conflist > "$work/cni/10-berth-bridge.conflist"
cat > "$work/config.toml" <<TOML
[daemon]
root = "$work/root"
state = "$work/state"
socket = "$work/state/berth.sock"
[cni]
conf_dir = "$work/cni"
[registries."$address"]
insecure = true
TOML
"$target/release/berth" serve --config "$work/config.toml" 2>"$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 200); do [[ -S $work/state/berth.sock ]] && break; sleep 0.05; done
endpoint="unix://$work/state/berth.sock"
"$target/release/berth" -r "$endpoint" pull "$image" >/dev/null
printf 'berth %s, %s pods\n' "$("$target/release/berth" --version | awk '{print $2}')" "$pods"
"$target/release/examples/stats-bench" "$endpoint" "$image" "$pods" "$calls"
