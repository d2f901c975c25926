# shellcheck shell=bash
# hack/bench/containerd.sh — sourced by the benchmarks (runp.sh, pods.sh, stats.sh) for their
# BERTH_BENCH_CONTAINERD=1 mode: a throwaway containerd (Debian's `containerd` package, 1.6, CRI plugin, runc v2
# shim, overlayfs snapshotter, cgroupfs) serving CRI on a socket of its own, wired by the same CNI plugins as
# berth, so both are measured by the same client in the same run. Nothing of the host's containerd is used or
# touched: no /etc/containerd, /var/lib/containerd, /run/containerd or /opt/containerd.
#
# Usage: start_containerd DIR REGISTRY BRIDGE [VOLATILE]
#          DIR: an empty directory for everything of this containerd
#          REGISTRY: 127.0.0.1:PORT serving berth-test/pause (plain HTTP)
#          BRIDGE: the name of its CNI bridge (each run uses its own)
#          VOLATILE: where its state and runc's go (default DIR); the benchmarks give a tmpfs, as /run is on a
#          node (hack/bench/pod-daemon.sh says why)
#        -> sets ctd_pid (containerd's pid) and ctd_endpoint (unix://DIR/containerd.sock)
#        stop_containerd   kills what is left (pods, shims, containerd); safe to call twice or from a trap
#
# Why each setting (the first is what makes it run on the project VM at all; the next three keep it off the
# host's paths):
# - restrict_oom_score_adj = true. containerd asks runc to give the sandbox's pause process oom_score_adj -998
#   (kubelet asks for negative values for Guaranteed and Burstable containers too). Lowering oom_score_adj below its current value
#   needs CAP_SYS_RESOURCE, which root lacks on the project VM (and in many CI containers and nested VMs). runc
#   1.1 writes the value from its C bootstrap (nsexec) in the container's child process; the write fails with
#   EPERM, nsexec dies, and runc only says "can't get final child's PID from pipe: EOF" (its debug log has the
#   cause: "failed to update /proc/self/oom_score_adj: Permission denied"). This option, made for rootless and
#   nested setups, clamps every requested value to no lower than containerd's own (0 here), so RunPodSandbox
#   works. It changes no timing: the write happens either way.
# - runc's state under DIR (runtimes.runc.options.Root): the default is /run/containerd/runc, the host's.
# - netns_mounts_under_state_dir = true: pod network namespaces are pinned under
#   DIR/state/io.containerd.grpc.v1.cri/netns instead of /var/run/netns, so they never appear in the host's
#   `ip netns`.
# - containerd runs in a private mount namespace with a tmpfs over /run/containerd: 1.6 puts its shims'
#   sockets in /run/containerd/s whatever the config says. In that namespace they, the overlay mounts of the
#   containers' root filesystems and the netns pins vanish with the last process, even after a crash.
# - cgroupfs (SystemdCgroup = false): the VM has no systemd; berth uses its cgroupfs driver too. The pods'
#   cgroups go under the benchmark's cgroup parent (BENCH_CGROUP_PARENT), which the caller removes.
# - sandbox_image: containerd's CRI needs an image for the pause container; the `pause` test image
#   (hack/test-images.py: busybox running `sleep`) from the benchmark's registry, over plain HTTP (mirror).
# - CNI from /usr/lib/cni (Debian's containernetworking-plugins), the repo's bridge conflist with its own
#   bridge name and host-local leases under DIR, so it shares no bridge or lease with berth's run.
# - The opt plugin's directory under DIR (default /opt/containerd).

start_containerd() {
  local dir=$1 registry=$2 bridge=$3 volatile=${4:-$1}
  mkdir -p "$dir/cni"
  sed -e "s/\"berth0\"/\"$bridge\"/" -e "s|\"ipam\": {|\"ipam\": { \"dataDir\": \"$dir/leases\",|" \
    hack/cni/10-berth-bridge.conflist > "$dir/cni/10-berth-bridge.conflist"
  cat > "$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$volatile/state"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$registry/berth-test/pause:latest"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$volatile/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$registry"]
    endpoint = ["http://$registry"]
TOML
  # The tmpfs needs a mount point; make it (and remove it afterwards) only if the host has none.
  ctd_made_run_dir=
  if [[ ! -d /run/containerd ]]; then mkdir -p /run/containerd; ctd_made_run_dir=1; fi
  ctd_dir=$dir
  # unshare without --fork execs, so $! is containerd itself (the daemon whose memory pods.sh reports).
  unshare --mount --propagation private -- sh -c \
    'mount -t tmpfs -o mode=0700 containerd-bench /run/containerd && exec containerd --config "$1"' \
    sh "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
  ctd_pid=$!
  ctd_endpoint="unix://$dir/containerd.sock"
  for _ in $(seq 200); do [[ -S $dir/containerd.sock ]] && break; sleep 0.05; done
  if [[ ! -S $dir/containerd.sock ]]; then
    echo "containerd did not start; last lines of $dir/containerd.log:" >&2
    tail -n 20 "$dir/containerd.log" >&2
    return 1
  fi
}

# The processes of this containerd: its shims (their command line names its socket) and what runs in the
# pods' cgroups under BENCH_CGROUP_PARENT.
containerd_leftovers() {
  local cmdline pid
  for cmdline in /proc/[0-9]*/cmdline; do
    pid=${cmdline#/proc/}; pid=${pid%/cmdline}
    # (A process may end while it is read: its errors are of no interest.)
    if { tr '\0' ' ' <"$cmdline"; } 2>/dev/null | grep -qF -- "-address $ctd_dir/containerd.sock"; then echo "$pid"; fi
  done
  bench_cgroup_pids
}

stop_containerd() {
  [[ -n ${ctd_dir:-} ]] || return 0
  # A run that ended normally removed its pods, and the shims are gone; after a failure, kill what is left.
  local pid
  for pid in $(containerd_leftovers); do kill -9 "$pid" 2>/dev/null || true; done
  if [[ -n ${ctd_pid:-} ]]; then
    kill "$ctd_pid" 2>/dev/null || true
    wait "$ctd_pid" 2>/dev/null || true
    ctd_pid=
  fi
  # The mount namespace (tmpfs, overlays, netns pins) goes with its last process; wait for them.
  for _ in $(seq 100); do [[ -z $(containerd_leftovers) ]] && break; sleep 0.1; done
  [[ -n ${ctd_made_run_dir:-} ]] && rmdir /run/containerd 2>/dev/null || true
  ctd_dir=
}
