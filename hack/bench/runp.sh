#!/usr/bin/env bash
# hack/bench/runp.sh — RunPodSandbox latency of berth with Debian's bridge + host-local + portmap + loopback
# plugins (hack/cni/10-berth-bridge.conflist, bridge renamed), p50/p90 over N pods (default 50) created one
# after another over one CRI connection (examples/runp-bench.rs), and the share spent inside the CNI
# plugins. The plugin time is the daemon's own measurement: `berth_cni` times every plugin process from
# spawn to exit and logs the sum per sandbox (`CNI ADD done`, `plugins_ms`), read here from the JSON log;
# berth's overhead is the client-side RPC latency minus that. No image is needed. Root; the daemon, bridge
# and pods run in a network namespace of their own, so the host's network is untouched.
#
# Usage: hack/bench/runp.sh [PODS]
set -euo pipefail
cd "$(dirname "$0")/../.."
pods=${1:-50}
target=${CARGO_TARGET_DIR:-target}

if [[ -z ${BERTH_BENCH_IN_NETNS:-} ]]; then
  cargo build --quiet --release --bin berth --example runp-bench
  exec env BERTH_BENCH_IN_NETNS=1 unshare --net "$0" "$@"
fi
ip link set lo up
work=$(mktemp -d "${TMPDIR:-/tmp}/brunp.XXXXXX")
daemon_pid=
cleanup() {
  [[ -n $daemon_pid ]] && { kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; }
  rm -rf "$work" /tmp/berth-bench-runp-logs
}
trap cleanup EXIT

mkdir -p "$work/cni"
sed -e 's/"berth0"/"berthrunp0"/' -e "s|\"ipam\": {|\"ipam\": { \"dataDir\": \"$work/leases\",|" \
  hack/cni/10-berth-bridge.conflist > "$work/cni/10-berth-bridge.conflist"
cat > "$work/config.toml" <<TOML
[daemon]
root = "$work/root"
state = "$work/state"
socket = "$work/state/berth.sock"
[log]
format = "json"
[cni]
conf_dir = "$work/cni"
TOML
# BERTH_BENCH_BREAKDOWN=1: the daemon logs its steps at debug, and their p50s are printed after the run.
if [[ -n ${BERTH_BENCH_BREAKDOWN:-} ]]; then export BERTH_LOG=berth=debug; fi
"$target/release/berth" serve --config "$work/config.toml" 2>"$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 200); do [[ -S $work/state/berth.sock ]] && break; sleep 0.05; done
printf 'berth %s, plugins from /usr/lib/cni (containernetworking-plugins %s)\n' \
  "$("$target/release/berth" --version | awk '{print $2}')" \
  "$(dpkg-query -W -f '${Version}' containernetworking-plugins 2>/dev/null || echo '?')"
"$target/release/examples/runp-bench" "unix://$work/state/berth.sock" "$pods" "$work/daemon.log"
if [[ -n ${BERTH_BENCH_BREAKDOWN:-} ]]; then
  python3 - "$work/daemon.log" <<'PY'
import json, statistics, sys
steps = {"namespaces pinned": [], "pod sandbox made": [], "shim": []}
for line in open(sys.argv[1]):
    try:
        event = json.loads(line)
    except ValueError:
        continue
    message = event.get("message")
    if message == "namespaces pinned":
        steps["namespaces pinned"].append(event["elapsed_ms"])
    elif message == "pod sandbox made":
        steps["pod sandbox made"].append(event["namespaces_and_network_ms"])
        steps["shim"].append(event["shim_ready_ms"])
for name, label in [("namespaces pinned", "pin helper"), ("pod sandbox made", "directory + pin + CNI + files"), ("shim", "... until the shim is ready")]:
    if steps[name]:
        print(f"  {label:<32} p50 {statistics.median(steps[name]):6.1f} ms")
PY
fi

# With BERTH_BENCH_CONTAINERD=1: containerd 1.6 (Debian's package) with the same plugins and conflist (its own
# bridge and leases), in the same network namespace after berth is done. Its CRI plugin needs a sandbox image:
# the `pause` test image (busybox running sleep), from a registry started inside this namespace. Latency
# only: containerd does not report its plugin time. Opt-in because on the project VM runc 1.1.5 fails to
# create containerd's sandbox container ("can't get final child's PID from pipe: EOF"), not yet understood.
if [[ -n ${BERTH_BENCH_CONTAINERD:-} ]]; then
  kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=
  address=$(hack/registry.sh start "$work/registry")
  python3 hack/test-images.py --registry "$address" --only pause --out "$work/images.json" >/dev/null
  ctd="$work/containerd"
  mkdir -p "$ctd/cni"
  sed -e 's/"berth0"/"berthctd0"/' -e "s|\"ipam\": {|\"ipam\": { \"dataDir\": \"$ctd/leases\",|" \
    hack/cni/10-berth-bridge.conflist > "$ctd/cni/10-berth-bridge.conflist"
  cat > "$ctd/config.toml" <<TOML
version = 2
root = "$ctd/root"
state = "$ctd/state"
[grpc]
  address = "$ctd/containerd.sock"
[ttrpc]
  address = "$ctd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$address/berth-test/pause:latest"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$ctd/cni"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$address"]
    endpoint = ["http://$address"]
TOML
  containerd --config "$ctd/config.toml" >"$ctd/containerd.log" 2>&1 &
  daemon_pid=$!
  cleanup_containerd() {
    # Sandboxes left by a failed run: their pause processes, and the shims serving this containerd (their
    # command line names its socket), belong to this benchmark.
    for bundle in "$ctd"/state/io.containerd.runtime.v2.task/k8s.io/*/; do
      [[ -d $bundle ]] || continue
      pid=$(cat "$bundle/init.pid" 2>/dev/null || true); [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true
    done
    for cmdline in /proc/[0-9]*/cmdline; do
      if tr '\0' ' ' <"$cmdline" 2>/dev/null | grep -q -- "-address $ctd/containerd.sock"; then
        pid=${cmdline#/proc/}; kill -9 "${pid%/cmdline}" 2>/dev/null || true
      fi
    done
    [[ -n $daemon_pid ]] && { kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=; }
    for m in $(awk -v p="$work" '$5 ~ "^"p { print $5 }' /proc/self/mountinfo | sort -r); do umount -l "$m" 2>/dev/null || true; done
    hack/registry.sh stop "$work/registry" >/dev/null 2>&1 || true
    rm -rf "$work" /tmp/berth-bench-runp-logs
  }
  trap cleanup_containerd EXIT
  for _ in $(seq 200); do [[ -S $ctd/containerd.sock ]] && break; sleep 0.05; done
  printf 'containerd %s\n' "$(containerd --version | awk '{print $3}')"
  "$target/release/examples/runp-bench" "unix://$ctd/containerd.sock" "$pods"
fi
