#!/usr/bin/env bash
# hack/test.sh — run berth's tests (unit and end-to-end) with one shared test registry.
#
# Starts Debian's docker-registry on 127.0.0.1 (free port, storage in a temp dir), pushes the test images
# built from busybox-static (hack/test-images.py), points the e2e tests at them with BERTH_TEST_IMAGES, runs
# `cargo nextest run` (extra arguments are passed on, e.g. `--test e2e`), and stops the registry on any exit.
# The daemon under test is built with the `failpoints` feature: the crash points e2e/faults.rs arms
# (src/failpoints.rs); without BERTH_CRASH_AT or FAILPOINTS they do nothing.
# The tests themselves fail, never skip, when a prerequisite is missing; `make test` installs them first.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-test.XXXXXX")
cleanup() {
  bash hack/registry.sh stop "$work/registry" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

address=$(bash hack/registry.sh start "$work/registry")
python3 hack/test-images.py --registry "$address" --out "$work/images.json" >/dev/null
echo "test.sh: test registry at $address with images $(python3 -c 'import json,sys; print(" ".join(sorted(json.load(open(sys.argv[1])))))' "$work/images.json")"

export BERTH_TEST_IMAGES="$work/images.json"
profile=default
if [[ "${CI:-}" == "true" ]]; then profile=ci; fi
cargo nextest run --workspace --features berth/failpoints --profile "$profile" "$@"
