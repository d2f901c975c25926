#!/usr/bin/env bash
# hack/bench/pods.sh — pod ready latency and per-pod memory of berth (issue 5's benchmark).
#
# Over one CRI connection (examples/pod-bench.rs): RunPodSandbox + CreateContainer + StartContainer of
# busybox `sleep`, p50/p90 over N pods sequentially and N pods at a concurrency; ExecSync `true`; stop+remove;
# the daemon's RSS idle and with N pods; per-pod RSS and PSS of the shims. Pods are wired by Debian's bridge +
# host-local + portmap + loopback plugins (hack/cni/10-berth-bridge.conflist). Root; everything — registry,
# daemon, bridge, pods — runs in a network namespace of its own, so the host's network is untouched.
#
# Usage: hack/bench/pods.sh [PODS] [CONCURRENCY]   (defaults 50 and 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
pods=${1:-50}
concurrency=${2:-10}
target=${CARGO_TARGET_DIR:-target}

if [[ -z ${BERTH_BENCH_IN_NETNS:-} ]]; then
  cargo build --quiet --release --bin berth --example pod-bench
  exec env BERTH_BENCH_IN_NETNS=1 unshare --net "$0" "$@"
fi
source hack/bench/pod-daemon.sh
start_bench_daemon berth-bench-pods berthbench0
sleep 1
printf 'berth %s, %s pods, concurrency %s\n' "$("$target/release/berth" --version | awk '{print $2}')" "$pods" "$concurrency"
printf 'daemon RSS idle (image pulled)  %7.1f MiB\n' "$(awk '/^VmRSS:/ { print $2 / 1024 }' "/proc/$daemon_pid/status")"
BENCH_DAEMON_PID=$daemon_pid "$target/release/examples/pod-bench" "$endpoint" "$image" "$pods" "$concurrency"
