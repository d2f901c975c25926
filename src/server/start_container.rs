//! StartContainer: releases a created container to run its process.

use crate::context::Context;
use crate::cri::v1::{StartContainerRequest, StartContainerResponse};
use crate::error::RpcError;
use crate::server::trace::record_id;

pub async fn handle(context: &Context, request: StartContainerRequest) -> Result<StartContainerResponse, RpcError> {
    record_id("container_id", &request.container_id);
    context.containers.start(&request.container_id).await?;
    Ok(StartContainerResponse {})
}
