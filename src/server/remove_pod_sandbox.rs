//! RemovePodSandbox: remove everything the pod had. Idempotent; a missing sandbox is not an error (CRI).

use crate::context::Context;
use crate::cri::v1::{RemovePodSandboxRequest, RemovePodSandboxResponse};
use crate::error::RpcError;
use crate::server::trace::record_id;

pub async fn handle(context: &Context, request: RemovePodSandboxRequest) -> Result<RemovePodSandboxResponse, RpcError> {
    record_id("pod_sandbox_id", &request.pod_sandbox_id);
    if let Some(pod) = context.pods.find(&request.pod_sandbox_id)? {
        context.containers.remove_pod(&pod.id).await?;
        crate::failpoints::crash_point!("remove-pod-sandbox-after-containers");
    }
    context.pods.remove(request.pod_sandbox_id).await?;
    Ok(RemovePodSandboxResponse {})
}
