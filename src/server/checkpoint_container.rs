//! CheckpointContainer: the running container's state, written through CRIU to the archive kubelet names
//! (`/var/lib/kubelet/checkpoints/checkpoint-<pod>_<namespace>-<container>-<time>.tar`); it keeps running.

use std::time::Duration;

use crate::containers::CheckpointRequest;
use crate::context::Context;
use crate::cri::v1::{CheckpointContainerRequest, CheckpointContainerResponse};
use crate::error::RpcError;
use crate::server::trace::record_id;

pub async fn handle(
    context: &Context,
    request: CheckpointContainerRequest,
) -> Result<CheckpointContainerResponse, RpcError> {
    record_id("container_id", &request.container_id);
    if request.location.is_empty() {
        return Err(RpcError::InvalidArgument { field: "location", reason: "empty: name the archive to write".into() });
    }
    let timeout = (request.timeout > 0).then(|| Duration::from_secs(request.timeout as u64));
    context
        .containers
        .checkpoint(CheckpointRequest {
            container_id: request.container_id,
            location: request.location.into(),
            timeout,
        })
        .await?;
    Ok(CheckpointContainerResponse {})
}
