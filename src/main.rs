//! The `berth` binary: daemon, operator CLI, OCI runtime CLI, and the container init and namespace-pinning
//! helpers.

fn main() -> std::process::ExitCode {
    // The helpers (container init, namespace pinning) must stay single-threaded and do nothing before their
    // work: they are dispatched before any argument parsing, logging or runtime setup.
    match std::env::args_os().nth(1).as_deref().and_then(|a| a.to_str()) {
        Some("__init") => berth_runtime::init::main(),
        Some("__pin") => berth_runtime::pin::main(),
        _ => {}
    }
    berth::cli::main()
}
