//! PortForward: a one-shot URL on the streaming server for forwarding to ports of a ready pod sandbox.

use crate::context::Context;
use crate::cri::v1::{PortForwardRequest, PortForwardResponse};
use crate::error::RpcError;
use crate::pods::PodError;
use crate::records::PodState;
use crate::server::trace::record_id;

pub async fn handle(context: &Context, request: PortForwardRequest) -> Result<PortForwardResponse, RpcError> {
    record_id("pod_sandbox_id", &request.pod_sandbox_id);
    let pods = context.pods.clone();
    let id = request.pod_sandbox_id.clone();
    let pod = context
        .blocking("read the pod sandbox", move || Ok(pods.find(&id)?))
        .await?
        .ok_or_else(|| RpcError::Pod(PodError::NotFound(request.pod_sandbox_id.clone())))?;
    if pod.state != PodState::Ready {
        return Err(RpcError::Pod(PodError::NotReady(pod.id)));
    }
    let url = context
        .streaming
        .url_for(berth_streaming::Request::PortForward(berth_streaming::PortForwardRequest { pod_sandbox_id: pod.id }));
    Ok(PortForwardResponse { url })
}
