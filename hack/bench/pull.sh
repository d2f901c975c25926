#!/usr/bin/env bash
# hack/bench/pull.sh — cold pull of the ~100 MB five-layer test image from a loopback registry: berth
# (download, verify, unpack, record) beside `skopeo copy` to an OCI directory (download and verify only).
#
# One private registry (hack/registry.sh) holds berth-test/big (hack/test-images.py). Each run starts from
# an empty store: berth removes the image (its blobs and snapshots are collected) before pulling again;
# skopeo copies into a fresh directory. berth and skopeo alternate, so both see the same page cache and
# machine load. Prints each run and the medians: wall time and MB/s (bytes the pull fetches / time).
#
# Usage: hack/bench/pull.sh [berth-binary] [runs]   (default target/release/berth, 5 runs)
set -euo pipefail
cd "$(dirname "$0")/../.."

berth=${1:-target/release/berth}
runs=${2:-5}
[[ -x $berth ]] || { echo "pull.sh: $berth not built (cargo build --release)" >&2; exit 1; }
command -v skopeo >/dev/null || { echo "pull.sh: skopeo missing (hack/install-deps.sh)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-pull.XXXXXX")
berth_pid=""
cleanup() {
  [[ -n $berth_pid ]] && { kill "$berth_pid" 2>/dev/null || true; wait "$berth_pid" 2>/dev/null || true; }
  bash hack/registry.sh stop "$work/registry" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

address=$(bash hack/registry.sh start "$work/registry")
python3 hack/test-images.py --registry "$address" --only big --out "$work/images.json" >/dev/null 2>&1
image=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["big"]["ref"])' "$work/images.json")
bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["big"]["size"])' "$work/images.json")

mkdir -p "$work/berth"
cat >"$work/berth/config.toml" <<TOML
[daemon]
root = "$work/berth/root"
state = "$work/berth/state"
socket = "$work/berth/state/berth.sock"

[registries."$address"]
insecure = true
TOML
"$berth" serve --config "$work/berth/config.toml" 2>"$work/berth/log" &
berth_pid=$!
for _ in $(seq 200); do [[ -S $work/berth/state/berth.sock ]] && break; sleep 0.05; done
endpoint="unix://$work/berth/state/berth.sock"

now() { date +%s.%N; }
berth_times=()
skopeo_times=()
for run in $(seq "$runs"); do
  "$berth" -r "$endpoint" rmi "$image" >/dev/null
  sync
  start=$(now)
  "$berth" -r "$endpoint" pull "$image" >/dev/null
  end=$(now)
  berth_times+=("$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')")

  rm -rf "$work/oci"
  sync
  start=$(now)
  skopeo copy -q --src-tls-verify=false "docker://$image" "oci:$work/oci:big" >/dev/null
  end=$(now)
  skopeo_times+=("$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')")
  printf 'run %d: berth %.3f s, skopeo %.3f s\n' "$run" "${berth_times[-1]}" "${skopeo_times[-1]}"
done

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
b=$(median "${berth_times[@]}")
s=$(median "${skopeo_times[@]}")
awk -v b="$b" -v s="$s" -v bytes="$bytes" -v runs="$runs" 'BEGIN {
  printf "image: %.1f MB in 5 layers, %d runs, medians:\n", bytes / 1e6, runs
  printf "  berth pull (download + verify + unpack):  %.3f s  %6.1f MB/s\n", b, bytes / 1e6 / b
  printf "  skopeo copy to oci: (download + verify):  %.3f s  %6.1f MB/s\n", s, bytes / 1e6 / s
  printf "  berth / skopeo: %.2fx (goal: <= 1.2x)\n", b / s
}'
