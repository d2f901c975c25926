#!/usr/bin/env bash
# hack/install.sh — install berth on this node: the binary, its systemd unit and a configuration file.
#
# Usage: hack/install.sh BINARY          (what `make install` runs)
# Env:   DESTDIR  staging root for packagers (default: none, the live system)
#        PREFIX   where the binary goes, $PREFIX/bin/berth (default /usr/local)
#        UNIT_DIR where berth.service goes (default /etc/systemd/system)
#        CONFIG_DIR where config.toml goes (default /etc/berth)
# What:  the binary is copied under a temporary name and renamed (a running daemon keeps its old file);
#        deploy/systemd/berth.service is installed with ExecStart pointing at the binary; config.toml is
#        written from `berth config default` only if there is none (an operator's file is never replaced),
#        with the systemd cgroup driver when systemd runs this node (kubeadm configures kubelet that way).
#        On a live systemd node, `systemctl daemon-reload` follows. Nothing is enabled or started: the
#        last lines say how.
set -euo pipefail

die() { echo "install: error: $*" >&2; exit 1; }

binary=${1:-}
[[ -n "$binary" ]] || die "usage: $0 BINARY"
[[ -x "$binary" ]] || die "$binary is not an executable file (build it with: make release)"
here=$(cd "$(dirname "$0")/.." && pwd)
destdir=${DESTDIR:-}
prefix=${PREFIX:-/usr/local}
unit_dir=${UNIT_DIR:-/etc/systemd/system}
config_dir=${CONFIG_DIR:-/etc/berth}
# systemd is PID 1 here (sd_booted(3)); a staging install for another machine decides nothing from this one.
systemd_node=false
[[ -z "$destdir" && -d /run/systemd/system ]] && systemd_node=true

install -d -m 0755 "$destdir$prefix/bin" "$destdir$unit_dir" "$destdir$config_dir"

target="$destdir$prefix/bin/berth"
install -m 0755 "$binary" "$target.new"
mv -f "$target.new" "$target"
echo "install: $target"

unit="$destdir$unit_dir/berth.service"
sed "s|^ExecStart=.*|ExecStart=$prefix/bin/berth serve --config $config_dir/config.toml|" \
  "$here/deploy/systemd/berth.service" >"$unit.new"
chmod 0644 "$unit.new"
mv -f "$unit.new" "$unit"
echo "install: $unit"

config="$destdir$config_dir/config.toml"
if [[ -e "$config" ]]; then
  echo "install: $config exists; left as it is"
else
  driver=cgroupfs
  $systemd_node && driver=systemd
  "$binary" config default | sed "s|^driver = \"cgroupfs\"$|driver = \"$driver\"|" >"$config.new"
  "$binary" config check "$config.new" >/dev/null || die "the generated $config.new does not check"
  chmod 0644 "$config.new"
  mv -f "$config.new" "$config"
  echo "install: $config (cgroup driver $driver)"
fi

if $systemd_node; then
  systemctl daemon-reload
  echo "install: start it with: systemctl enable --now berth"
else
  echo "install: with systemd, start it with: systemctl daemon-reload && systemctl enable --now berth"
fi
echo "install: then point kubelet at unix:///run/berth/berth.sock (containerRuntimeEndpoint)"
