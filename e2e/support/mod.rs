//! Helpers shared by the end-to-end tests: a daemon under test, prerequisites, the test registry.

pub mod bundle;
pub mod cri;
pub mod daemon;
pub mod http;
pub mod netns;
pub mod oci;
pub mod registry;
pub mod tls;

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

/// Runs `command` with stdout and stderr in files, not pipes, and no stdin. A container started by the
/// command inherits its stdio (runc's contract too), and a pipe would keep `output()` waiting for it.
pub fn output_via_files(command: &mut std::process::Command) -> std::process::Output {
    use std::io::{Read, Seek};
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let status = command
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .status()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let read = |mut file: std::fs::File| {
        let mut bytes = Vec::new();
        file.seek(std::io::SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut bytes).unwrap();
        bytes
    };
    std::process::Output { status, stdout: read(out), stderr: read(err) }
}
