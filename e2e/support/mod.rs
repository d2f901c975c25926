//! Helpers shared by the end-to-end tests: a daemon under test, prerequisites, the test registry.

pub mod bundle;
pub mod daemon;
pub mod http;
pub mod oci;
pub mod registry;

pub use daemon::{Daemon, DaemonDirs};

/// The built binary under test.
pub fn berth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

/// The repository root (for `hack/` scripts).
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails the test when a tool it needs is missing. Never skips: `hack/install-deps.sh` (run by `make test`)
/// installs every prerequisite, so a missing one is a broken machine, not a reason to pass.
pub fn require_tool(name: &str) -> std::path::PathBuf {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|p| p.is_file()))
        .unwrap_or_default();
    match found {
        Some(path) => path,
        None => panic!("missing prerequisite `{name}`: run `bash hack/install-deps.sh` (make test does)"),
    }
}
