#!/usr/bin/env bash
# hack/install-deps.sh — install the Debian packages berth's tests and scripts use on the host.
#
# What: checks (with dpkg-query) which of the packages below are missing and installs only those, with
#       apt-get, quietly; prints exactly one line saying what it found or did.
# Why:  the e2e tests need a local OCI registry (docker-registry), a static busybox to build test images from
#       without internet (busybox-static), the CNI plugins, runc/skopeo/umoci to cross-check our runtime and
#       images against reference tools, and the usual network/mount utilities. protobuf-compiler is for the
#       e2e tests' independent CRI client (the k8s-cri crate runs protoc from PATH); berth itself builds with
#       a vendored protoc. libseccomp-dev and pkg-config build the runtime crate's seccomp support (the
#       libseccomp crate links the system library, as runc and youki do). apache2-utils (htpasswd) and openssl
#       make the TLS + basic-auth test registry. containerd (with ctr and containerd-shim-runc-v2) drives
#       `berth runtime` as its runc in an e2e test, and is the peer of the idle-RSS benchmark. jq, curl, gcc,
#       make, binutils, dpkg-dev, bzip2 and xz-utils build the conformance kit's images and run its scripts;
#       util-linux-extra gives ipcmk, which critest's HostIpc specs run on the host. zstd compresses the
#       layer seeds of the fuzz targets.
# Idempotent: a second run installs nothing and only prints "all N packages present".
# Side effect guard: Debian's docker-registry package tries to start its service (port 5000) on install. A
#       policy-rc.d answering 101 ("action forbidden") is in place during the install so no daemon is left
#       running; hack/registry.sh starts private registries on free ports instead.
set -euo pipefail

PACKAGES=(
  containernetworking-plugins
  docker-registry
  busybox-static
  runc
  skopeo
  umoci
  iproute2
  iptables
  # nft: the CNI tests compare the nat rules each path writes as nf_tables holds them
  nftables
  util-linux
  python3
  protobuf-compiler
  libseccomp-dev
  pkg-config
  apache2-utils
  openssl
  containerd
  # the conformance kit (../shared/conformance): its image build, its scripts and critest's HostIpc specs
  jq
  curl
  gcc
  make
  binutils
  dpkg-dev
  bzip2
  xz-utils
  util-linux-extra
  # the fuzz targets' seed corpora (hack/fuzz-seeds.py compresses layer seeds with zstd)
  zstd
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: error: must run as root to install packages (try: sudo $0)" >&2
  exit 1
fi

log="${TMPDIR:-/tmp}/berth-install-deps.$$.log"
policy=/usr/sbin/policy-rc.d
policy_backup=""
restore_policy() {
  rm -f "$policy"
  if [[ -n "$policy_backup" ]]; then
    mv -f "$policy_backup" "$policy"
  fi
}
if [[ -e "$policy" ]]; then
  policy_backup="$(mktemp "${TMPDIR:-/tmp}/policy-rc.d.XXXXXX")"
  cp -p "$policy" "$policy_backup"
fi
trap restore_policy EXIT
# invoke-rc.d consults this: 101 = "action not allowed", so no service (docker-registry on :5000) is started.
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 0755 "$policy"

fail() {
  echo "install-deps: error: $1 failed; last lines of $log:" >&2
  tail -n 25 "$log" >&2 || true
  exit 1
}

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >>"$log" 2>&1 || fail "apt-get update"
apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1 || fail "apt-get install ${missing[*]}"

# Belt and braces: if a registry daemon got started anyway (e.g. an init system ignoring policy-rc.d), stop it.
if command -v invoke-rc.d >/dev/null 2>&1; then
  invoke-rc.d docker-registry stop >>"$log" 2>&1 || true
fi
if pids=$(pgrep -x docker-registry 2>/dev/null); then
  for pid in $pids; do
    # Only the packaged service (config under /etc/docker/registry), not registries hack/registry.sh started.
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q '/etc/docker/registry/'; then
      kill "$pid" 2>/dev/null || true
    fi
  done
fi

still=()
for pkg in "${missing[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || still+=("$pkg")
done
if [[ ${#still[@]} -ne 0 ]]; then
  echo "install-deps: error: still missing after install: ${still[*]} (log: $log)" >&2
  exit 1
fi
rm -f "$log"
