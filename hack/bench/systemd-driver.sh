#!/usr/bin/env bash
# hack/bench/systemd-driver.sh — what the systemd cgroup driver costs: pod ready under each driver, one node.
#
# Boots a systemd node (hack/systemd-node.sh: a real systemd as PID 1 of private namespaces) and, inside it, for
# each driver (cgroupfs, then systemd), runs the release berth as a transient service of that systemd
# (Type=notify, KillMode=process, Delegate=yes, as berth.service), pulls busybox from a registry in the node and
# runs examples/pod-bench.rs against it: RunPodSandbox + CreateContainer + StartContainer of busybox `sleep`, N
# pods one after another, then N at a concurrency; ExecSync; stop+remove; the daemon's and the shims' memory.
# Pods get kubelet's cgroup parents for the driver (`/kubepods/besteffort/pod<uid>`, or
# `kubepods-besteffort-pod<uid>.slice`) and a network namespace with only loopback (CNI's loopback plugin), so
# the difference between the runs is the driver: D-Bus calls and systemd's jobs for each scope, against mkdir.
#
# Usage: hack/bench/systemd-driver.sh [PODS] [CONCURRENCY]   (defaults 30 and 5; root)
set -euo pipefail
cd "$(dirname "$0")/../.."
pods=${1:-30}
concurrency=${2:-5}
repo=$(pwd)
# Two builds, as pods.sh explains: an example built with berth changes berth's symbols.
cargo build --quiet --release --bin berth && cargo build --quiet --release --example pod-bench
target=$(realpath "${CARGO_TARGET_DIR:-target}")

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-systemd.XXXXXX")
node=$work/node
cleanup() {
  bash hack/systemd-node.sh stop "$node" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
BERTH_SYSTEMD_NODE_SHARE="$repo:$target" bash hack/systemd-node.sh start "$node"
in_node() { bash hack/systemd-node.sh exec "$node" "$@"; }

registry=$(in_node bash "$repo/hack/registry.sh" start "$node/registry")
in_node python3 "$repo/hack/test-images.py" --registry "$registry" --only busybox >/dev/null
image=$registry/berth-test/busybox:latest
mkdir -p "$node/cni"
echo '{"cniVersion": "1.0.0", "name": "bench-lo", "plugins": [{"type": "loopback"}]}' >"$node/cni/10-lo.conflist"

for driver in cgroupfs systemd; do
  cat >"$node/$driver.toml" <<CONFIG
[daemon]
root = "$node/$driver"
state = "/run/berth-$driver"
socket = "$node/$driver.sock"
[cgroup]
driver = "$driver"
[cni]
conf_dir = "$node/cni"
[registries."$registry"]
insecure = true
CONFIG
  unit=berth-bench-$driver
  in_node systemd-run --quiet --unit="$unit" --property=Type=notify --property=KillMode=process \
    --property=Delegate=yes "$target/release/berth" serve --config "$node/$driver.toml"
  pid=$(in_node systemctl show --value -p MainPID "$unit")
  endpoint=unix://$node/$driver.sock
  CONTAINER_RUNTIME_ENDPOINT=$endpoint "$target/release/berth" pull "$image" >/dev/null 2>&1
  if [[ $driver == systemd ]]; then parent=(BENCH_CGROUP_SLICE=kubepods-besteffort); else
    parent=(BENCH_CGROUP_PARENT=/kubepods/besteffort)
  fi
  echo
  echo "berth, [cgroup] driver = \"$driver\", $pods pods, concurrency $concurrency"
  in_node env BENCH_DAEMON_PID="$pid" BENCH_SETTLE_SECONDS=5 "${parent[@]}" \
    "$target/release/examples/pod-bench" "$endpoint" "$image" "$pods" "$concurrency"
  left=$(in_node systemctl list-units --all --plain --no-legend 'berth-*.scope' | wc -l)
  echo "berth scopes left after the pods were removed: $left"
  in_node systemctl stop "$unit"
done
