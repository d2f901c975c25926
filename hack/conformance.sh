#!/usr/bin/env bash
# hack/conformance.sh — judge berth with the real clients: upstream critest, a real kubelet, and Kubernetes'
# node e2e suite with its API server.
#
#   hack/conformance.sh [PART...]        PART: critest (SPDY), critest-websocket, kubelet, node-e2e
#                                        (default: all four, in that order; node-e2e takes about 25
#                                        minutes, the others one to five each)
#
# Uses the conformance kit (../shared/conformance by default; read only, nothing is copied from it): its
# critest, crictl, kubelet and e2e_node.test binaries, its loopback registry and images, its critest.sh and
# node-e2e.sh. The node e2e run adds the image the image-volume specs mount (hack/test-images.py kitten).
# Everything runs inside a private network namespace made here (`unshare --net`, loopback up): the registry
# on 127.0.0.1:5000, berth, critest and the kubelet. The bridge, veths and iptables rules the CNI plugins make
# stay in it and vanish with it. berth gets a private root, state directory and socket below the output
# directory, Debian's CNI plugins and the kit's bridge network, and mirrors registry.k8s.io, k8s.gcr.io and
# gcr.io to the kit's registry.
#
# After the parts ran, the daemon is stopped and the host is checked for what berth could leave behind:
# mounts below the output directory, berth's cgroups, berth processes. Any failed spec, failed kubelet-suite
# check or leftover makes the exit status 1; a kit that cannot be used makes it 2.
#
# Environment:
#   BERTH_KIT      [../shared/conformance beside the checkout]   the kit's directory
#   BERTH_BIN      [target/release/berth]  the berth binary to judge (built first by `make conformance`)
#   OUT            [target/conformance]    outputs: summary.txt and one directory per part
#   CRITEST_WEBSOCKET_FOCUS  [empty: the full suite]  a ginkgo focus for the WebSocket run
#   FOCUS, SKIP    passed to critest.sh (narrow the critest runs)
#   NODE_E2E_FOCUS [\[NodeConformance\]|\[Feature:ImageVolume\]|\[Feature:CheckpointContainer\]]  the node e2e specs (a ginkgo regex);
#                  NODE_E2E_PROCS [8] its parallelism. See docs/conformance.md for the time it takes.
#   NODE_E2E_SKIP  [the ContainerMetrics spec]  added to the kit's skip list. With kubelet's default
#                  gates, /metrics/cadvisor has per-container series only for the runtimes kubelet's
#                  built-in cAdvisor has a handler for (containerd, CRI-O); with the alpha
#                  PodAndContainerStatsFromCRI gate kubelet serves them from berth's ListPodSandboxMetrics
#                  and the spec skips itself (docs/conformance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

KIT=${BERTH_KIT:-$repo/../shared/conformance}
BERTH_BIN=${BERTH_BIN:-$repo/target/release/berth}
OUT=${OUT:-$repo/target/conformance}
# The full suite by default (under a minute); 'Streaming runtime' narrows it to the specs that stream (exec,
# attach, port-forward), all the transport changes.
CRITEST_WEBSOCKET_FOCUS=${CRITEST_WEBSOCKET_FOCUS-}
NODE_E2E_FOCUS=${NODE_E2E_FOCUS:-'\[NodeConformance\]|\[Feature:ImageVolume\]|\[Feature:CheckpointContainer\]'}
NODE_E2E_PROCS=${NODE_E2E_PROCS:-8}
NODE_E2E_SKIP=${NODE_E2E_SKIP-'ContainerMetrics .*should report container metrics'}

die() { echo "conformance: $*" >&2; exit 2; }
log() { echo "conformance $(date +%H:%M:%S): $*"; }

parts=("$@")
((${#parts[@]})) || parts=(critest critest-websocket kubelet node-e2e)
for p in "${parts[@]}"; do
  case $p in
    critest|critest-websocket|kubelet|node-e2e) ;;
    *) die "unknown part '$p' (critest, critest-websocket, kubelet, node-e2e)" ;;
  esac
done

# ------------------------------------------------------------------ outside: check, fetch, enter a netns
if [[ ${BERTH_CONFORMANCE_NETNS:-} != 1 ]]; then
  [[ $(id -u) == 0 ]] || die "must run as root"
  [[ -d $KIT && -x $KIT/critest.sh ]] || die "no conformance kit at $KIT (set BERTH_KIT)"
  KIT=$(cd "$KIT" && pwd)
  [[ -x $BERTH_BIN ]] || die "no berth binary at $BERTH_BIN (cargo build --release, or set BERTH_BIN)"
  BERTH_BIN=$(readlink -f "$BERTH_BIN")
  "$KIT/tools.sh" --verify >/dev/null || die "the kit's binaries do not match bin/VERSIONS"
  # The only step that needs the network (apt downloads of the images' Debian inputs; cached).
  "$KIT/images.sh" fetch | tail -1
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  if [[ " ${parts[*]} " == *" node-e2e "* ]]; then
    "$KIT/node-images.sh" build >"$OUT/node-images-build.log" 2>&1 ||
      { tail -20 "$OUT/node-images-build.log" >&2; die "node-images.sh build failed ($OUT/node-images-build.log)"; }
  fi
  export KIT BERTH_BIN OUT CRITEST_WEBSOCKET_FOCUS NODE_E2E_FOCUS NODE_E2E_PROCS NODE_E2E_SKIP BERTH_CONFORMANCE_NETNS=1
  exec unshare --net --fork -- bash "$0" "${parts[@]}"
fi

# ------------------------------------------------------------------ inside the private network namespace
ip link set lo up
run=$OUT
rm -rf "${run:?}"/{critest,critest-websocket,kubelet,node-e2e,berth,registry,summary.txt}
mkdir -p "$run"
summary=$run/summary.txt
: >"$summary"
failed=0
note() { echo "$*" | tee -a "$summary"; }

D=$run/berth
SOCK=$D/berth.sock
crictl=$("$KIT/tools.sh" crictl)
berth_pid=

stop_berth() {
  [[ -n $berth_pid ]] || return 0
  # berth's shims outlive the daemon by design: remove every pod first, then stop the daemon.
  if [[ -S $SOCK ]]; then
    "$crictl" -r "unix://$SOCK" -i "unix://$SOCK" --timeout 120s rmp -fa >/dev/null 2>&1 || true
  fi
  kill -TERM "$berth_pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$berth_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$berth_pid" 2>/dev/null || true
  wait "$berth_pid" 2>/dev/null || true
  berth_pid=
}

cleanup() {
  stop_berth
  "$KIT/registry.sh" stop "$run/registry" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap "exit 130" INT TERM

log "registry and images (kit: $KIT)"
"$KIT/registry.sh" start "$run/registry" >/dev/null || die "the kit's registry did not start ($run/registry)"
"$KIT/images.sh" >"$run/images.log" 2>&1 || { tail -20 "$run/images.log" >&2; die "images.sh failed ($run/images.log)"; }

log "berth from $BERTH_BIN"
# 0700, as `mktemp -d` makes it: a user-namespaced pod's root must not need to search berth's directories.
mkdir -p -m 0700 "$D"
mkdir -p "$D/net.d"
# The kit's bridge network, with the pods' default route through the bridge: node e2e pods reach the node's
# address (node-e2e.sh puts it on a bridge of its own) that way.
sed -e "s|@IPAM_DIR@|$D/ipam|" -e 's|"isGateway": true,|"isGateway": true, "isDefaultGateway": true,|' \
  "$KIT/examples/cni/10-kit.conflist" >"$D/net.d/10-kit.conflist"
grep -q isDefaultGateway "$D/net.d/10-kit.conflist" || die "could not add isDefaultGateway to the kit's conflist"
"$BERTH_BIN" config default |
  sed -e "s#\"/run/berth/berth.sock\"#\"$SOCK\"#" -e "s#\"/var/lib/berth\"#\"$D/root\"#" \
      -e "s#\"/run/berth\"#\"$D/state\"#" -e "s#^conf_dir = .*#conf_dir = \"$D/net.d\"#" \
      -e "s#^bin_dirs = .*#bin_dirs = [\"/usr/lib/cni\"]#" >"$D/config.toml"
cat "$KIT/examples/berth.toml" >>"$D/config.toml"
# The RuntimeClass handler the node e2e specs run pods with (e2enode.PreconfiguredRuntimeClassHandler).
printf '\n[runtime_handlers."test-handler"]\n' >>"$D/config.toml"
"$BERTH_BIN" config check "$D/config.toml" >/dev/null
BERTH_LOG=${BERTH_LOG:-debug} setsid "$BERTH_BIN" serve --config "$D/config.toml" >"$D/daemon.log" 2>&1 </dev/null &
berth_pid=$!
for _ in $(seq 200); do [[ -S $SOCK ]] && break; kill -0 "$berth_pid" 2>/dev/null || break; sleep 0.05; done
[[ -S $SOCK ]] || { tail -20 "$D/daemon.log" >&2; die "berth did not serve $SOCK"; }
"$crictl" -r "unix://$SOCK" --timeout 30s info >/dev/null 2>&1 || die "berth does not answer on $SOCK"

# node_e2e OUTDIR [ginkgo flags]: the kit's node e2e suite on berth's socket (NODE_E2E_FOCUS, NODE_E2E_PROCS,
# and the kit's KUBELET_FLAGS); sets rc and result. The registry stays on :5000 (critest's images are there): node-e2e.sh
# then skips the 5 [Serial] private-registry specs, which upstream's parallel job skips anyway.
node_e2e() {
  local out=$1
  shift
  if REGISTRY=127.0.0.1:5000 "$KIT/node-images.sh" push >"$out.push.log" 2>&1 &&
    python3 hack/test-images.py --registry 127.0.0.1:5000 --only kitten >>"$out.push.log" 2>&1
  then
    if PROCS=$NODE_E2E_PROCS FOCUS=$NODE_E2E_FOCUS "$KIT/node-e2e.sh" "$SOCK" "$out" "$@" >"$out.log" 2>&1
    then rc=0; else rc=$?; fi
    result=$(head -1 "$out/summary.txt" 2>/dev/null || echo "no summary")
  else
    rc=1 result="pushing the node e2e images failed ($out.push.log)"
  fi
}

for part in "${parts[@]}"; do
  t0=$(date +%s)
  case $part in
    critest)
      log "critest, SPDY, full suite"
      if "$KIT/critest.sh" "$SOCK" "$run/critest" >/dev/null 2>&1; then rc=0; else rc=$?; fi
      result=$(head -1 "$run/critest/summary.txt" 2>/dev/null || echo "no summary")
      ;;
    critest-websocket)
      log "critest, WebSocket, ${CRITEST_WEBSOCKET_FOCUS:+specs matching $CRITEST_WEBSOCKET_FOCUS}${CRITEST_WEBSOCKET_FOCUS:-full suite}"
      if FOCUS=${FOCUS:-$CRITEST_WEBSOCKET_FOCUS} "$KIT/critest.sh" "$SOCK" "$run/critest-websocket" --websocket >/dev/null 2>&1
      then rc=0; else rc=$?; fi
      result=$(head -1 "$run/critest-websocket/summary.txt" 2>/dev/null || echo "no summary")
      ;;
    kubelet)
      log "kubelet suite (e2e/kubelet)"
      if python3 e2e/kubelet/suite.py --kit "$KIT" --socket "$SOCK" --out "$run/kubelet" >"$run/kubelet.log" 2>&1
      then rc=0; else rc=$?; fi
      result=$(tail -1 "$run/kubelet.log")
      ;;
    node-e2e)
      log "node e2e: $NODE_E2E_FOCUS, $NODE_E2E_PROCS processes${NODE_E2E_SKIP:+, skipping $NODE_E2E_SKIP}"
      node_e2e "$run/node-e2e" ${NODE_E2E_SKIP:+"--skip=$NODE_E2E_SKIP"}
      ;;
  esac
  note "$part: $result ($(($(date +%s) - t0)) s)"
  if ((rc != 0)); then
    failed=1
    case $part in
      critest*|node-e2e*) sed -n '2,$p' "$run/$part/summary.txt" 2>/dev/null | tee -a "$summary" ;;
      # a failed check's line and the indented lines that go on with its reasons
      kubelet) awk '/^(FAIL|ERROR)/ { on = 1; print; next } on && /^  / { print; next } { on = 0 }' \
                 "$run/kubelet.log" | tee -a "$summary" | grep . || tail -20 "$run/kubelet.log" ;;
    esac
  fi
done

# ------------------------------------------------------------------ stop berth; nothing may be left
log "stopping berth; checking for leftovers"
stop_berth
leftovers=$(
  awk -v d="$D/" 'index($5, d) == 1 {print "mount " $5}' /proc/self/mountinfo
  pgrep -a -f "$BERTH_BIN" | sed 's/^/process /' || true
  for h in /sys/fs/cgroup/*/berth /sys/fs/cgroup/berth; do
    [[ -d $h ]] && find "$h" -mindepth 1 -type d | sed 's/^/cgroup /'
  done
  find "$D/ipam" -type f ! -name lock ! -name 'last_reserved_ip*' 2>/dev/null | sed 's/^/ip lease /'
)
if [[ -n $leftovers ]]; then
  failed=1
  note "left behind after every pod was removed and berth stopped:"
  echo "$leftovers" | head -30 | sed 's/^/  /' | tee -a "$summary"
fi
# The empty per-hierarchy /berth cgroups (the shims' parent) are the daemon's, kept across restarts.
for h in /sys/fs/cgroup/*/berth /sys/fs/cgroup/berth; do [[ -d $h ]] && rmdir "$h" 2>/dev/null; done
awk -v d="$D/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r umount -l

if ((failed)); then note "conformance: FAILED (outputs in $run)"; exit 1; fi
note "conformance: passed (outputs in $run)"
