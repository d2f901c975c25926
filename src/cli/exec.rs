//! `berth exec -s CONTAINER COMMAND...`: runs a command in a running container through ExecSync and exits
//! with its exit code, its stdout on stdout and its stderr on stderr (crictl prints both on stdout and exits
//! 1 for any failure; a script is better served by the real streams and code).
//!
//! Interactive exec (`-it`) goes through the streaming server and is not a CLI verb yet.

use std::io::Write;

use super::client::{Client, rpc_failed};
use crate::cri::v1::ExecSyncRequest;

/// `berth exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Run the command synchronously (ExecSync): the only mode berth's CLI has.
    #[arg(long, short = 's')]
    pub sync: bool,
    /// Seconds the command may run before the runtime kills it (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub timeout: i64,
    pub container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Runs the command; the exit code to leave with is the command's.
pub async fn run(mut client: Client, args: ExecArgs) -> Result<u8, String> {
    if !args.sync {
        return Err("only `berth exec -s` (ExecSync) is supported; interactive exec is not".to_owned());
    }
    let request = ExecSyncRequest { container_id: args.container, cmd: args.command, timeout: args.timeout };
    let answer = client.runtime.exec_sync(request).await.map_err(|s| rpc_failed("ExecSync", s))?.into_inner();
    let written = std::io::stdout()
        .lock()
        .write_all(&answer.stdout)
        .and_then(|()| std::io::stdout().flush())
        .and_then(|()| std::io::stderr().lock().write_all(&answer.stderr));
    if let Err(err) = written {
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(format!("cannot write the command's output: {err}"));
        }
    }
    Ok(exit_code(answer.exit_code))
}

/// A process exit status is one byte; a code outside it (which no Linux process has) is still a failure.
fn exit_code(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(flatten)]
        exec: super::ExecArgs,
    }

    #[test]
    fn the_command_takes_its_own_flags() {
        let parsed = Harness::parse_from(["exec", "-s", "--timeout", "5", "abc", "sh", "-c", "exit 3"]);
        assert!(parsed.exec.sync);
        assert_eq!(parsed.exec.timeout, 5);
        assert_eq!(parsed.exec.container, "abc");
        assert_eq!(parsed.exec.command, ["sh", "-c", "exit 3"]);
        let parsed = Harness::parse_from(["exec", "-s", "abc", "ls", "--timeout", "9"]);
        assert_eq!(parsed.exec.timeout, 0);
        assert_eq!(parsed.exec.command, ["ls", "--timeout", "9"]);
    }

    #[test]
    fn exit_codes_pass_through() {
        assert_eq!(super::exit_code(0), 0);
        assert_eq!(super::exit_code(3), 3);
        assert_eq!(super::exit_code(137), 137);
        assert_eq!(super::exit_code(-1), 1);
        assert_eq!(super::exit_code(256), 1);
    }
}
