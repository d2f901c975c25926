//! StopPodSandbox: kill the pod's containers, release its network. Idempotent; a missing sandbox is not an error (CRI).

use crate::context::Context;
use crate::cri::v1::{StopPodSandboxRequest, StopPodSandboxResponse};
use crate::error::RpcError;
use crate::server::trace::record_id;

pub async fn handle(context: &Context, request: StopPodSandboxRequest) -> Result<StopPodSandboxResponse, RpcError> {
    record_id("pod_sandbox_id", &request.pod_sandbox_id);
    if let Some(pod) = context.pods.find(&request.pod_sandbox_id)? {
        context.containers.stop_pod(&pod.id).await?;
        crate::failpoints::crash_point!("stop-pod-sandbox-after-containers");
    }
    context.pods.stop(request.pod_sandbox_id).await?;
    Ok(StopPodSandboxResponse {})
}
