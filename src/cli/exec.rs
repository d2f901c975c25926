//! `berth exec [-i] [-t] CONTAINER COMMAND...`: runs a command in a running container and exits with its
//! exit code, its stdout on stdout and its stderr on stderr (crictl exits 1 for any failure; a script is
//! better served by the real streams and code).
//!
//! Without `-s` it goes through the streaming server like `crictl exec`: the Exec RPC returns a URL and
//! `stream.rs` runs the session (stdin with `-i`, a remote tty with `-t`). With `-s` it is one ExecSync call
//! and the output arrives when the command has ended.

use std::io::Write;

use super::client::{Client, rpc_failed};
use super::stream::{self, TransportArg, exit_code};
use crate::cri::v1::{ExecRequest, ExecSyncRequest};

/// `berth exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Run the command synchronously (ExecSync): its output comes when it has ended.
    #[arg(long, short = 's', conflicts_with_all = ["interactive", "tty"])]
    pub sync: bool,
    /// Seconds the command may run before the runtime kills it (0: no limit; with -s only).
    #[arg(long, default_value_t = 0, requires = "sync")]
    pub timeout: i64,
    /// Keep stdin open and send it to the command.
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Give the command a terminal (its stderr then comes on stdout).
    #[arg(long, short = 't')]
    pub tty: bool,
    /// The streaming protocol.
    #[arg(long, value_enum, default_value_t = TransportArg::Spdy)]
    pub transport: TransportArg,
    pub container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Runs the command; the exit code to leave with is the command's.
pub async fn run(mut client: Client, args: ExecArgs) -> Result<u8, String> {
    if !args.sync {
        let request = ExecRequest {
            container_id: args.container,
            cmd: args.command,
            tty: args.tty,
            stdin: args.interactive,
            stdout: true,
            // A tty has one output stream: the server refuses stderr with a tty.
            stderr: !args.tty,
        };
        let url = client.runtime.exec(request).await.map_err(|s| rpc_failed("Exec", s))?.into_inner().url;
        return stream::run_command(&url, args.transport, args.interactive, args.tty).await;
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
    fn streaming_exec_takes_i_and_t_and_a_transport() {
        let parsed = Harness::parse_from(["exec", "-it", "abc", "sh"]);
        assert!(parsed.exec.interactive && parsed.exec.tty && !parsed.exec.sync);
        assert_eq!(parsed.exec.transport, super::TransportArg::Spdy);
        let parsed = Harness::parse_from(["exec", "-i", "--transport", "websocket", "abc", "cat", "-t"]);
        assert!(parsed.exec.interactive && !parsed.exec.tty);
        assert_eq!(parsed.exec.transport, super::TransportArg::Websocket);
        assert_eq!(parsed.exec.command, ["cat", "-t"]);
        assert!(Harness::try_parse_from(["exec", "-s", "-t", "abc", "sh"]).is_err(), "-s has no terminal");
        assert!(Harness::try_parse_from(["exec", "--timeout", "3", "abc", "sh"]).is_err(), "--timeout needs -s");
    }
}
