#!/usr/bin/env bash
# hack/bench/cni-add.sh — CNI ADD+DEL latency of berth-cni with the bridge + host-local + portmap + loopback
# chain, in process and with Debian's plugin binaries in the same run: p50/p90 of ADD, DEL and both over N
# iterations (default 50), berth's own overhead outside the plugins, and the share of the time spent inside
# them. Root; everything runs in network namespaces the benchmark creates and removes
# (crates/cni/examples/cni-bench.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
iterations="${1:-50}"
cargo build --quiet --release -p berth-cni --example cni-bench
"${CARGO_TARGET_DIR:-target}/release/examples/cni-bench" "$iterations"
