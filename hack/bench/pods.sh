#!/usr/bin/env bash
# hack/bench/pods.sh — pod ready latency and per-pod memory of berth (issue 5's benchmark).
#
# Over one CRI connection (examples/pod-bench.rs): RunPodSandbox + CreateContainer + StartContainer of
# busybox `sleep`, p50/p90 over N pods sequentially and N pods at a concurrency; ExecSync `true`; stop+remove;
# the daemon's RSS idle, with N pods and idle again once all are removed; the client-side p50/p90 of each RPC
# of the sequential pods (torn down as kubelet does: StopContainer, RemoveContainer, StopPodSandbox,
# RemovePodSandbox); per-pod RSS and PSS of the shims; the runtime's total PSS (daemon
# plus per-pod processes: the memory they take together, where RSS counts the binary they share once per
# process). Pods are wired by the bridge + host-local + portmap + loopback chain
# (hack/cni/10-berth-bridge.conflist), which berth runs in process. Root; everything — registry, daemon,
# bridge, pods — runs in a network namespace of its own, so the host's network is untouched.
#
# With BERTH_BENCH_BINARIES=1, berth is measured a second time with `[cni] native = "off"`: the same chain
# executed as Debian's plugin binaries (1.1.1), as containerd executes them.
#
# With BERTH_BENCH_CONTAINERD=1, the same client then measures containerd (Debian's package, CRI plugin, runc;
# hack/bench/containerd.sh) in the same namespace, after berth is stopped. Its memory per pod is its shim
# (containerd-shim-runc-v2, one per pod, whose command line names the pod) plus the pod's pause process (the
# `pause` test image: `sleep 2000000000`), as berth's is its shim; the containers' own processes are counted
# for neither.
#
# BERTH_BENCH_BREAKDOWN=1 prints berth's RPC and step timings after its run (hack/bench/breakdown.py).
#
# Usage: hack/bench/pods.sh [PODS] [CONCURRENCY]   (defaults 50 and 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
pods=${1:-50}
concurrency=${2:-10}
target=${CARGO_TARGET_DIR:-target}

if [[ -z ${BERTH_BENCH_IN_NETNS:-} ]]; then
  # Two builds: with an example, Cargo unifies the dev-dependencies' features into berth's dependencies, and
  # the binary would differ from the one `cargo build --release` makes (other symbols: the link order misses).
  cargo build --quiet --release --bin berth && cargo build --quiet --release --example pod-bench
  exec env BERTH_BENCH_IN_NETNS=1 unshare --net "$0" "$@"
fi
source hack/bench/pod-daemon.sh
source hack/bench/containerd.sh

# Memory is read once the runtime has settled, as on a node whose pods have been up a while: berth returns its
# heap's free pages every 10 s after work (src/daemon/heap.rs), Go's scavenger returns containerd's in the
# background. BENCH_SETTLE_SECONDS (default 12) is that wait, before the idle figure and before the one with
# the pods running.
export BENCH_SETTLE_SECONDS=${BENCH_SETTLE_SECONDS:-12}

# run_bench NAME: the benchmark against the daemon now serving $endpoint.
run_bench() {
  sleep "$BENCH_SETTLE_SECONDS"
  printf '%s, %s pods, concurrency %s\n' "$1" "$pods" "$concurrency"
  # Anonymous memory is the daemon's own (heap, stacks); the rest of its RSS is pages of the binary and libc.
  awk '/^VmRSS:/ { rss = $2 } /^RssAnon:/ { anonymous = $2 }
       END { printf "daemon RSS idle (image pulled)  %7.1f MiB  (anonymous %.1f MiB)\n", rss / 1024, anonymous / 1024 }' \
    "/proc/$daemon_pid/status"
  BENCH_DAEMON_PID=$daemon_pid "$target/release/examples/pod-bench" "$endpoint" "$image" "$pods" "$concurrency"
}

start_bench_daemon berth-bench-pods berthbench0
run_bench "berth $("$target/release/berth" --version | awk '{print $2}')"
if [[ -n ${BERTH_BENCH_BREAKDOWN:-} ]]; then python3 hack/bench/breakdown.py "$work/daemon.log"; fi
if [[ -n ${BERTH_BENCH_BINARIES:-} ]]; then
  echo
  restart_bench_berth off
  run_bench "berth $("$target/release/berth" --version | awk '{print $2}') with the plugin binaries"
fi
if [[ -n ${BERTH_BENCH_CONTAINERD:-} ]]; then
  echo
  start_bench_containerd berthctd0
  BENCH_PER_POD_MATCH="{pod}" BENCH_PER_POD_CHILD="sleep 2000000000" \
    run_bench "containerd $(containerd --version | awk '{print $3}') + runc $(runc --version | awk 'NR == 1 { print $3 }')"
fi
