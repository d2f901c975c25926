//! StopContainer: the stop signal, then SIGKILL after the timeout (0 = at once). Stopping a stopped or
//! missing container succeeds (CRI).

use std::time::Duration;

use crate::context::Context;
use crate::cri::v1::{StopContainerRequest, StopContainerResponse};
use crate::error::RpcError;
use crate::server::trace::record_id;

pub async fn handle(context: &Context, request: StopContainerRequest) -> Result<StopContainerResponse, RpcError> {
    record_id("container_id", &request.container_id);
    let timeout = Duration::from_secs(request.timeout.max(0) as u64);
    context.containers.stop(&request.container_id, timeout).await?;
    Ok(StopContainerResponse {})
}
