#!/usr/bin/env bash
# hack/chart-check.sh — lint and render charts/berth with the real helm, and check the DaemonSet it renders.
#
# Usage: hack/chart-check.sh   (make chart-check)
#
# What: 1. prerequisites: helm from hack/helm.sh (or BERTH_HELM=path), a python3 with PyYAML (Debian's
#          python3-yaml, apt-get installed when missing and run as root); any that cannot be had is a failure,
#          never a skip, in CI as anywhere;
#       2. the chart's appVersion (Chart.yaml) must equal Cargo.toml's [workspace.package] version, since the
#          default image is berth:<appVersion> and `make image` tags the image with the Cargo version;
#       3. `helm lint --strict` with the defaults and with the values of rendering b;
#       4. `helm template` three times, each checked by hack/chart-check.py (hostPID/hostNetwork, privileged,
#          image, host paths and their mount propagation, probes, command, the install init container):
#          a. defaults: image berth:<appVersion>;
#          b. image.repository=127.0.0.1:5000/berth, image.tag=<version>, daemon.enterHostNamespaces=true;
#          c. install.binDir=/opt/bin, install.configDir=/etc/berth-test, daemon.enterHostNamespaces=true.
#       Every failed check prints what was expected and what was found; the exit status is 1 if any failed.
# Why:  the chart is what installs berth on nodes; its templates are text, so only a rendering shows whether the
#       DaemonSet mounts, probes and installs what berth needs. helm keeps its cache and config in a temporary
#       directory, so nothing is written to ~/.config or ~/.cache by the check.
set -euo pipefail
cd "$(dirname "$0")/.."

chart=charts/berth
fail() {
  echo "chart-check: error: $*" >&2
  exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-chart-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
export HELM_CACHE_HOME=$work/helm/cache HELM_CONFIG_HOME=$work/helm/config HELM_DATA_HOME=$work/helm/data

# 1. Prerequisites.
helm=${BERTH_HELM:-}
if [[ -z "$helm" ]]; then
  helm=$(bash hack/helm.sh) || fail "hack/helm.sh could not install helm"
fi
[[ -x "$helm" ]] || fail "helm $helm is not an executable"

python=""
for candidate in python3 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml, tomllib' >/dev/null 2>&1; then
    python=$candidate
    break
  fi
done
if [[ -z "$python" ]]; then
  [[ $(id -u) -eq 0 ]] || fail "no python3 with PyYAML: install Debian's python3-yaml (apt-get install python3-yaml)"
  echo "chart-check: installing python3-yaml" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get install -y -qq --no-install-recommends python3-yaml ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-yaml; }; } >"$work/apt.log" 2>&1; then
    tail -n 20 "$work/apt.log" >&2
    fail "apt-get install python3-yaml failed"
  fi
  python=/usr/bin/python3
  "$python" -c 'import yaml, tomllib' || fail "/usr/bin/python3 cannot import yaml after installing python3-yaml"
fi

failed=0

# 2. Versions.
version=$("$python" -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"])')
app_version=$("$helm" show chart "$chart" | "$python" -c 'import sys, yaml; print(yaml.safe_load(sys.stdin).get("appVersion", ""))')
if [[ "$app_version" != "$version" ]]; then
  echo "chart-check: FAIL appVersion in $chart/Chart.yaml:" >&2
  echo "    expected '$version' (Cargo.toml [workspace.package] version)" >&2
  echo "    found    '$app_version'" >&2
  failed=1
fi

registry_values=(--set image.repository=127.0.0.1:5000/berth --set "image.tag=$version"
  --set daemon.enterHostNamespaces=true)
bin_dir_values=(--set install.binDir=/opt/bin --set install.configDir=/etc/berth-test
  --set daemon.enterHostNamespaces=true)

# 3. Lint.
lint() {
  local name=$1
  shift
  if "$helm" lint "$chart" --strict "$@" >"$work/lint-$name.log" 2>&1; then
    echo "chart-check: [$name] helm lint --strict passed"
    grep '^\[' "$work/lint-$name.log" | sed 's/^/    /' || true
  else
    echo "chart-check: FAIL [$name] helm lint --strict:" >&2
    sed 's/^/    /' "$work/lint-$name.log" >&2
    failed=1
  fi
}
lint defaults
lint registry "${registry_values[@]}"

# 4. Render and check: render_and_check NAME CHECK-ARGS... -- HELM-ARGS...
render_and_check() {
  local name=$1
  shift
  local -a check_args=()
  while [[ $# -gt 0 && "$1" != -- ]]; do
    check_args+=("$1")
    shift
  done
  shift
  if ! "$helm" template berth "$chart" --namespace kube-system "$@" >"$work/$name.yaml" 2>"$work/$name.err"; then
    echo "chart-check: FAIL [$name] helm template:" >&2
    sed 's/^/    /' "$work/$name.err" >&2
    failed=1
    return
  fi
  "$python" hack/chart-check.py "$work/$name.yaml" --name "$name" "${check_args[@]}" || failed=1
}
render_and_check defaults --image "berth:$app_version" --
render_and_check registry --image "127.0.0.1:5000/berth:$version" --enter-host-namespaces -- "${registry_values[@]}"
render_and_check bin-dir --image "berth:$app_version" --bin-dir /opt/bin --config-dir /etc/berth-test \
  --enter-host-namespaces -- "${bin_dir_values[@]}"

helm_version=$("$helm" version --template '{{.Version}}')
if [[ $failed -ne 0 ]]; then
  echo "chart-check: failed (helm $helm_version)" >&2
  exit 1
fi
echo "chart-check: $chart $version passed lint and 3 renderings (helm $helm_version)"
