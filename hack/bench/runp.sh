#!/usr/bin/env bash
# hack/bench/runp.sh — RunPodSandbox latency of berth with Debian's bridge + host-local + portmap + loopback
# plugins (hack/cni/10-berth-bridge.conflist, bridge renamed), p50/p90 over N pods (default 50) created one
# after another over one CRI connection (examples/runp-bench.rs), and the share spent inside the CNI
# plugins. The plugin time is the daemon's own measurement: `berth_cni` times every plugin process from
# spawn to exit and logs the sum per sandbox (`CNI ADD done`, `plugins_ms`), read here from the JSON log;
# berth's overhead is the client-side RPC latency minus that. No image is needed. Root; the daemon, bridge
# and pods run in a network namespace of their own, so the host's network is untouched.
#
# With BERTH_BENCH_CONTAINERD=1, containerd (hack/bench/containerd.sh) is measured afterwards by the same
# client, in the same namespace (see the end of this file).
#
# Usage: hack/bench/runp.sh [PODS]
set -euo pipefail
cd "$(dirname "$0")/../.."
pods=${1:-50}
target=${CARGO_TARGET_DIR:-target}

if [[ -z ${BERTH_BENCH_IN_NETNS:-} ]]; then
  # Two builds: with an example, Cargo unifies the dev-dependencies' features into berth's dependencies, and
  # the binary would differ from the one `cargo build --release` makes (other symbols: the link order misses).
  cargo build --quiet --release --bin berth && cargo build --quiet --release --example runp-bench
  exec env BERTH_BENCH_IN_NETNS=1 unshare --net "$0" "$@"
fi
source hack/bench/pod-daemon.sh # remove_bench_cgroups
source hack/bench/containerd.sh
ip link set lo up
work=
daemon_pid=
cleanup() {
  [[ -n $daemon_pid ]] && { kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; }
  stop_containerd
  remove_bench_cgroups
  [[ -d $work/registry ]] && { hack/registry.sh stop "$work/registry" >/dev/null 2>&1 || true; }
  # BERTH_BENCH_KEEP_LOG=FILE keeps the daemon's log (with BERTH_BENCH_BREAKDOWN=1, every step's timing).
  [[ -n ${BERTH_BENCH_KEEP_LOG:-} && -f $work/daemon.log ]] && cp "$work/daemon.log" "$BERTH_BENCH_KEEP_LOG"
  remove_bench_work
  rm -rf /tmp/berth-bench-runp-logs
}
trap cleanup EXIT
# Durable state on a journaled ext4, volatile state on a tmpfs, as on a node (see pod-daemon.sh).
make_bench_work brunp
# The pods' cgroup parent, one per run, as kubelet gives one (see hack/bench/pod-daemon.sh).
export BENCH_CGROUP_PARENT="/$(basename "$work")"

mkdir -p "$work/cni"
sed -e 's/"berth0"/"berthrunp0"/' -e "s|\"ipam\": {|\"ipam\": { \"dataDir\": \"$work/leases\",|" \
  hack/cni/10-berth-bridge.conflist > "$work/cni/10-berth-bridge.conflist"
cat > "$work/config.toml" <<TOML
[daemon]
root = "$work/root"
state = "$work/run/berth"
socket = "$work/run/berth/berth.sock"
[log]
format = "json"
[cni]
conf_dir = "$work/cni"
TOML
# BERTH_BENCH_BREAKDOWN=1: the daemon logs its steps at debug, and their p50s are printed after the run.
if [[ -n ${BERTH_BENCH_BREAKDOWN:-} ]]; then export BERTH_LOG=berth=debug; fi
evict_from_page_cache "$target/release/berth" # read from disk, as on a node (see pod-daemon.sh)
"$target/release/berth" serve --config "$work/config.toml" 2>"$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 200); do [[ -S $work/run/berth/berth.sock ]] && break; sleep 0.05; done
printf 'berth %s, plugins from /usr/lib/cni (containernetworking-plugins %s)\n' \
  "$("$target/release/berth" --version | awk '{print $2}')" \
  "$(dpkg-query -W -f '${Version}' containernetworking-plugins 2>/dev/null || echo '?')"
"$target/release/examples/runp-bench" "unix://$work/run/berth/berth.sock" "$pods" "$work/daemon.log"
if [[ -n ${BERTH_BENCH_BREAKDOWN:-} ]]; then python3 hack/bench/breakdown.py "$work/daemon.log"; fi

# With BERTH_BENCH_CONTAINERD=1: containerd (Debian's package, CRI plugin, runc; hack/bench/containerd.sh) with
# the same plugins and conflist (its own bridge and leases), in the same network namespace after berth is done.
# Its CRI plugin needs a sandbox image: the `pause` test image (busybox running sleep), from a registry started
# inside this namespace. Latency only: containerd does not report its plugin time.
if [[ -n ${BERTH_BENCH_CONTAINERD:-} ]]; then
  kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=
  ip link del berthrunp0 2>/dev/null || true # same subnet as containerd's bridge: keep one route to it
  registry=$(hack/registry.sh start "$work/registry")
  python3 hack/test-images.py --registry "$registry" --only pause --out "$work/images.json" >/dev/null
  evict_from_page_cache "$(command -v containerd)" "$(command -v containerd-shim-runc-v2)" "$(command -v runc)"
  start_containerd "$work/containerd" "$registry" berthctd0 "$work/run/containerd"
  printf 'containerd %s + runc %s\n' "$(containerd --version | awk '{print $3}')" "$(runc --version | awk 'NR == 1 { print $3 }')"
  "$target/release/examples/runp-bench" "$ctd_endpoint" "$pods"
fi
