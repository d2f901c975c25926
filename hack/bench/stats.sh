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
# With BERTH_BENCH_CONTAINERD=1, the same client then measures containerd (Debian's package, CRI plugin, runc;
# hack/bench/containerd.sh) in the same namespace, after berth is stopped. containerd 1.6 has no
# ListPodSandboxMetrics (it answers Unimplemented, which the client times but reports as such).
#
# Usage: hack/bench/stats.sh [PODS] [CALLS]   (defaults 50 and 100)
set -euo pipefail
cd "$(dirname "$0")/../.."
pods=${1:-50}
calls=${2:-100}
target=${CARGO_TARGET_DIR:-target}

if [[ -z ${BERTH_BENCH_IN_NETNS:-} ]]; then
  # Two builds: with an example, Cargo unifies the dev-dependencies' features into berth's dependencies, and
  # the binary would differ from the one `cargo build --release` makes (other symbols: the link order misses).
  cargo build --quiet --release --bin berth && cargo build --quiet --release --example stats-bench
  exec env BERTH_BENCH_IN_NETNS=1 unshare --net "$0" "$@"
fi
source hack/bench/pod-daemon.sh
source hack/bench/containerd.sh
start_bench_daemon bstats berthstats0
printf 'berth %s, %s pods\n' "$("$target/release/berth" --version | awk '{print $2}')" "$pods"
"$target/release/examples/stats-bench" "$endpoint" "$image" "$pods" "$calls"
if [[ -n ${BERTH_BENCH_CONTAINERD:-} ]]; then
  start_bench_containerd berthctdstats0
  printf '\ncontainerd %s + runc %s, %s pods\n' "$(containerd --version | awk '{print $3}')" \
    "$(runc --version | awk 'NR == 1 { print $3 }')" "$pods"
  "$target/release/examples/stats-bench" "$endpoint" "$image" "$pods" "$calls"
fi
