//! Exec and Attach: check the request, then hand out a one-shot URL on the streaming server where the
//! session runs (kubelet redirects or proxies the client there).

use crate::context::Context;
use crate::cri::v1::{AttachRequest, AttachResponse, ExecRequest, ExecResponse};
use crate::error::RpcError;
use crate::server::trace::record_id;

/// The checks both calls share: a tty merges stderr into stdout, so asking for both is a client error, and a
/// session with no stream at all could never do anything.
fn check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), RpcError> {
    if tty && stderr {
        return Err(RpcError::InvalidArgument {
            field: "stderr",
            reason: "a tty session has no separate stderr (its output is all on stdout)".into(),
        });
    }
    if !(stdin || stdout || stderr) {
        return Err(RpcError::InvalidArgument {
            field: "stdin/stdout/stderr",
            reason: "at least one of them must be requested".into(),
        });
    }
    Ok(())
}

pub async fn exec(context: &Context, request: ExecRequest) -> Result<ExecResponse, RpcError> {
    record_id("container_id", &request.container_id);
    check_streams(request.tty, request.stdin, request.stdout, request.stderr)?;
    if request.cmd.is_empty() {
        return Err(RpcError::InvalidArgument { field: "cmd", reason: "the command is empty".into() });
    }
    let record = context.containers.running(&request.container_id, "exec in it")?;
    let url = context.streaming.url_for(berth_streaming::Request::Exec(berth_streaming::ExecRequest {
        container_id: record.id,
        cmd: request.cmd,
        tty: request.tty,
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
    }));
    Ok(ExecResponse { url })
}

pub async fn attach(context: &Context, request: AttachRequest) -> Result<AttachResponse, RpcError> {
    record_id("container_id", &request.container_id);
    check_streams(request.tty, request.stdin, request.stdout, request.stderr)?;
    let record = context.containers.running(&request.container_id, "attach to it")?;
    let url = context.streaming.url_for(berth_streaming::Request::Attach(berth_streaming::AttachRequest {
        container_id: record.id,
        tty: request.tty,
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
    }));
    Ok(AttachResponse { url })
}

#[cfg(test)]
mod tests {
    use super::check_streams;

    #[test]
    fn a_tty_session_cannot_ask_for_stderr() {
        assert!(check_streams(true, true, true, true).is_err());
        assert!(check_streams(true, true, true, false).is_ok());
        assert!(check_streams(false, false, true, true).is_ok());
    }

    #[test]
    fn a_session_needs_at_least_one_stream() {
        assert!(check_streams(false, false, false, false).is_err());
        assert!(check_streams(false, true, false, false).is_ok());
    }
}
