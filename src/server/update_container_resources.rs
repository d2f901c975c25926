//! UpdateContainerResources: new cgroup limits, applied in place before the answer.

use crate::context::Context;
use crate::cri::v1::{UpdateContainerResourcesRequest, UpdateContainerResourcesResponse};
use crate::error::RpcError;
use crate::server::trace::record_id;

pub async fn handle(
    context: &Context,
    request: UpdateContainerResourcesRequest,
) -> Result<UpdateContainerResourcesResponse, RpcError> {
    record_id("container_id", &request.container_id);
    let resources = request.linux.unwrap_or_default();
    context.containers.update_resources(&request.container_id, resources).await?;
    Ok(UpdateContainerResourcesResponse {})
}
