//! The CRI v1 API, generated from `proto/api.proto` by `build.rs`.
//!
//! Only the `berth` package uses these types; the crates under `crates/` never see them.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

/// berth's own API beside CRI (proto/berth.proto): pull progress for the CLI.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod berth {
    tonic::include_proto!("berth.v1");
}

/// The per-pod shim's API (proto/shim.proto), spoken between the daemon and `berth __shim`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod shim {
    tonic::include_proto!("berth.shim.v1");
}
