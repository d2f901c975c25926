//! ReopenContainerLog: the shim reopens the log file kubelet just renamed (log rotation).

use crate::context::Context;
use crate::cri::v1::{ReopenContainerLogRequest, ReopenContainerLogResponse};
use crate::error::RpcError;
use crate::server::trace::record_id;

pub async fn handle(
    context: &Context,
    request: ReopenContainerLogRequest,
) -> Result<ReopenContainerLogResponse, RpcError> {
    record_id("container_id", &request.container_id);
    context.containers.reopen_log(&request.container_id).await?;
    Ok(ReopenContainerLogResponse {})
}
