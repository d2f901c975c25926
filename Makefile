# berth — the two commands the README's quick start gives are `make run` and `make test`.

CARGO ?= cargo
# `make run CONFIG=path` uses that file; by default berth reads /etc/berth/config.toml if it exists.
CONFIG ?=

.PHONY: all deps build release run install image image-check link-order-check chart-check test lint fmt-check clippy unit e2e fuzz fuzz-check conformance bench clean

all: build

# Debian packages, then a CRIU that works on current kernels (checkpoints; built once, from Debian's source).
deps:
	@bash hack/install-deps.sh
	@bash hack/criu.sh

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Build and start the daemon with the defaults (socket /run/berth/berth.sock); Ctrl-C stops it cleanly.
run: deps release
	./target/release/berth serve $(if $(CONFIG),--config $(CONFIG))

# Installs the release build, its systemd unit and a configuration file on this node (hack/install.sh says
# what goes where; DESTDIR, PREFIX, UNIT_DIR and CONFIG_DIR move it). BINARY=path installs another build.
BINARY ?=
install: $(if $(BINARY),,release)
	bash hack/install.sh $(or $(BINARY),target/release/berth)

# berth's OCI image without Docker, reproducibly (hack/image.py): target/image/berth-oci (an OCI layout tagged
# with the workspace version) and target/image/berth-oci.tar; prints the manifest digest last. Builds the release
# binary first unless BINARY is given (`make image BINARY=path` packs that file as it is).
image: $(if $(BINARY),,release)
	python3 hack/image.py --binary $(or $(BINARY),target/release/berth)

# The image twice from the release build (same digest, same archive), pushed to a private registry and pulled
# by berth itself (hack/image-check.sh).
image-check: release
	bash hack/image-check.sh

# Fails when the release build no longer finds most of the recorded function order (hack/link-order.sh).
link-order-check: release
	bash hack/link-order-check.sh

# Lints and renders charts/berth with the real helm (hack/helm.sh installs it) and checks the DaemonSet.
chart-check:
	bash hack/chart-check.sh

# Style, lints (the chart's too), unit tests, then end-to-end tests against the real binary and registry.
test: deps lint chart-check
	bash hack/test.sh

lint: fmt-check clippy

fmt-check:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p berth --lib --features failpoints -- -D warnings

unit:
	$(CARGO) nextest run --workspace --lib --bins

e2e:
	bash hack/test.sh --test e2e

# The fuzz targets (fuzz/README.md), FUZZ_SECONDS each (600 by default); needs root and the nightly toolchain.
FUZZ_SECONDS ?= 600
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash hack/fuzz.sh

# What CI runs: the fuzz crate's lints, then every target for 15 s on its seeds (a crash fails the run).
fuzz-check:
	$(CARGO) clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings
	bash hack/fuzz.sh -t 15

# The real clients judge the release build: critest's full suite over SPDY and over WebSocket, the kubelet
# suite (e2e/kubelet), then Kubernetes' node e2e suite (about 25 minutes; `hack/conformance.sh critest
# kubelet` runs parts by name). KIT is the conformance kit's directory (read only).
KIT ?= $(abspath ../shared/conformance)
conformance: deps release
	BERTH_KIT=$(KIT) bash hack/conformance.sh

bench: release
	bash hack/bench/idle-rss.sh
	bash hack/bench/pull.sh
	python3 hack/bench/runtime-run.py
	bash hack/bench/cni-add.sh
	bash hack/bench/pods.sh
	bash hack/bench/stats.sh

clean:
	$(CARGO) clean
