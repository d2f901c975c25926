#!/usr/bin/env bash
# hack/fuzz.sh — run berth's fuzz targets (fuzz/fuzz_targets, cargo-fuzz + libFuzzer) for a bounded time.
#
# Usage: hack/fuzz.sh [-t SECONDS] [TARGET...]     (default: every target, FUZZ_SECONDS or 60 s each,
#                                                   FUZZ_JOBS (1) at a time)
#
# What: installs cargo-fuzz (pinned, from crates.io) if it is missing, builds every target once on the nightly
#       toolchain with AddressSanitizer and coverage, writes the seed corpora (hack/fuzz-seeds.py) and runs
#       the targets, FUZZ_JOBS at a time, each on its seeds plus the corpus earlier runs grew in
#       target/fuzz/corpus/<target>. Prints one line per target (runs, execs/s, coverage, corpus size) and
#       writes them to target/fuzz/report.txt. A crash or a timeout fails the run: the input is kept in
#       target/fuzz/artifacts/<target>/ and `cargo +nightly fuzz run <target> <file>` (in fuzz/) replays it.
# Needs root: the layer and record targets unpack and write on a private tmpfs in their own mount namespace.
# The targets run on the one core each; `make fuzz` runs this with FUZZ_SECONDS=600 (the soak each target
# gets before a change to a parser lands); CI runs it with a short time on every change.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds=${FUZZ_SECONDS:-60}
if [[ ${1:-} == -t ]]; then
  seconds=$2
  shift 2
fi

fail() {
  echo "fuzz: $*" >&2
  exit 1
}

rustup toolchain list | grep -q '^nightly' || fail "the nightly toolchain is not installed (cargo-fuzz needs -Zsanitizer)"
if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --quiet --locked --force cargo-fuzz --version "=$CARGO_FUZZ_VERSION"
fi
[[ $(id -u) == 0 ]] || fail "run as root: the layer targets mount a private tmpfs"

mapfile -t all < <(cd fuzz && cargo fuzz list)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all[@]}")
for target in "${targets[@]}"; do
  printf '%s\n' "${all[@]}" | grep -qx "$target" || fail "no fuzz target $target (have: ${all[*]})"
done

work=target/fuzz
rm -rf "$work/seeds" "$work/logs"
mkdir -p "$work/seeds" "$work/logs" "$work/corpus" "$work/artifacts"
python3 hack/fuzz-seeds.py "$work/seeds"
(cd fuzz && cargo +nightly fuzz build --release 2>&1 | grep -v '^\s*Compiling' >&2)

# Targets whose state outlives an input (streaming_session keeps a server and its two worker threads across
# inputs): libFuzzer turns its per-input leak check off for them by itself, and LeakSanitizer's check at exit
# would judge whatever the server holds at that instant. Their own property (no session outlives its
# connection) is the leak check that means something.
declare -A asan_options=([streaming_session]=detect_leaks=0)

# run_target TARGET: one target's run; its report line goes to $work/logs/TARGET.line.
run_target() {
  local target=$1 log="$work/logs/$1.log" status=0 runs speed cov corpus line
  mkdir -p "$work/corpus/$target" "$work/artifacts/$target" "$work/seeds/$target"
  # -timeout: one input may take 30 s (a session the server must end, a layer on the 64 MiB tmpfs).
  (cd fuzz && ASAN_OPTIONS=${asan_options[$target]:-} \
    cargo +nightly fuzz run --release "$target" "../$work/corpus/$target" "../$work/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="../$work/artifacts/$target/") > "$log" 2>&1 || status=$?
  runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
  speed=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  corpus=$(find "$work/corpus/$target" -type f | wc -l)
  line=$(printf '%-18s %6ss  runs %-10s execs/s %-7s %-22s corpus %s' "$target" "$seconds" "${runs:-?}" \
    "${speed:-?}" "${cov:-cov: ?}" "$corpus")
  if [[ $status != 0 ]]; then
    line="$line  FAILED (exit $status)"
    {
      # The sanitizer's or the panic's report, else the end of the log.
      echo "---- $target: $log"
      grep -v '^#[0-9]' "$log" | grep -m1 -A60 -E '^==[0-9]+==|ERROR: libFuzzer|panicked at|LeakSanitizer' ||
        grep -v '^#[0-9]' "$log" | tail -40
      ls "$work/artifacts/$target"
    } >&2
  fi
  echo "$line" > "$work/logs/$target.line"
  echo "$line"
  return "$status"
}

# FUZZ_JOBS targets at a time (default 1: each target has a core to itself, and its execs/s mean something).
jobs=${FUZZ_JOBS:-1}
running=0
for target in "${targets[@]}"; do
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
  run_target "$target" &
  running=$((running + 1))
done
wait

report="$work/report.txt"
failed=()
for target in "${targets[@]}"; do
  cat "$work/logs/$target.line"
  if grep -q FAILED "$work/logs/$target.line"; then failed+=("$target"); fi
done > "$report"
if [[ ${#failed[@]} -gt 0 ]]; then
  fail "${failed[*]} failed; inputs in $work/artifacts/"
fi
echo "fuzz: ${#targets[@]} targets, ${seconds} s each, ${jobs} at a time, no crash (report: $report)"
