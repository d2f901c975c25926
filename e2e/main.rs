//! End-to-end tests: the built `berth` binary, started on a private socket and root directory, driven over
//! its real gRPC socket (and, for images, a real docker-registry on 127.0.0.1).
//!
//! One test binary with a module per area keeps linking cheap; nextest still runs every test in its own
//! process. `make test` runs them after the unit tests; `cargo nextest run --test e2e` runs just these.

mod support;

mod cdi;
mod checkpoint;
mod cli;
mod cli_pods;
mod compat;
mod config;
mod containers;
mod exec_attach;
mod faults;
mod image_volumes;
mod images;
mod images_faults;
mod images_rootfs;
mod images_tls;
mod images_token;
mod lifecycle;
mod list_streams;
mod pods;
mod pods_network;
mod privileged;
mod registry;
mod runtime_containerd;
mod runtime_oci;
mod runtime_service;
mod stats;
mod streaming;
mod streaming_cli;
mod systemd;
mod userns;
