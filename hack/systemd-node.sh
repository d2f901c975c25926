#!/usr/bin/env bash
# hack/systemd-node.sh — boot a real systemd as PID 1 of private namespaces (a "systemd node") for tests.
# (header: see below, filled in later)
set -euo pipefail

SELF=$(realpath "${BASH_SOURCE[0]}")
PROG=systemd-node
SYSTEMD_BIN=${BERTH_SYSTEMD_NODE_SYSTEMD:-/lib/systemd/systemd}
START_TIMEOUT=${BERTH_SYSTEMD_NODE_TIMEOUT:-20}
STOP_TIMEOUT=${BERTH_SYSTEMD_NODE_STOP_TIMEOUT:-15}
TARGET_UNIT=berth-node.target
# Units of the vendor *.target.wants directories that the node keeps; every other one is masked (see mask_units).
KEEP_UNITS=(systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket dbus.socket)
PACKAGES=(systemd dbus util-linux iproute2)

die() { echo "$PROG: $*" >&2; exit 1; }

usage() {
  echo "usage: $0 start DIR | exec DIR CMD [ARG...] | stop DIR" >&2
  exit 2
}

# cgroup_mounts: one line "MOUNTPOINT FSTYPE SUPEROPTIONS" per cgroup hierarchy mounted under /sys/fs/cgroup.
cgroup_mounts() {
  awk '{ for (i = 7; $i != "-"; i++) {}
         if (($(i + 1) == "cgroup" || $(i + 1) == "cgroup2") && ($5 == "/sys/fs/cgroup" || index($5, "/sys/fs/cgroup/") == 1))
           print $5, $(i + 1), $(i + 3) }' /proc/self/mountinfo
}

# proc_start PID: the start time (clock ticks since boot) of PID, which tells a process from a later one that reused its pid.
proc_start() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  echo "${20}"
}

# node_pid DIR: prints the host pid of the node's PID 1 if it is still that process, fails otherwise.
node_pid() {
  local pid start
  { read -r pid start <"$1/pid"; } 2>/dev/null || return 1
  [[ -n $pid && -n $start && "$(proc_start "$pid")" == "$start" ]] || return 1
  echo "$pid"
}

node_name() { # DIR -> sanitised basename
  local n
  n=$(basename "$1")
  n=${n//[^A-Za-z0-9_.-]/_}
  [[ $n != . && $n != .. && -n $n ]] || die "cannot derive a node name from $1"
  echo "$n"
}

ensure_packages() {
  local missing=() pkg status log
  for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log="${TMPDIR:-/tmp}/berth-systemd-node.$$.log"
  echo "$PROG: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 25 "$log" >&2
    die "apt-get install ${missing[*]} failed (log: $log)"
  fi
  rm -f "$log"
}

# --- inside the node, before systemd -------------------------------------------------------------------------

# __init DIR CGROUP: PID 1 of the new pid/mount/uts/ipc/net namespaces, still in the host's cgroup namespace.
node_init() {
  local dir=$1 cg=$2 mp _fs _opts pid rest
  # /proc is still the host's here, so this reads our host pid.
  read -r pid rest </proc/self/stat
  echo "$pid $(proc_start "$pid")" >"$dir/pid"
  while read -r mp _fs _opts; do
    echo 0 >"$mp/$cg/cgroup.procs"
  done < <(cgroup_mounts)
  exec unshare --cgroup -- "$SELF" __init2 "$dir"
}

# __init2 DIR: same process, now in its own cgroup namespace rooted at the node's cgroups: mounts, config, exec systemd.
node_init2() {
  local dir=$1 mp fs opts sub gen unit t console
  local -a hier
  mapfile -t hier < <(cgroup_mounts)
  cd "$dir"
  mount --make-rprivate /
  mount -t proc -o nosuid,nodev,noexec proc /proc
  mount --bind /proc/sys /proc/sys
  mount --bind /proc/sys/net /proc/sys/net
  mount -o remount,bind,ro,nosuid,nodev,noexec /proc/sys
  if [[ -e /proc/sysrq-trigger ]]; then
    mount --bind /proc/sysrq-trigger /proc/sysrq-trigger
    mount -o remount,bind,ro /proc/sysrq-trigger
  fi
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
  mount -t tmpfs -o nosuid,nodev,noexec,mode=755 tmpfs /sys/fs/cgroup
  for t in "${hier[@]}"; do
    read -r mp fs opts <<<"$t"
    [[ $mp != /sys/fs/cgroup ]] || die "cgroup2-only hosts are not supported"
    opts=${opts#rw}
    opts=${opts#,}
    mkdir -p "$mp"
    mount -t "$fs" -o "nosuid,nodev,noexec${opts:+,$opts}" "$fs" "$mp"
  done
  mount -o remount,ro,nosuid,nodev,noexec /sys/fs/cgroup
  mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run
  mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
  # DIR may now be hidden (under /tmp or /run): bind it back from our working directory, which still is DIR.
  mkdir -p "$dir"
  mount --no-canonicalize --bind . "$dir"
  # A private /dev: a copy of the host's device nodes (minus consoles, kmsg, mem) on a tmpfs, with its own devpts,
  # /dev/shm and mqueue. /dev/console is a null device, so nothing reaches the host's console.
  mkdir /run/.dev
  mount -t tmpfs -o nosuid,mode=755 tmpfs /run/.dev
  cp -a --one-file-system /dev/. /run/.dev/
  rm -rf /run/.dev/{console,kmsg,mem,kmem,port,core,tty[0-9]*,vcs*,ttyS*,shm,pts,mqueue,hugepages,ptmx}
  if console=$(tty); then
    touch /run/.dev/console
    mount --bind "$console" /run/.dev/console
  else
    mknod -m 600 /run/.dev/console c 1 3
  fi
  mkdir -m 755 /run/.dev/pts /run/.dev/mqueue
  mkdir -m 1777 /run/.dev/shm
  ln -s pts/ptmx /run/.dev/ptmx
  mount --move /run/.dev /dev
  rmdir /run/.dev
  mount -t devpts -o newinstance,nosuid,noexec,mode=620,ptmxmode=0666,gid=5 devpts /dev/pts
  mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
  mount -t mqueue -o nosuid,nodev,noexec mqueue /dev/mqueue
  mount --bind "$dir/machine-id" /etc/machine-id
  mount --bind "$dir/hostname" /etc/hostname
  mount --bind "$dir/system" /etc/systemd/system
  hostname -F "$dir/hostname"

  mkdir -p /run/systemd/system /run/systemd/system-generators /run/systemd/system.conf.d /run/systemd/journald.conf.d
  cat >/run/systemd/system/$TARGET_UNIT <<EOF
[Unit]
Description=berth systemd node
Requires=basic.target
Wants=dbus.socket dbus.service systemd-journald.service
After=basic.target dbus.socket dbus.service
AllowIsolate=yes
EOF
  cat >/run/systemd/system.conf.d/berth-node.conf <<'EOF'
[Manager]
ShowStatus=no
LogColor=no
DefaultTimeoutStopSec=10s
EOF
  cat >/run/systemd/journald.conf.d/berth-node.conf <<'EOF'
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToConsole=no
ForwardToWall=no
RuntimeMaxUse=16M
EOF
  # No generator runs: they would turn the host's /etc/fstab, init scripts and consoles into units.
  for gen in /usr/lib/systemd/system-generators/* /usr/local/lib/systemd/system-generators/* /etc/systemd/system-generators/*; do
    [[ -e $gen ]] && ln -sfn /dev/null "/run/systemd/system-generators/${gen##*/}"
  done
  # Mask what the vendor targets pull in (tmpfiles, sysusers, sysctl, remount-fs, random-seed, utmp, ...): those
  # would act on the host's shared filesystem and kernel. The host's own /etc/systemd/system is hidden already.
  for t in sysinit sockets timers paths local-fs basic slices; do
    for sub in /usr/lib/systemd/system/"$t".target.wants/* /usr/local/lib/systemd/system/"$t".target.wants/*; do
      [[ -e $sub || -L $sub ]] || continue
      unit=${sub##*/}
      [[ " ${KEEP_UNITS[*]} " == *" $unit "* ]] && continue
      ln -sfn /dev/null "/run/systemd/system/$unit"
    done
  done
  exec env -i container=berth-node TERM=dumb "$SYSTEMD_BIN" --unit=$TARGET_UNIT --log-target=console --log-color=no --show-status=no
}

# --- host side -------------------------------------------------------------------------------------------------

cgroup_setup() {
  local cg=$1 mp _fs _opts f
  while read -r mp _fs _opts; do
    [[ $mp != /sys/fs/cgroup ]] || die "cgroup2-only hosts are not supported"
    mkdir -p "$mp/$cg"
    # A v1 cpuset cgroup takes no task before it has cpus and mems.
    for f in cpuset.cpus cpuset.mems; do
      if [[ -f $mp/$f && -f $mp/$cg/$f && -z "$(cat "$mp/$cg/$f")" ]]; then
        cat "$mp/$f" >"$mp/$cg/$f"
      fi
    done
  done < <(cgroup_mounts)
}

# cgroup_remove CGROUP: kill whatever is left in the node's cgroups and remove them in every hierarchy.
cgroup_remove() {
  local cg=$1 mp _fs _opts d pid i left
  for i in $(seq 50); do
    left=0
    while read -r mp _fs _opts; do
      d=$mp/$cg
      [[ -d $d ]] || continue
      while read -r pid; do
        kill -KILL "$pid" 2>/dev/null || true
      done < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d $d ]] && left=1
    done < <(cgroup_mounts)
    [[ $left == 0 ]] && return 0
    sleep 0.1
  done
  die "could not remove cgroup $cg in: $(for d in /sys/fs/cgroup/*/"$cg"; do [[ -d $d ]] && echo "$d"; done)"
}

# enter PID CMD...: run CMD in all the namespaces of the node whose PID 1 is PID. nsenter itself stays outside (in
# the caller's cgroup: a process of the host's pid namespace in the node's cgroups would show up as pid 0 there and
# confuse systemd); its child moves into the node's root cgroups first, as seen from inside, so that systemd can
# take it into a scope (systemd-run --scope) and it is killed with the node.
enter() {
  local pid=$1
  shift
  # shellcheck disable=SC2016
  exec nsenter --target "$pid" --mount --uts --ipc --net --pid --cgroup --wd=/ -- /bin/sh -c \
    'for f in /sys/fs/cgroup/*/cgroup.procs; do echo 0 >"$f" || exit 125; done; exec "$@"' systemd-node-exec "$@"
}

cmd_exec() {
  local dir pid
  dir=$(realpath -m "$1")
  shift
  [[ $# -gt 0 ]] || usage
  pid=$(node_pid "$dir") || die "no node running in $dir"
  enter "$pid" "$@"
}

cmd_start() {
  local dir name cg t0 pid state i failed
  dir=$(realpath -m "$1")
  name=$(node_name "$dir")
  cg=berth-systemd-node-$name
  [[ $(id -u) == 0 ]] || die "must run as root"
  if node_pid "$dir" >/dev/null; then die "a node is already running in $dir"; fi
  ensure_packages
  [[ -x $SYSTEMD_BIN ]] || die "$SYSTEMD_BIN not found"
  t0=$(date +%s%N)
  mkdir -p "$dir/system"
  rm -f "$dir/pid" "$dir/console.log"
  echo "$cg" >"$dir/cgroup"
  local host=berth-node-${name,,}
  host=${host//[^a-z0-9-]/-}
  echo "${host:0:63}" >"$dir/hostname"
  tr -d - </proc/sys/kernel/random/uuid >"$dir/machine-id"
  cgroup_setup "$cg"
  # script(1) gives the node a pty as /dev/console (systemd only logs to a tty) and copies it to console.log.
  local cmd
  cmd=$(printf '%q ' unshare --mount --propagation private --pid --fork --kill-child --uts --ipc --net -- \
    "$SELF" __init "$dir" "$cg")
  setsid script --quiet --flush --return --command "$cmd" "$dir/console.log" </dev/null >/dev/null 2>&1 &
  echo "$!" >"$dir/unshare.pid"
  state=
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    if ! kill -0 "$(cat "$dir/unshare.pid")" 2>/dev/null; then
      break
    fi
    if pid=$(node_pid "$dir"); then
      state=$("$SELF" exec "$dir" systemctl is-system-running 2>/dev/null || true)
      case $state in
        running | degraded) break ;;
      esac
    fi
    sleep 0.1
  done
  if [[ $state != running && $state != degraded ]]; then
    echo "$PROG: node $name did not come up (state: ${state:-none}); last lines of $dir/console.log:" >&2
    tail -n 30 "$dir/console.log" | tr -d '\r' >&2 || true
    stop_node "$dir" "$cg"
    exit 1
  fi
  failed=
  if [[ $state == degraded ]]; then
    failed=$("$SELF" exec "$dir" systemctl list-units --failed --plain --no-legend 2>/dev/null | awk '{print $1}' | paste -sd, -)
  fi
  echo "$PROG: node $name $state${failed:+ (failed: $failed)}, PID 1 is host pid $pid, cgroup /$cg, up in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

# stop_node DIR CGROUP: power off (then kill) the node and remove its cgroups; leaves DIR.
stop_node() {
  local dir=$1 cg=$2 pid upid i
  if pid=$(node_pid "$dir"); then
    kill -s RTMIN+4 "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
      [[ "$(proc_start "$pid")" == "$(cut -d' ' -f2 "$dir/pid")" ]] || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  if [[ -f $dir/unshare.pid ]]; then
    upid=$(cat "$dir/unshare.pid")
    for ((i = 0; i < 50; i++)); do
      kill -0 "$upid" 2>/dev/null || break
      [[ $i == 20 ]] && kill -KILL "$upid" 2>/dev/null
      sleep 0.1
    done
  fi
  cgroup_remove "$cg"
}

cmd_stop() {
  local dir cg
  dir=$(realpath -m "$1")
  if [[ -f $dir/cgroup ]]; then cg=$(cat "$dir/cgroup"); else cg=berth-systemd-node-$(node_name "$dir"); fi
  stop_node "$dir" "$cg"
  if [[ -d $dir ]]; then
    if findmnt -rn -o TARGET | grep -qF "$dir"; then die "something is mounted under $dir on the host; not removing it"; fi
    rm -rf --one-file-system "$dir"
  fi
}

[[ $# -ge 2 ]] || usage
case $1 in
  start) [[ $# -eq 2 ]] || usage; cmd_start "$2" ;;
  stop) [[ $# -eq 2 ]] || usage; cmd_stop "$2" ;;
  exec) shift; cmd_exec "$@" ;;
  __init) node_init "$2" "$3" ;;
  __init2) node_init2 "$2" ;;
  *) usage ;;
esac
