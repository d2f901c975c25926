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
# The work directory is laid out like a node's disks (make_bench_work): durable state (berth's `root`,
# containerd's `root`, the registry, leases, logs) on a journaled ext4, as /var/lib is on a node, and volatile
# state (berth's `state`, containerd's `state` and runc's root) on a tmpfs at $work/run, as /run is on a node.
# Neither is what this VM has: its / (so /run, /tmp and /var) is an ext4 without a journal, and there, creating a
# file or directory gets slow for minutes once many were deleted nearby. Without a journal, ext4's inode
# allocator skips every inode deleted in the last 60 s (360 s while its inode table block is dirty), reading each
# one's deletion time (recently_deleted() in fs/ext4/ialloc.c). A run deletes thousands, so runs with their work
# directory under /tmp slowed each other down by up to 2x, in every step that creates a file: an mkdir in /tmp
# took 0.27 ms after a run, 0.023 ms on a journaled ext4 after as much churn, 0.004 ms on tmpfs.
#
# Each run gives its pods a cgroup parent of its own, as kubelet always does (/kubepods/besteffort/pod<uid>
# there): BENCH_CGROUP_PARENT, read by examples/bench. containerd 1.6 needs one to answer ListPodSandboxStats
# at all ("cgroupPath is empty" otherwise), and a parent per run lets the cleanup find the pods' processes and
# cgroups in every hierarchy (cgroup v1, v2 or both) and remove them.

start_bench_daemon() {
  local prefix=$1 bridge=$2
  ip link set lo up
  daemon_pid=
  trap bench_daemon_cleanup EXIT
  make_bench_work "$prefix"
  export BENCH_CGROUP_PARENT="/$(basename "$work")"

  registry=$(hack/registry.sh start "$work/registry")
  python3 hack/test-images.py --registry "$registry" --only busybox pause --out "$work/images.json" >/dev/null
  image="$registry/berth-test/busybox:latest"

  write_bench_config "$bridge"
  berth_bridge=$bridge
  # BERTH_BENCH_BREAKDOWN=1: every RPC's and step's timing, printed by hack/bench/breakdown.py.
  if [[ -n ${BERTH_BENCH_BREAKDOWN:-} ]]; then export BERTH_LOG=berth=debug; fi
  serve_bench_berth
}

# serve_bench_berth: berth serving $work/config.toml, its log in $work/daemon.log; the image pulled.
serve_bench_berth() {
  evict_from_page_cache "$target/release/berth"
  "$target/release/berth" serve --config "$work/config.toml" 2>"$work/daemon.log" &
  daemon_pid=$!
  for _ in $(seq 200); do [[ -S $work/run/berth/berth.sock ]] && break; sleep 0.05; done
  endpoint="unix://$work/run/berth/berth.sock"
  "$target/release/berth" -r "$endpoint" pull "$image" >/dev/null
}

# restart_bench_berth NATIVE: berth again on the same work directory and registry, with `[cni] native =
# NATIVE` (`off`: the plugin binaries), after the previous daemon stopped and its bridge went.
restart_bench_berth() {
  stop_bench_daemon
  ip link del "$berth_bridge" 2>/dev/null || true
  BENCH_CNI_NATIVE=$1 write_bench_config "$berth_bridge"
  serve_bench_berth
}

# write_bench_config BRIDGE: berth's $work/config.toml (root on the ext4, state on the tmpfs, the registry at
# $registry insecure, JSON logs, then $BENCH_EXTRA_CONFIG) and its CNI configuration, the repo's bridge
# conflist with the bridge renamed and host-local's leases under $work, not in the host's
# /var/lib/cni/networks/berth.
write_bench_config() {
  mkdir -p "$work/cni"
  sed -e "s/\"berth0\"/\"$1\"/" -e "s|\"ipam\": {|\"ipam\": { \"dataDir\": \"$work/leases\",|" \
    hack/cni/10-berth-bridge.conflist > "$work/cni/10-berth-bridge.conflist"
  cat > "$work/config.toml" <<TOML
[daemon]
root = "$work/root"
state = "$work/run/berth"
socket = "$work/run/berth/berth.sock"
[cni]
conf_dir = "$work/cni"
native = "${BENCH_CNI_NATIVE:-auto}"
[registries."$registry"]
insecure = true
[log]
format = "json"
TOML
  # BENCH_EXTRA_CONFIG: more TOML for the run (the soak turns the metrics endpoint on).
  if [[ -n ${BENCH_EXTRA_CONFIG:-} ]]; then printf '%s\n' "$BENCH_EXTRA_CONFIG" >> "$work/config.toml"; fi
}

stop_bench_daemon() {
  [[ -n $daemon_pid ]] && { kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; }
  daemon_pid=
}

start_bench_containerd() {
  stop_bench_daemon
  # berth's bridge has the same subnet as the one containerd's plugins will make; keep one route to it.
  ip link del "$berth_bridge" 2>/dev/null || true
  evict_from_page_cache "$(command -v containerd)" "$(command -v containerd-shim-runc-v2)" "$(command -v runc)"
  start_containerd "$work/containerd" "$registry" "$1" "$work/run/containerd"
  daemon_pid=$ctd_pid
  endpoint=$ctd_endpoint
  # berth's CLI pulls through the CRI's PullImage, which containerd serves too.
  "$target/release/berth" -r "$endpoint" pull "$image" >/dev/null
}

# evict_from_page_cache FILE...: a runtime's binaries are read from disk when it starts, as on a node that just
# booted. How a binary came into the page cache decides how much of it a process maps (the fault-around maps
# whatever neighbouring pages are cached, and a binary cp or a linker just wrote is cached whole, in large
# folios): the same berth binary's idle RSS was 13.2 MiB read from disk, 15.0 MiB as a fresh copy.
evict_from_page_cache() {
  # (Written back first: the kernel drops only clean pages, and a binary just built is still dirty.)
  python3 -c 'import os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$@"
}

# make_bench_work PREFIX: sets $work to a new directory with a journaled ext4 mounted on it (a sparse image
# beside it) and a tmpfs on $work/run (see the top of this file).
make_bench_work() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  truncate -s 16G "$work.ext4"
  mkfs.ext4 -q -F "$work.ext4"
  mount -o loop "$work.ext4" "$work"
  mkdir -p "$work/run"
  mount -t tmpfs -o mode=0711,size=2g berth-bench-run "$work/run"
}

# remove_bench_work: once the runtimes are stopped; what a failed run left mounted below (pinned namespaces,
# /dev/shm, root filesystems) goes with it.
remove_bench_work() {
  [[ -n ${work:-} ]] || return 0
  if mountpoint -q "$work"; then umount -R -l "$work"; fi
  rm -rf "$work" "$work.ext4"
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

# The shims of a run cut short (pods never removed) and what runs in their cgroups, berth's
# /berth/shim-<pod> in every hierarchy (outside the run's cgroup parent), which go too.
remove_bench_shims() {
  [[ -n ${work:-} ]] || return 0
  local pid pod dir
  for pid in $(pgrep -f -- "__shim [0-9a-f]+ $work/" || true); do
    pod=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | awk '{print $3}') || continue
    for dir in "/sys/fs/cgroup/berth/shim-$pod" /sys/fs/cgroup/*/berth/shim-"$pod"; do
      if [[ -f $dir/cgroup.procs ]]; then xargs -r kill -9 < "$dir/cgroup.procs" 2>/dev/null || true; fi
    done
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [[ -d /proc/$pid ]] || break; sleep 0.05; done
    for dir in "/sys/fs/cgroup/berth/shim-$pod" /sys/fs/cgroup/*/berth/shim-"$pod"; do
      if [[ -d $dir ]]; then rmdir "$dir" 2>/dev/null || true; fi
    done
  done
}

bench_daemon_cleanup() {
  stop_bench_daemon
  if declare -F stop_containerd >/dev/null; then stop_containerd; fi
  remove_bench_shims
  remove_bench_cgroups
  hack/registry.sh stop "$work/registry" >/dev/null 2>&1 || true
  remove_bench_work
  rm -rf /tmp/berth-bench-logs
}
