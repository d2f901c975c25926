//! berth's own version, as Version and `berth version` report it.

/// The runtime name reported to kubelet.
pub const RUNTIME_NAME: &str = "berth";

/// The CRI API version berth serves.
pub const RUNTIME_API_VERSION: &str = "v1";

/// The kubelet runtime API version field of VersionResponse; every CRI v1 runtime reports 0.1.0.
pub const KUBELET_API_VERSION: &str = "0.1.0";

/// The git commit this binary was built from (`unknown` outside a git checkout).
pub const GIT_COMMIT: &str = env!("BERTH_GIT_COMMIT");

/// `0.1.0+1a2b3c4d5e6f`: the crate version with the commit as semver build metadata.
pub const RUNTIME_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+", env!("BERTH_GIT_COMMIT"));
