#!/usr/bin/env bash
# hack/soak.sh — berth under steady pod churn for a long time, to see that nothing grows.
#
# Usage: hack/soak.sh [DURATION]     (seconds, or with an m or h suffix; default 1h)
#
# A release daemon (metrics on) with Debian's bridge CNI chain, in a network namespace of its own with its own
# registry (hack/bench/pod-daemon.sh), is driven by examples/soak.rs: standing pods the whole time, kubelet's
# polling, and pods run, exec'd (ExecSync and streaming sessions, SPDY and WebSocket), port-forwarded to, their
# logs read, stopped and removed at SOAK_CYCLES_PER_MINUTE (60). Every minute it records the daemon's RSS, open
# fds, threads and tokio tasks, the standing shims' RSS and fds, the size of berth's database and each step's
# p50 and p99 latency (target/soak/soak.csv). Afterwards it checks that the node is back to empty (no shim, veth,
# IP lease, mount or cgroup of the run left), and hack/soak-report.py decides whether the figures level off
# after the warm-up and plots them (target/soak/soak.png; needs matplotlib, installed from Debian if missing).
# Fails on any failed step, anything left behind, or growth that does not level off.
set -euo pipefail
cd "$(dirname "$0")/../"
duration=${1:-1h}
case $duration in
  *h) seconds=$((${duration%h} * 3600)) ;;
  *m) seconds=$((${duration%m} * 60)) ;;
  *) seconds=$duration ;;
esac
target=${CARGO_TARGET_DIR:-target}
out=${SOAK_OUT:-target/soak}

if [[ -z ${BERTH_SOAK_IN_NETNS:-} ]]; then
  [[ $(id -u) == 0 ]] || { echo "soak: run as root (namespaces, mounts, cgroups)" >&2; exit 1; }
  if ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-matplotlib >/dev/null
  fi
  # Two builds, as hack/bench/pods.sh explains: the example must not change the daemon binary's features.
  cargo build --quiet --release --bin berth && cargo build --quiet --release --example soak
  exec env BERTH_SOAK_IN_NETNS=1 unshare --net "$0" "$@"
fi
source hack/bench/pod-daemon.sh

export BENCH_EXTRA_CONFIG=$'[metrics]\nenabled = true\naddress = "127.0.0.1:9539"'
start_bench_daemon berth-soak berthsoak0
mkdir -p "$out"
csv="$out/soak.csv"
echo "soak: $seconds s, daemon pid $daemon_pid, work $work; one row a minute to $csv"
status=0
SOAK_DAEMON_PID=$daemon_pid SOAK_ROOT=$work/root SOAK_METRICS=127.0.0.1:9539 SOAK_LOG_DIR=$work/logs \
  "$target/release/examples/soak" "$endpoint" "$image" "$seconds" "$csv" || status=$?

# With every pod removed, the node holds nothing of them.
left=()
shims=$(pgrep -c '^berth-shim:' || true)
[[ $shims == 0 ]] || left+=("$shims shim processes")
veths=$(ip -o link show type veth | wc -l)
[[ $veths == 0 ]] || left+=("$veths veths")
leases=$(find "$work/leases" -type f ! -name 'last_reserved_ip*' ! -name lock 2>/dev/null | wc -l)
[[ $leases == 0 ]] || left+=("$leases IP leases")
mounts=$(grep -c " $work/run/berth/\| $work/root/" /proc/self/mountinfo || true)
[[ $mounts == 0 ]] || left+=("$mounts mounts under berth's root and state")
# The pod<uid> level is kubelet's (created and removed by it, as the driver plays kubelet only over the CRI); the
# sandbox's and containers' cgroups below it are the runtime's.
cgroups=$(for dir in "/sys/fs/cgroup$BENCH_CGROUP_PARENT" /sys/fs/cgroup/*"$BENCH_CGROUP_PARENT"; do
  [[ -d $dir ]] && find "$dir" -mindepth 2 -type d; done 2>/dev/null | wc -l)
[[ $cgroups == 0 ]] || left+=("$cgroups container or sandbox cgroups")
if [[ ${#left[@]} -gt 0 ]]; then
  echo "soak: left behind after the last pod was removed: ${left[*]}" >&2
  status=1
else
  echo "soak: after the run: no shim, veth, IP lease, mount or container cgroup left"
fi
echo "soak: daemon log: $(grep -c '"level":"ERROR"' "$work/daemon.log" || true) errors, $(grep -c '"level":"WARN"' "$work/daemon.log" || true) warnings"
grep '"level":"\(ERROR\|WARN\)"' "$work/daemon.log" | head -20 >&2 || true

# Debian's python3, the one python3-matplotlib is for (a python3 earlier on PATH may lack it).
/usr/bin/python3 hack/soak-report.py "$csv" --plot "$out/soak.png" || status=1
exit "$status"
