//! The `berth` binary: daemon, operator CLI, OCI runtime CLI, and the per-pod shim, and the container
//! init, namespace-pinning and PID-namespace helpers.

fn main() -> std::process::ExitCode {
    // The helpers (container init, namespace pinning, shim, PID-namespace holder, the restore helpers) must stay single-threaded and do nothing before their
    // work: they are dispatched before any argument parsing, logging or runtime setup.
    match std::env::args_os().nth(1).as_deref().and_then(|a| a.to_str()) {
        Some("__init") => berth_runtime::init::main(),
        Some("__pin") => berth_runtime::pin::main(),
        Some("__shim") => return berth::shim::main(),
        Some(berth::checkpoint::restore::GATE_COMMAND) => return berth::checkpoint::restore::gate_main(),
        Some(berth::checkpoint::restore::HOSTNAME_COMMAND) => return berth::checkpoint::restore::hostname_main(),
        _ => {}
    }
    berth::cli::main()
}
