#!/usr/bin/env bash
# hack/criu.sh — put a CRIU that works on this kernel at /usr/local/sbin/criu, built from Debian's source.
#
# Why: container checkpoints (CheckpointContainer) run CRIU. Debian 12's criu 3.17.1 cannot initialise on
#      Linux 6.13 and later ("vdso: Unexpected rt vDSO area bounds": those kernels added a vvar_vclock mapping,
#      handled from CRIU 4.1; 4.1.1 restores on 6.16+, 4.2 knows the newer guard pages). Debian 12 has no
#      newer binary (backports carries none, and later releases' builds need glibc 2.38), so this builds the
#      newest Debian source release with Debian 12's build dependencies.
# What: skips everything when /usr/local/sbin/criu already reports VERSION; otherwise installs the build
#      dependencies with apt-get, downloads the pinned orig tarball from Debian's archive (apt's mirror; the
#      sha256 is checked), builds `criu` with make -j2 in a cache directory, installs the binary and runs
#      `criu check`. Prints one line at the end. Nothing lands in the checkout.
# Time: about 3 minutes on 2 cores the first time; nothing afterwards.
set -euo pipefail

VERSION=4.2.1
SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
TARBALL=criu_$VERSION.orig.tar.xz
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${CRIU_CACHE:-/var/cache/berth-criu}
TARGET=/usr/local/sbin/criu

die() { echo "criu.sh: $*" >&2; exit 1; }

if [[ -x $TARGET ]] && "$TARGET" --version 2>/dev/null | grep -qx "Version: $VERSION"; then
  echo "criu.sh: criu $VERSION present ($TARGET)"
  exit 0
fi
[[ $(id -u) == 0 ]] || die "must run as root (installs build dependencies and $TARGET)"

BUILD_DEPS=(gcc make pkg-config python3 python3-protobuf protobuf-c-compiler libprotobuf-c-dev libprotobuf-dev
  protobuf-compiler libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libnftables-dev uuid-dev
  iproute2 iptables tar)
missing=()
for p in "${BUILD_DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
fi

mkdir -p "$CACHE"
if ! echo "$SHA256  $CACHE/$TARBALL" | sha256sum -c --status 2>/dev/null; then
  # Debian keeps a source in the pool while a suite carries it; the version is pinned with its checksum.
  curl -fsSL --retry 3 -o "$CACHE/$TARBALL.part" "$MIRROR/pool/main/c/criu/$TARBALL" ||
    die "cannot download $MIRROR/pool/main/c/criu/$TARBALL (is $VERSION still in Debian? update VERSION and SHA256 from dists/sid/main/source/Sources.xz)"
  echo "$SHA256  $CACHE/$TARBALL.part" | sha256sum -c --status || die "$TARBALL: sha256 mismatch"
  mv "$CACHE/$TARBALL.part" "$CACHE/$TARBALL"
fi

src=$CACHE/criu-$VERSION
rm -rf "$src"
mkdir -p "$src"
tar -xJf "$CACHE/$TARBALL" -C "$src" --strip-components=1
if ! make -C "$src" -j"$(nproc)" criu >"$CACHE/build.log" 2>&1; then
  tail -20 "$CACHE/build.log" >&2
  die "building criu $VERSION failed ($CACHE/build.log)"
fi
install -m 0755 "$src/criu/criu" "$TARGET"
rm -rf "$src"
if ! "$TARGET" check >"$CACHE/check.log" 2>&1; then
  cat "$CACHE/check.log" >&2
  die "criu $VERSION installed at $TARGET but 'criu check' fails on this host ($CACHE/check.log)"
fi
echo "criu.sh: criu $VERSION built and installed at $TARGET; criu check: $(tail -1 "$CACHE/check.log")"
