#!/usr/bin/env bash
# hack/systemd-node.sh — boot a real systemd as PID 1 of private namespaces (a "systemd node") for e2e tests.
#
# Usage: hack/systemd-node.sh start DIR   -> "systemd-node: node NAME running|degraded[ (failed: UNITS)], PID 1 is
#                                             host pid N, cgroup /berth-systemd-node-NAME, up in MS ms"; exit 1 if not
#        hack/systemd-node.sh exec DIR CMD [ARG...] -> CMD's own output and exit status (125: could not join cgroups)
#        hack/systemd-node.sh stop DIR    -> no output; exit 0, also when nothing runs or DIR is gone
#
# What: `start` runs Debian's /lib/systemd/systemd (252) as PID 1 of new pid, mount, cgroup, UTS, IPC and network
#       namespaces, in the cgroup /berth-systemd-node-NAME (NAME: DIR's basename) of every hierarchy under
#       /sys/fs/cgroup, which its cgroup namespace makes its root. systemd runs in hybrid mode like the host (v1
#       controllers, cgroup2 at /sys/fs/cgroup/unified for its own tracking); a unit's cgroup /SLICE/UNIT inside is
#       /sys/fs/cgroup/HIER/berth-systemd-node-NAME/SLICE/UNIT on the host. It boots berth-node.target: journald
#       (volatile) and dbus-daemon (the system bus, /run/dbus/system_bus_socket) behind basic.target, nothing else:
#       every other unit of the vendor sysinit/sockets/timers/paths/local-fs/basic/slices wants is masked, as is every
#       D-Bus-activatable service (logind, hostnamed, timedated, PackageKit, ...), no generator runs and the host's
#       /etc/systemd/system (its enabled units) is hidden. `start` returns when `systemctl is-system-running` says
#       running or degraded (typically 0.4-0.9 s), else fails after BERTH_SYSTEMD_NODE_TIMEOUT (20) s with the
#       console's last lines, cleaning up all but DIR. systemd raises the kernel's fs.file-max; `start` restores it.
#       `exec` runs CMD with nsenter in all the node's namespaces and its root cgroup, cwd /, with the caller's stdio
#       and environment (minus NOTIFY_SOCKET, DBUS_*_BUS_ADDRESS, XDG_RUNTIME_DIR). Killing `exec` kills nsenter
#       only; CMD lives on inside the node.
#       `stop` sends PID 1 SIGRTMIN+4 (poweroff; 0.2-0.4 s), SIGKILLs it after BERTH_SYSTEMD_NODE_STOP_TIMEOUT (15) s,
#       kills whatever is left in the node's cgroups, removes them in every hierarchy and removes DIR (only if it holds
#       the `cgroup` file `start` wrote, or is empty). Nothing is ever mounted in the host's mount namespace.
# Why:  berth's systemd cgroup driver needs a real systemd PID 1 (D-Bus API, transient scopes in slices, sd_notify),
#       CI machines do not boot with systemd, and a node per test keeps tests apart and leaves the host as it was.
# DIR:  pid (PID 1's host pid and start time), script.pid, cgroup, hostname, machine-id, console.log (the node's
#       /dev/console, a pty copied by script(1): systemd's messages and, via journald's ForwardToConsole, all units'
#       output; CRLF line ends), and system/, which is the node's /etc/systemd/system: write berth.service there from
#       the host, then `exec DIR systemctl daemon-reload`; units linked into system/berth-node.target.wants/ before
#       `start` start at boot. DIR is also bind-mounted at its own path inside, so a file or unix socket under DIR
#       (configs, berth's CRI socket, state) has the same path on both sides.
# Node: the host's root filesystem, shared (writes to /var, /usr, the checkout are real), with a private tmpfs /run,
#       /tmp and /dev/shm, a private /dev (copies of the host's device nodes minus consoles, kmsg and mem; own devpts
#       and mqueue), its own /proc, a read-only /sys, and per-node /etc/machine-id, /etc/hostname (berth-node-NAME) and
#       /etc/systemd/system. /proc/sys is the host kernel's, writable (it stays fully visible so that user-namespaced
#       containers can mount proc). The network namespace has only lo (127.0.0.1), so TCP ports inside (e.g. berth's
#       streaming server) are reachable only from inside. From the host, the system bus works at
#       /proc/PID/root/run/dbus/system_bus_socket, but /run/systemd/private does not (systemd refuses a peer outside
#       its pid namespace); inside, both do. On this host cpu and cpuacct are separate v1 hierarchies while systemd
#       assumes them co-mounted: it creates no cpuacct cgroups (CPUUsageNSec stays unset); cpuset it never manages.
# Share: BERTH_SYSTEMD_NODE_SHARE=PATH[:PATH...] at `start` binds those host directories at their own paths inside
#       too (the node's /tmp and /run are its own, so a checkout or a build under them is otherwise not there).
# Knobs: BERTH_SYSTEMD_NODE_TIMEOUT, BERTH_SYSTEMD_NODE_STOP_TIMEOUT, BERTH_SYSTEMD_NODE_LOG_LEVEL (systemd's,
#       default info), BERTH_SYSTEMD_NODE_SYSTEMD (the binary). Needs root and a v1/hybrid cgroup layout with a
#       name=systemd hierarchy; installs systemd, dbus, util-linux and bsdutils (script) with apt-get if missing.
set -euo pipefail

SELF=$(realpath "${BASH_SOURCE[0]}")
PROG=systemd-node
SYSTEMD_BIN=${BERTH_SYSTEMD_NODE_SYSTEMD:-/lib/systemd/systemd}
LOG_LEVEL=${BERTH_SYSTEMD_NODE_LOG_LEVEL:-info}
START_TIMEOUT=${BERTH_SYSTEMD_NODE_TIMEOUT:-20}
STOP_TIMEOUT=${BERTH_SYSTEMD_NODE_STOP_TIMEOUT:-15}
TARGET_UNIT=berth-node.target
# Units of the vendor *.target.wants directories that the node keeps; every other one is masked.
KEEP_UNITS=(systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket dbus.socket)
PACKAGES=(systemd dbus util-linux bsdutils)

die() {
  echo "$PROG: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 start DIR | exec DIR CMD [ARG...] | stop DIR" >&2
  exit 2
}

now_ms() {
  local t=${EPOCHREALTIME//[^0-9]/}
  echo $((t / 1000))
}

# cgroup_mounts: one line "MOUNTPOINT FSTYPE SUPEROPTIONS" per cgroup hierarchy mounted under /sys/fs/cgroup.
cgroup_mounts() {
  awk '{ for (i = 7; $i != "-"; i++) {}
         if (($(i + 1) == "cgroup" || $(i + 1) == "cgroup2") && index($5 "/", "/sys/fs/cgroup/") == 1)
           print $5, $(i + 1), $(i + 3) }' /proc/self/mountinfo
}

# proc_start PID: prints PID's start time (clock ticks after boot; tells it from a later process with the same pid),
# fails when PID is gone or a zombie (an orphan may wait a while for the host's init to reap it).
proc_start() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  [[ $1 != Z && $1 != X ]] || return 1
  echo "${20}"
}

# running FILE: prints the pid recorded in FILE ("PID START") if that very process is still alive.
running() {
  local pid start
  { read -r pid start <"$1"; } 2>/dev/null || return 1
  [[ -n $pid && -n $start && "$(proc_start "$pid")" == "$start" ]] || return 1
  echo "$pid"
}

node_name() {
  local n
  n=$(basename "$1")
  n=${n//[^A-Za-z0-9_.-]/_}
  [[ -n $n && $n != . && $n != .. ]] || die "cannot derive a node name from $1"
  echo "$n"
}

ensure_packages() {
  local missing=() pkg status log
  for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "$PROG: installing ${missing[*]}" >&2
  log="${TMPDIR:-/tmp}/berth-systemd-node.$$.log"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 25 "$log" >&2
    die "apt-get install ${missing[*]} failed (log: $log)"
  fi
  rm -f "$log"
}

# --- inside the node, before systemd ----------------------------------------------------------------------------

# __init DIR CGROUP: PID 1 of the new pid/mount/uts/ipc/net namespaces, still in the host's cgroup namespace and
# with the host's /proc mounted: learns its host pid, joins the node's cgroups, then unshares the cgroup namespace.
node_init() {
  local dir=$1 cg=$2 mp _fs _opts pid _rest
  read -r pid _rest </proc/self/stat
  while read -r mp _fs _opts; do
    echo 0 >"$mp/$cg/cgroup.procs"
  done < <(cgroup_mounts)
  exec unshare --cgroup -- "$SELF" __init2 "$dir" "$pid $(proc_start "$pid")"
}

# __init2 DIR "HOSTPID START": the same process in its own cgroup namespace: builds the node's mounts and config,
# writes DIR/pid and execs systemd.
node_init2() {
  local dir=$1 pidline=$2 mp fs opts t sub unit gen console link
  local -a hier links=()
  mapfile -t hier < <(cgroup_mounts)
  # Symlinks such as cpu -> cpu,cpuacct on hosts that co-mount controllers: recreated below, before the tmpfs is ro.
  for link in /sys/fs/cgroup/*; do
    [[ -L $link ]] && links+=("$link $(readlink "$link")")
  done
  cd "$dir"
  mount --make-rprivate /
  mount -t proc -o nosuid,nodev,noexec proc /proc
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
  # The node's cgroupfs: the host's hierarchies, mounted again from inside the cgroup namespace (so their root is
  # the node's cgroup), on a tmpfs that is then made read-only, as systemd-nspawn does.
  mount -t tmpfs -o nosuid,nodev,noexec,mode=755 tmpfs /sys/fs/cgroup
  for t in "${hier[@]}"; do
    read -r mp fs opts <<<"$t"
    opts=${opts#rw}
    opts=${opts#,}
    mkdir -p "$mp"
    mount -t "$fs" -o "nosuid,nodev,noexec${opts:+,$opts}" "$fs" "$mp"
  done
  for t in ${links[@]+"${links[@]}"}; do
    ln -s "${t#* }" "${t%% *}"
  done
  mount -o remount,ro,nosuid,nodev,noexec /sys/fs/cgroup
  # Host directories the caller shares (BERTH_SYSTEMD_NODE_SHARE, colon-separated; e.g. a checkout under /tmp):
  # opened now, bound back at their own paths once /run and /tmp are the node's.
  local share fd i
  local -a shares=() share_fds=() share_paths=()
  IFS=: read -r -a shares <<<"${BERTH_SYSTEMD_NODE_SHARE:-}"
  for share in ${shares[@]+"${shares[@]}"}; do
    [[ -n $share ]] || continue
    [[ $share == /* && -d $share ]] || die "BERTH_SYSTEMD_NODE_SHARE: $share is not an absolute path of a directory"
    exec {fd}<"$share"
    share_fds+=("$fd")
    share_paths+=("$share")
  done
  mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run
  mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
  # DIR may be hidden now (under /tmp or /run): bind it back from our working directory, which still is the old DIR.
  mkdir -p "$dir"
  mount --no-canonicalize --bind . "$dir"
  for i in "${!share_paths[@]}"; do
    mkdir -p "${share_paths[$i]}"
    mount --no-canonicalize --bind "/proc/self/fd/${share_fds[$i]}" "${share_paths[$i]}"
    fd=${share_fds[$i]}
    exec {fd}<&-
  done
  # A private /dev: the host's device nodes copied to a tmpfs (minus consoles, kmsg and memory devices), its own
  # devpts, /dev/shm and mqueue; /dev/console is script(1)'s pty (our stdin), which becomes DIR/console.log.
  mkdir /run/.dev
  mount -t tmpfs -o nosuid,mode=755 tmpfs /run/.dev
  cp -a --one-file-system /dev/. /run/.dev/
  rm -rf /run/.dev/{console,kmsg,mem,kmem,port,core,tty[0-9]*,ttyS*,vcs*,shm,pts,mqueue,hugepages,ptmx}
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
  # Per-node files over the host's /etc, so that nothing systemd writes there persists or reaches the host.
  [[ -f /etc/machine-id ]] || die "the host has no /etc/machine-id (systemd-machine-id-setup creates one)"
  mount --bind "$dir/machine-id" /etc/machine-id
  [[ -f /etc/hostname ]] && mount --bind "$dir/hostname" /etc/hostname
  mkdir -p /etc/systemd/system
  mount --bind "$dir/system" /etc/systemd/system
  hostname -F "$dir/hostname"

  mkdir -p /run/systemd/system /run/systemd/system-generators /run/systemd/system.conf.d /run/systemd/journald.conf.d
  cat >/run/systemd/system/$TARGET_UNIT <<EOF
[Unit]
Description=berth systemd node
Requires=basic.target
Wants=systemd-journald.service dbus.socket dbus.service
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
RuntimeMaxUse=32M
ReadKMsg=no
ForwardToConsole=yes
TTYPath=/dev/console
MaxLevelConsole=debug
ForwardToWall=no
EOF
  # No generator runs: they would turn the host's /etc/fstab, init scripts and consoles into units.
  for gen in /usr/lib/systemd/system-generators/* /usr/local/lib/systemd/system-generators/* /etc/systemd/system-generators/*; do
    [[ -e $gen ]] && ln -sfn /dev/null "/run/systemd/system-generators/${gen##*/}"
  done
  # Mask what the vendor targets pull in (tmpfiles, sysusers, sysctl, remount-fs, random-seed, utmp, binfmt, ...):
  # those would act on the host's shared filesystem and kernel. The host's own /etc/systemd/system is hidden above.
  for t in sysinit sockets timers paths local-fs basic slices; do
    for sub in /usr/lib/systemd/system/"$t".target.wants/* /usr/local/lib/systemd/system/"$t".target.wants/*; do
      [[ -e $sub || -L $sub ]] || continue
      unit=${sub##*/}
      [[ " ${KEEP_UNITS[*]} " == *" $unit "* ]] || ln -sfn /dev/null "/run/systemd/system/$unit"
    done
  done
  # Nor does D-Bus activation start anything: logind would create /var/lib/systemd/linger on the shared disk,
  # timedated/timesyncd would set the host's clock, localed write /etc, PackageKit install packages.
  for sub in /usr/share/dbus-1/system-services/*.service /usr/local/share/dbus-1/system-services/*.service; do
    [[ -f $sub ]] || continue
    unit=$(sed -n 's/^SystemdService=//p' "$sub")
    [[ -n $unit && $unit != dbus.service ]] || continue
    ln -sfn /dev/null "/run/systemd/system/$unit"
    if [[ -L /usr/lib/systemd/system/$unit ]]; then
      t=$(readlink "/usr/lib/systemd/system/$unit")
      ln -sfn /dev/null "/run/systemd/system/${t##*/}"
    fi
  done
  # Like the kernel gives a booting PID 1: a hard RLIMIT_NOFILE of fs.nr_open, so DefaultLimitNOFILE=1024:524288 holds.
  ulimit -Hn "$(cat /proc/sys/fs/nr_open)" 2>/dev/null || true
  echo "$pidline" >"$dir/pid"
  exec env -i container=berth-node TERM=dumb "$SYSTEMD_BIN" --unit=$TARGET_UNIT --log-target=journal-or-kmsg \
    --log-level="$LOG_LEVEL" --log-color=no --show-status=no
}

# --- host side --------------------------------------------------------------------------------------------------

# cgroup_setup CGROUP: creates the node's cgroup in every hierarchy (removing an empty leftover of a killed node).
cgroup_setup() {
  local cg=$1 mp _fs _opts f
  [[ $(cgroup_mounts) == *[\ ,]name=systemd* ]] ||
    die "no name=systemd cgroup hierarchy under /sys/fs/cgroup (the node needs the host's v1/hybrid layout)"
  while read -r mp _fs _opts; do
    [[ $mp != /sys/fs/cgroup ]] || die "cgroup2-only hosts are not supported (the node needs the hybrid layout)"
    if [[ -d $mp/$cg ]] && [[ -n "$(find "$mp/$cg" -name cgroup.procs -exec cat {} + 2>/dev/null)" ]]; then
      die "cgroup $mp/$cg is in use (another node with the name ${cg#berth-systemd-node-}?)"
    fi
  done < <(cgroup_mounts)
  cgroup_remove "$cg"
  while read -r mp _fs _opts; do
    mkdir "$mp/$cg"
    # A v1 cpuset cgroup takes no task before it has cpus and mems.
    for f in cpuset.cpus cpuset.mems; do
      if [[ -f $mp/$cg/$f && -z "$(cat "$mp/$cg/$f")" ]]; then
        cat "$mp/$f" >"$mp/$cg/$f"
      fi
    done
  done < <(cgroup_mounts)
}

# cgroup_remove CGROUP: kills whatever is left in the node's cgroups and removes them in every hierarchy.
cgroup_remove() {
  local cg=$1 mp _fs _opts d pid i left
  for ((i = 0; i < 50; i++)); do
    left=()
    while read -r mp _fs _opts; do
      d=$mp/$cg
      [[ -d $d ]] || continue
      while read -r pid; do
        [[ $pid == 0 ]] || kill -KILL "$pid" 2>/dev/null || true
      done < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d $d ]] && left+=("$d")
    done < <(cgroup_mounts)
    [[ ${#left[@]} -eq 0 ]] && return 0
    sleep 0.1
  done
  die "could not remove ${left[*]}"
}

# enter PID CMD...: runs CMD in all the namespaces of the node whose PID 1 is PID. nsenter itself stays in the
# caller's cgroup (a process of the host's pid namespace in the node's cgroups shows up as pid 0 in cgroup.procs,
# which systemd fails on); its child first joins the node's root cgroups, as seen from inside, so that systemd can
# move it into a scope (systemd-run --scope) and it dies with the node.
enter() {
  local pid=$1
  shift
  unset NOTIFY_SOCKET DBUS_SYSTEM_BUS_ADDRESS DBUS_SESSION_BUS_ADDRESS XDG_RUNTIME_DIR
  # shellcheck disable=SC2016
  exec nsenter --target "$pid" --mount --uts --ipc --net --pid --cgroup --wd=/ -- /bin/sh -c \
    'for f in /sys/fs/cgroup/*/cgroup.procs; do echo 0 >"$f" || exit 125; done; exec "$@"' systemd-node-exec "$@"
}

cmd_exec() {
  local dir pid
  dir=$(realpath -m "$1")
  shift
  [[ $# -gt 0 ]] || usage
  pid=$(running "$dir/pid") || die "no node is running in $dir"
  enter "$pid" "$@"
}

cmd_start() {
  local dir name cg host t0 deadline cmd state failed pid file_max
  dir=$(realpath -m "$1")
  name=$(node_name "$dir")
  cg=berth-systemd-node-$name
  [[ $(id -u) == 0 ]] || die "must run as root"
  if running "$dir/pid" >/dev/null; then die "a node is already running in $dir"; fi
  ensure_packages
  [[ -x $SYSTEMD_BIN ]] || die "$SYSTEMD_BIN not found"
  t0=$(now_ms)
  mkdir -p "$dir/system"
  rm -f "$dir/pid" "$dir/script.pid" "$dir/console.log"
  echo "$cg" >"$dir/cgroup"
  host=berth-node-${name,,}
  host=${host//[^a-z0-9-]/-}
  echo "${host:0:63}" >"$dir/hostname"
  tr -d - </proc/sys/kernel/random/uuid >"$dir/machine-id"
  cgroup_setup "$cg"
  file_max=$(cat /proc/sys/fs/file-max)
  # script(1) gives the node a pty for /dev/console (systemd logs only to a tty) and copies it to console.log.
  cmd=$(printf '%q ' unshare --mount --propagation private --pid --fork --kill-child --uts --ipc --net -- \
    "$SELF" __init "$dir" "$cg")
  setsid script --quiet --flush --return --command "$cmd" "$dir/console.log" </dev/null >/dev/null 2>&1 &
  echo "$! $(proc_start $! || echo 0)" >"$dir/script.pid"

  deadline=$((t0 + START_TIMEOUT * 1000))
  state=
  while (($(now_ms) < deadline)); do
    running "$dir/script.pid" >/dev/null || break
    if pid=$(running "$dir/pid"); then
      state=$("$SELF" exec "$dir" systemctl is-system-running 2>/dev/null || true)
      [[ $state == running || $state == degraded || $state == maintenance || $state == stopping ]] && break
    fi
    sleep 0.05
  done
  if [[ $state != running && $state != degraded ]]; then
    echo "$PROG: node $name did not come up (state: ${state:-none}); last lines of $dir/console.log:" >&2
    tail -n 30 "$dir/console.log" 2>/dev/null | tr -d '\r' >&2 || true
    stop_node "$dir" "$cg"
    exit 1
  fi
  # systemd raises the kernel-wide fs.file-max to LONG_MAX when it starts; put the host's value back.
  if [[ $file_max != 9223372036854775807 && $(cat /proc/sys/fs/file-max) != "$file_max" ]]; then
    echo "$file_max" >/proc/sys/fs/file-max
  fi
  failed=
  if [[ $state == degraded ]]; then
    failed=$("$SELF" exec "$dir" systemctl list-units --failed --plain --no-legend | awk '{print $1}' | paste -sd, -) || true
  fi
  echo "$PROG: node $name $state${failed:+ (failed: $failed)}, PID 1 is host pid $pid, cgroup /$cg, up in $(($(now_ms) - t0)) ms"
}

# stop_node DIR CGROUP: powers off (or kills) the node, waits for it and removes its cgroups; leaves DIR.
stop_node() {
  local dir=$1 cg=$2 pid deadline
  if pid=$(running "$dir/pid"); then
    kill -s RTMIN+4 "$pid" 2>/dev/null || true
    deadline=$(($(now_ms) + STOP_TIMEOUT * 1000))
    while running "$dir/pid" >/dev/null && (($(now_ms) < deadline)); do sleep 0.05; done
    # SIGKILL to PID 1 of a pid namespace kills every process in it.
    if running "$dir/pid" >/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  if pid=$(running "$dir/script.pid"); then
    deadline=$(($(now_ms) + 3000))
    while running "$dir/script.pid" >/dev/null && (($(now_ms) < deadline)); do sleep 0.05; done
    if running "$dir/script.pid" >/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  cgroup_remove "$cg"
}

cmd_stop() {
  local dir cg
  dir=$(realpath -m "$1")
  if [[ -f $dir/cgroup ]]; then cg=$(cat "$dir/cgroup"); else cg=berth-systemd-node-$(node_name "$dir"); fi
  stop_node "$dir" "$cg"
  [[ -e $dir ]] || return 0
  # Only a directory `start` made (it has the cgroup file) or an empty one is removed.
  if [[ ! -f $dir/cgroup && -n "$(ls -A "$dir" 2>/dev/null)" ]] || [[ $dir == / ]]; then
    die "$dir does not look like a node directory; not removing it"
  fi
  if findmnt -rn -o TARGET | awk -v d="$dir" '$0 == d || index($0, d "/") == 1 { found = 1 } END { exit !found }'; then
    die "something is mounted at or under $dir on the host; not removing it"
  fi
  rm -rf --one-file-system "$dir"
}

[[ $# -ge 2 ]] || usage
case $1 in
  start)
    [[ $# -eq 2 ]] || usage
    cmd_start "$2"
    ;;
  stop)
    [[ $# -eq 2 ]] || usage
    cmd_stop "$2"
    ;;
  exec)
    shift
    cmd_exec "$@"
    ;;
  __init) node_init "$2" "$3" ;;
  __init2) node_init2 "$2" "$3" ;;
  *) usage ;;
esac
