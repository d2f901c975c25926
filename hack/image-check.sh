#!/usr/bin/env bash
# hack/image-check.sh — berth's image is reproducible, and berth pulls it from a registry.
#
# Usage: hack/image-check.sh [BINARY]   (make image-check; BINARY defaults to target/release/berth)
#
# What: builds the image twice with hack/image.py from the same binary into two directories and requires the
#       same manifest digest and byte-identical archives; pushes the first to a private registry
#       (hack/registry.sh, 127.0.0.1) with skopeo; starts the binary itself as a daemon on a private root,
#       state and socket in a private network namespace that also holds the registry, pulls the image with
#       `berth pull` and requires the image id to be the config digest and the repo digest the manifest
#       digest of the layout; stops the daemon and the registry and removes everything. Prints one line.
# Why:  the chart installs from this image; a build that is not reproducible cannot be verified by its digest.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=${1:-target/release/berth}
fail() {
  echo "image-check: error: $*" >&2
  exit 1
}
[[ -x "$binary" ]] || fail "$binary is not an executable (make release)"
for tool in skopeo unshare python3; do
  command -v "$tool" >/dev/null || fail "missing $tool (bash hack/install-deps.sh)"
done
binary=$(realpath "$binary")

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-image-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

version=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"])')
first=$(python3 hack/image.py --binary "$binary" --out "$work/a/berth-oci" | tail -n 1)
second=$(python3 hack/image.py --binary "$binary" --out "$work/b/berth-oci" --no-smoke-test | tail -n 1)
[[ "$first" == sha256:* ]] || fail "hack/image.py printed no digest: $first"
[[ "$first" == "$second" ]] || fail "two builds of the same binary differ: $first and $second"
cmp -s "$work/a/berth-oci.tar" "$work/b/berth-oci.tar" || fail "the two archives differ"
config=$(python3 - "$work/a/berth-oci" "$first" <<'PY'
import json, sys
layout, digest = sys.argv[1], sys.argv[2]
manifest = json.load(open(f"{layout}/blobs/sha256/{digest.split(':')[1]}"))
print(manifest["config"]["digest"])
PY
)

# The registry and the daemon share a network namespace of their own (loopback only).
cat >"$work/inside.sh" <<'INSIDE'
set -euo pipefail
work=$1 binary=$2 version=$3
ip link set lo up
address=$(bash hack/registry.sh start "$work/registry")
stop() {
  [[ -n "${daemon:-}" ]] && kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
  bash hack/registry.sh stop "$work/registry" >/dev/null 2>&1 || true
}
trap stop EXIT
skopeo copy --quiet --dest-tls-verify=false "oci:$work/a/berth-oci:$version" "docker://$address/berth:$version"
cat >"$work/config.toml" <<CONFIG
[daemon]
root = "$work/root"
state = "$work/state"
socket = "$work/berth.sock"
[cni]
conf_dir = "$work/cni"
[registries."$address"]
insecure = true
CONFIG
"$binary" serve --config "$work/config.toml" >"$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [[ -S "$work/berth.sock" ]] && break; sleep 0.1; done
export CONTAINER_RUNTIME_ENDPOINT="unix://$work/berth.sock"
"$binary" pull "$address/berth:$version" >"$work/pull.out" 2>"$work/pull.err" || {
  cat "$work/pull.err" "$work/daemon.log" >&2
  exit 1
}
"$binary" inspecti -o json "$address/berth:$version"
INSIDE
status=$(unshare --net -- bash "$work/inside.sh" "$work" "$binary" "$version") || fail "push and pull failed"
python3 - "$status" "$config" "$first" <<'PY' || fail "the pulled image is not the one built"
import json, sys
status, config, manifest = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
image = status["status"]
assert image["id"] == config, f"image id {image['id']}, config digest {config}"
assert any(d.endswith("@" + manifest) for d in image["repoDigests"]), f"repo digests {image['repoDigests']}, manifest {manifest}"
PY
size=$(stat -c %s "$work/a/berth-oci.tar")
echo "image-check: $first reproduced, $((size / 1024 / 1024)) MiB archive, pushed and pulled by berth as $config"
