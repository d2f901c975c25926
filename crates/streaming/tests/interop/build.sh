#!/bin/sh
# Builds the Go interop client inside a cri-tools checkout (its vendor/ has client-go), offline.
# Usage: build.sh CRI_TOOLS_DIR OUTPUT [GO]; then run the tests with BERTH_STREAMING_INTEROP_CLIENT=OUTPUT.
set -eu
src=$1 out=$2 go=${3:-go}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$src/cmd/berth-streaming-interop"
cp "$here/main.go" "$src/cmd/berth-streaming-interop/main.go"
trap 'rm -rf "$src/cmd/berth-streaming-interop"' EXIT
cd "$src" && GOFLAGS=-mod=vendor GOPROXY=off "$go" build -o "$out" ./cmd/berth-streaming-interop
