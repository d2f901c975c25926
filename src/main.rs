//! The `berth` binary: daemon, operator CLI, OCI runtime CLI and the container init helper.

fn main() -> std::process::ExitCode {
    // The container init helper must stay single-threaded and do nothing before its work: it is dispatched
    // before any argument parsing, logging or runtime setup.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("__init")) {
        berth_runtime::init::main();
    }
    berth::cli::main()
}
