//! RemoveContainer: kills it if it runs, then removes its runtime state, rootfs, bundle and record.
//! Removing a missing container succeeds (CRI).

use crate::context::Context;
use crate::cri::v1::{RemoveContainerRequest, RemoveContainerResponse};
use crate::error::RpcError;
use crate::server::trace::record_id;

pub async fn handle(context: &Context, request: RemoveContainerRequest) -> Result<RemoveContainerResponse, RpcError> {
    record_id("container_id", &request.container_id);
    context.containers.remove(&request.container_id).await?;
    Ok(RemoveContainerResponse {})
}
