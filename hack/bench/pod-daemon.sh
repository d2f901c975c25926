# shellcheck shell=bash
# hack/bench/pod-daemon.sh — sourced by the pod benchmarks (pods.sh, stats.sh) once they run inside their own
# network namespace: a registry with the busybox test image (and the `pause` image containerd needs), and a
# release berth daemon wired by Debian's bridge + host-local + portmap + loopback plugins
# (hack/cni/10-berth-bridge.conflist, bridge renamed), with the image pulled; for BERTH_BENCH_CONTAINERD=1,
# containerd in its place afterwards (hack/bench/containerd.sh). Everything is removed on exit.
# runp.sh sources it for the cgroup helpers only.
#
# Usage: start_bench_daemon WORK_PREFIX BRIDGE   (needs $target; sets work, daemon_pid, endpoint, image, registry)
#        start_bench_containerd BRIDGE           (stops berth; containerd serves $endpoint, its pid in daemon_pid)
#
# Each run gives its pods a cgroup parent of its own, as kubelet always does (/kubepods/besteffort/pod<uid>
# there): BENCH_CGROUP_PARENT, read by examples/bench. containerd 1.6 needs one to answer ListPodSandboxStats
# at all ("cgroupPath is empty" otherwise), and a parent per run lets the cleanup find the pods' processes and
# cgroups in every hierarchy (cgroup v1, v2 or both) and remove them.

start_bench_daemon() {
  local prefix=$1 bridge=$2
  ip link set lo up
  work=$(mktemp -d "${TMPDIR:-/tmp}/$prefix.XXXXXX")
  export BENCH_CGROUP_PARENT="/$(basename "$work")"
  daemon_pid=
  trap bench_daemon_cleanup EXIT

  registry=$(hack/registry.sh start "$work/registry")
  python3 hack/test-images.py --registry "$registry" --only busybox pause --out "$work/images.json" >/dev/null
  image="$registry/berth-test/busybox:latest"

  mkdir -p "$work/cni"
  # host-local's leases under $work, not in the host's /var/lib/cni/networks/berth.
  sed -e "s/\"berth0\"/\"$bridge\"/" -e "s|\"ipam\": {|\"ipam\": { \"dataDir\": \"$work/leases\",|" \
    hack/cni/10-berth-bridge.conflist > "$work/cni/10-berth-bridge.conflist"
  berth_bridge=$bridge
  cat > "$work/config.toml" <<TOML
[daemon]
root = "$work/root"
state = "$work/state"
socket = "$work/state/berth.sock"
[cni]
conf_dir = "$work/cni"
[registries."$registry"]
insecure = true
[log]
format = "json"
TOML
  # BERTH_BENCH_BREAKDOWN=1: every RPC's and step's timing, printed by hack/bench/breakdown.py.
  if [[ -n ${BERTH_BENCH_BREAKDOWN:-} ]]; then export BERTH_LOG=berth=debug; fi
  "$target/release/berth" serve --config "$work/config.toml" 2>"$work/daemon.log" &
  daemon_pid=$!
  for _ in $(seq 200); do [[ -S $work/state/berth.sock ]] && break; sleep 0.05; done
  endpoint="unix://$work/state/berth.sock"
  "$target/release/berth" -r "$endpoint" pull "$image" >/dev/null
}

stop_bench_daemon() {
  [[ -n $daemon_pid ]] && { kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; }
  daemon_pid=
}

start_bench_containerd() {
  stop_bench_daemon
  # berth's bridge has the same subnet as the one containerd's plugins will make; keep one route to it.
  ip link del "$berth_bridge" 2>/dev/null || true
  start_containerd "$work/containerd" "$registry" "$1"
  daemon_pid=$ctd_pid
  endpoint=$ctd_endpoint
  # berth's CLI pulls through the CRI's PullImage, which containerd serves too.
  "$target/release/berth" -r "$endpoint" pull "$image" >/dev/null
}

# The processes in the cgroups under this run's cgroup parent (pods a failed run left).
bench_cgroup_pids() {
  [[ -n ${BENCH_CGROUP_PARENT:-} ]] || return 0
  local dir
  for dir in "/sys/fs/cgroup$BENCH_CGROUP_PARENT" /sys/fs/cgroup/*"$BENCH_CGROUP_PARENT"; do
    if [[ -d $dir ]]; then find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null || true; fi
  done | sort -u
}

# Kills what is left in this run's cgroups and removes them, deepest first, in every hierarchy.
remove_bench_cgroups() {
  [[ -n ${BENCH_CGROUP_PARENT:-} ]] || return 0
  local pid dir
  for pid in $(bench_cgroup_pids); do kill -9 "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do [[ -z $(bench_cgroup_pids) ]] && break; sleep 0.1; done
  for dir in "/sys/fs/cgroup$BENCH_CGROUP_PARENT" /sys/fs/cgroup/*"$BENCH_CGROUP_PARENT"; do
    if [[ -d $dir ]]; then find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
}

bench_daemon_cleanup() {
  stop_bench_daemon
  if declare -F stop_containerd >/dev/null; then stop_containerd; fi
  remove_bench_cgroups
  hack/registry.sh stop "$work/registry" >/dev/null 2>&1 || true
  rm -rf "$work" /tmp/berth-bench-logs
}
