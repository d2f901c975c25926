#!/usr/bin/env bash
# hack/link-order-check.sh [BINARY] — fails when the release build lays out few of the functions that
# hack/link-order/berth.txt orders.
#
# The linker skips the names it does not find, silently: after a toolchain or dependency update the order
# goes stale without any build failing, and the daemon's resident memory climbs back (idle 8.8 -> 13.0 MiB
# the one time it went unnoticed). Regenerate with hack/link-order.sh (run it twice).
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-${CARGO_TARGET_DIR:-target}/release/berth}
order=hack/link-order/berth.txt
# Below this share, most of the hot code is back at its default place.
minimum_percent=90
total=$(sort -u "$order" | wc -l)
found=$(nm --defined-only "$binary" | awk '{ print $3 }' | sort -u | comm -12 - <(sort -u "$order") | wc -l)
percent=$((found * 100 / total))
if ((percent < minimum_percent)); then
  printf 'link order is stale: %s of the %s functions in %s are in %s (%s%%, at least %s%% expected);\n' \
    "$found" "$total" "$order" "$binary" "$percent" "$minimum_percent" >&2
  printf 'rerun hack/link-order.sh twice and commit %s\n' "$order" >&2
  exit 1
fi
printf 'link order: %s of %s functions found in %s (%s%%)\n' "$found" "$total" "$binary" "$percent"
