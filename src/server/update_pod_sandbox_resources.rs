//! UpdatePodSandboxResources: accepted and recorded; kubelet writes the pod's cgroup itself.

use crate::context::Context;
use crate::cri::v1::{UpdatePodSandboxResourcesRequest, UpdatePodSandboxResourcesResponse};
use crate::error::RpcError;
use crate::server::trace::record_id;

pub async fn handle(
    context: &Context,
    request: UpdatePodSandboxResourcesRequest,
) -> Result<UpdatePodSandboxResourcesResponse, RpcError> {
    record_id("pod_sandbox_id", &request.pod_sandbox_id);
    context.pods.update_resources(&request.pod_sandbox_id, request.overhead, request.resources).await?;
    Ok(UpdatePodSandboxResourcesResponse {})
}
