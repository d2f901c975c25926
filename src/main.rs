//! The `berth` binary: daemon, operator CLI and (as later roles land) shim and container init.

fn main() -> std::process::ExitCode {
    berth::cli::main()
}
