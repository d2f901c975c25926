#!/usr/bin/env bash
# hack/link-order.sh — regenerates hack/link-order/berth.txt, the order in which the linker lays out berth's
# functions in release builds (build.rs passes it to lld as --symbol-ordering-file).
#
# Why: a process's resident memory counts every page of its binary it has mapped, and on a fault the kernel
# maps the 16 pages around the faulting one (fault-around) when they are in the page cache, as a binary's
# pages are. berth's idle daemon executes code on about 800 pages (3.3 MiB) of its 15 MB of code, scattered
# over the whole of it, so it had 8.3 MiB of code resident. With the functions it runs laid out together,
# the idle daemon's RSS went from 15.0 to 12.0 MiB (hack/bench/idle-rss.sh), and a pod's shim and the
# container init find their code together too.
#
# How: a release berth runs, from a copy on a filesystem without readahead whose pages were dropped from the
# cache, what a node runs: the daemon starts and answers what kubelet asks at start (the "idle" set), pulls
# an image, then runs pods with containers, ExecSync, stop and removal (examples/pod-bench.rs: the daemon,
# shims and container inits). The pages left in the cache are then exactly the pages those processes used
# (hack/link-order/resident-functions.py), and the file lists the functions on them: the idle set first,
# then what the pull added, then what the pods added, each in the address order the linker would have used. Functions are
# named as mangled, so the file holds for as long as their crates' versions, features and the toolchain stay
# the same; names it does not find are skipped silently (`--no-warn-symbol-ordering`) and those functions keep
# their usual place. A berth built in the same cargo command as an example has other names (Cargo unifies the
# dev-dependencies' features into its dependencies), so berth is built alone here, as `make release` builds it,
# and the benchmarks do the same. Rerun it after a toolchain or dependency update, or when
# `hack/bench/idle-rss.sh` finds few of the names. Run twice (the second run profiles the ordered build, whose
# pages hold less code that does not run) for the tightest order.
#
# Usage: hack/link-order.sh   (root; runs in its own network namespace; about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
if [[ -z ${BERTH_LINK_ORDER_IN_NETNS:-} ]]; then
  # Two builds: with an example, Cargo unifies the dev-dependencies' features into berth's dependencies, and
  # the binary's symbols would differ from those of the binary `cargo build --release` makes.
  cargo build --quiet --release --bin berth && cargo build --quiet --release --example pod-bench
  exec env BERTH_LINK_ORDER_IN_NETNS=1 unshare --net "$0" "$@"
fi
source hack/bench/pod-daemon.sh
ip link set lo up
binary="$target/release/berth"
daemon_pid=
# The benchmarks' cleanup: daemon, pods' cgroups, registry, and the work directory with every mount below it
# (the cold copy's filesystem too).
trap bench_daemon_cleanup EXIT
make_bench_work berth-link-order
export BENCH_CGROUP_PARENT="/$(basename "$work")"

# The binary the node's processes run: on an ext4 of its own, readahead off, its pages out of the cache.
cold="$work/cold"
mkdir -p "$cold"
truncate -s 1G "$work/cold.ext4"
mkfs.ext4 -q -F "$work/cold.ext4"
mount -o loop "$work/cold.ext4" "$cold"
echo 0 > "/sys/block/$(basename "$(findmnt -n -o SOURCE "$cold")")/queue/read_ahead_kb"
cp "$binary" "$cold/berth"
sync
evict_from_page_cache "$cold/berth"

registry=$(hack/registry.sh start "$work/registry")
python3 hack/test-images.py --registry "$registry" --only busybox --out "$work/images.json" >/dev/null
image="$registry/berth-test/busybox:latest"
write_bench_config berthorder0
"$cold/berth" serve --config "$work/config.toml" 2>"$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 200); do [[ -S $work/run/berth/berth.sock ]] && break; sleep 0.05; done
endpoint="unix://$work/run/berth/berth.sock"
# The client is the other copy: its command-line code is not the daemon's.
for verb in version info imagefsinfo pods ps images; do "$binary" -r "$endpoint" "$verb" >/dev/null; done
sleep 12 # the heap trimmer's first round
python3 hack/link-order/resident-functions.py "$binary" "$cold/berth" > "$work/idle.txt"
"$binary" -r "$endpoint" pull "$image" >/dev/null
sleep 12
python3 hack/link-order/resident-functions.py "$binary" "$cold/berth" > "$work/pull.txt"
BENCH_DAEMON_PID=$daemon_pid "$target/release/examples/pod-bench" "$endpoint" "$image" 10 3 >/dev/null
sleep 12
python3 hack/link-order/resident-functions.py "$binary" "$cold/berth" --mapped-by "$daemon_pid" > "$work/pods-daemon.txt"
python3 hack/link-order/resident-functions.py "$binary" "$cold/berth" > "$work/pods.txt"
# The idle set first, then what the pull added, then what the pods added to the daemon, then the pods'
# shims and container inits: a daemon that only pulled does not map the pod code's pages, and one that ran
# pods does not map the shim's and the init's, which it never runs.
awk '!seen[$0]++' "$work/idle.txt" "$work/pull.txt" "$work/pods-daemon.txt" "$work/pods.txt" \
  > hack/link-order/berth.txt
printf 'hack/link-order/berth.txt: %s functions (idle daemon %s, with a pull %s, daemon after pods %s)\n' \
  "$(wc -l < hack/link-order/berth.txt)" "$(wc -l < "$work/idle.txt")" "$(wc -l < "$work/pull.txt")" \
  "$(wc -l < "$work/pods-daemon.txt")"
