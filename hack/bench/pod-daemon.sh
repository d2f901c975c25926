# hack/bench/pod-daemon.sh — sourced by the pod benchmarks (pods.sh, stats.sh) once they run inside their own
# network namespace: a registry with the busybox test image, and a release berth daemon wired by Debian's
# bridge + host-local + portmap + loopback plugins (hack/cni/10-berth-bridge.conflist, bridge renamed), with
# the image pulled. Everything is removed on exit.
#
# Usage: start_bench_daemon WORK_PREFIX BRIDGE   (needs $target; sets work, daemon_pid, endpoint, image)

start_bench_daemon() {
  local prefix=$1 bridge=$2
  ip link set lo up
  work=$(mktemp -d "${TMPDIR:-/tmp}/$prefix.XXXXXX")
  daemon_pid=
  trap bench_daemon_cleanup EXIT

  local address
  address=$(hack/registry.sh start "$work/registry")
  python3 hack/test-images.py --registry "$address" --only busybox --out "$work/images.json" >/dev/null
  image="$address/berth-test/busybox:latest"

  mkdir -p "$work/cni"
  sed "s/\"berth0\"/\"$bridge\"/" hack/cni/10-berth-bridge.conflist > "$work/cni/10-berth-bridge.conflist"
  cat > "$work/config.toml" <<TOML
[daemon]
root = "$work/root"
state = "$work/state"
socket = "$work/state/berth.sock"
[cni]
conf_dir = "$work/cni"
[registries."$address"]
insecure = true
TOML
  "$target/release/berth" serve --config "$work/config.toml" 2>"$work/daemon.log" &
  daemon_pid=$!
  for _ in $(seq 200); do [[ -S $work/state/berth.sock ]] && break; sleep 0.05; done
  endpoint="unix://$work/state/berth.sock"
  "$target/release/berth" -r "$endpoint" pull "$image" >/dev/null
}

bench_daemon_cleanup() {
  [[ -n $daemon_pid ]] && { kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; }
  hack/registry.sh stop "$work/registry" >/dev/null 2>&1 || true
  rm -rf "$work" /tmp/berth-bench-logs
}
