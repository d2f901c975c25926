#!/usr/bin/env bash
# hack/registry.sh — run a private, throwaway OCI registry for tests.
#
# Usage: hack/registry.sh start DIR   -> prints 127.0.0.1:PORT (also written to DIR/registry.addr)
#        hack/registry.sh stop DIR    -> stops the registry started with the same DIR
#
# What: starts Debian's docker-registry (distribution 2.x, package docker-registry, see hack/install-deps.sh)
#       on 127.0.0.1 and a free port, with filesystem storage in DIR/storage, its config in DIR/config.yml, its
#       log in DIR/registry.log and its pid in DIR/registry.pid, and waits until GET /v2/ answers 200.
# Why:  e2e tests and pull benchmarks need a real registry that speaks the OCI distribution API, with no
#       internet and no fixed port (so parallel test runs and a packaged registry on :5000 never collide).
#       It listens on loopback only; its debug/metrics listener is not configured, so it does not exist.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR | stop DIR" >&2
  exit 2
}

[[ $# -eq 2 ]] || usage
cmd=$1
dir=$2
registry_bin=${BERTH_REGISTRY_BIN:-/usr/bin/docker-registry}

# is_ours PID: true when PID is alive and is the registry serving DIR's config (guards against pid reuse).
is_ours() {
  local pid=$1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF "$dir/config.yml"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# http_status URL: prints the HTTP status code of a GET, or 000 when nothing answers.
http_status() {
  python3 - "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=1) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PY
}

write_config() {
  local port=$1
  cat >"$dir/config.yml" <<YAML
# written by hack/registry.sh — a throwaway test registry, loopback only
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: $(python3 -c 'import secrets; print(secrets.token_hex(16))')
  headers:
    X-Content-Type-Options: [nosniff]
YAML
}

start() {
  [[ -x "$registry_bin" ]] || { echo "registry.sh: $registry_bin not found (run hack/install-deps.sh)" >&2; exit 1; }
  mkdir -p "$dir/storage"
  dir=$(cd "$dir" && pwd)
  if [[ -f "$dir/registry.pid" ]] && is_ours "$(cat "$dir/registry.pid")"; then
    echo "registry.sh: a registry is already running for $dir (pid $(cat "$dir/registry.pid"))" >&2
    exit 1
  fi
  local port pid addr deadline name
  local unset_env=()
  # Drop REGISTRY_* variables from the registry's environment: distribution lets them override the config
  # file, which could move the listener off loopback.
  while IFS= read -r name; do
    unset_env+=(-u "$name")
  done < <(compgen -e | grep '^REGISTRY_' || true)
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    addr="127.0.0.1:$port"
    write_config "$port"
    : >"$dir/registry.log"
    env "${unset_env[@]}" setsid "$registry_bin" serve "$dir/config.yml" </dev/null >>"$dir/registry.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/registry.pid"
    deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
      if ! kill -0 "$pid" 2>/dev/null; then
        break
      fi
      if [[ $(http_status "http://$addr/v2/") == 200 ]]; then
        echo "$addr" >"$dir/registry.addr"
        echo "$addr"
        return 0
      fi
      sleep 0.1
    done
    if ! kill -0 "$pid" 2>/dev/null && grep -q 'address already in use' "$dir/registry.log"; then
      continue # lost the race for the port to someone else: pick another
    fi
    break
  done
  local why="did not answer 200 on http://$addr/v2/ within 10s"
  kill -0 "$pid" 2>/dev/null || why="exited before answering on http://$addr/v2/"
  kill "$pid" 2>/dev/null || true
  rm -f "$dir/registry.pid" "$dir/registry.addr"
  echo "registry.sh: $registry_bin $why; last lines of $dir/registry.log:" >&2
  tail -n 20 "$dir/registry.log" >&2 || true
  exit 1
}

stop() {
  [[ -d "$dir" ]] || { echo "registry.sh: no such directory: $dir" >&2; exit 1; }
  dir=$(cd "$dir" && pwd)
  local pidfile="$dir/registry.pid" pid
  if [[ ! -f "$pidfile" ]]; then
    return 0 # nothing to stop: stopping twice is fine
  fi
  pid=$(cat "$pidfile")
  if is_ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do # 10s, then SIGKILL
      is_ours "$pid" || break
      sleep 0.1
    done
    if is_ours "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      while is_ours "$pid"; do sleep 0.05; done
    fi
  fi
  rm -f "$pidfile" "$dir/registry.addr"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
