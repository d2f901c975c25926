#!/usr/bin/env bash
# hack/bench/streaming.sh — the streaming server through the daemon (issue 7's benchmark), with the client
# berth's CLI uses (berth_streaming::client; examples/streaming-bench.rs):
# - exec round trip: Exec RPC + SPDY connect + `echo hi` to its exit status, p50/p90 over RUNS runs;
# - port-forward throughput: a 100 MB HTTP download from a busybox httpd in the pod, through PortForward and
#   the streaming session over loopback (SPDY, and SPDY tunnelled in WebSocket), median of 3, in MB/s.
# Release build. Root; registry, daemon, bridge and pod run in a network namespace of their own
# (hack/bench/pod-daemon.sh), so the host's network is untouched.
#
# Usage: hack/bench/streaming.sh [RUNS]   (default 100)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-100}
target=${CARGO_TARGET_DIR:-target}

if [[ -z ${BERTH_BENCH_IN_NETNS:-} ]]; then
  # Two builds: with an example, Cargo unifies the dev-dependencies' features into berth's dependencies, and
  # the binary would differ from the one `cargo build --release` makes (other symbols: the link order misses).
  cargo build --quiet --release --bin berth && cargo build --quiet --release --example streaming-bench
  exec env BERTH_BENCH_IN_NETNS=1 unshare --net "$0" "$@"
fi
source hack/bench/pod-daemon.sh
start_bench_daemon bstream berthstream0
printf 'berth %s\n' "$("$target/release/berth" --version | awk '{print $2}')"
"$target/release/examples/streaming-bench" "$endpoint" "$image" "$runs"
