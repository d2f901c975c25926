//! ExecSync: runs a command in a running container and returns its output and exit code.

use crate::context::Context;
use crate::cri::v1::{ExecSyncRequest, ExecSyncResponse};
use crate::error::RpcError;
use crate::server::trace::record_id;

pub async fn handle(context: &Context, request: ExecSyncRequest) -> Result<ExecSyncResponse, RpcError> {
    record_id("container_id", &request.container_id);
    let answer = context.containers.exec_sync(&request.container_id, request.cmd, request.timeout).await?;
    Ok(ExecSyncResponse { stdout: answer.stdout, stderr: answer.stderr, exit_code: answer.exit_code })
}
