//! CreateContainer: a container in a ready pod, from its config and its image, waiting to be started.

use crate::containers::CreateRequest;
use crate::context::Context;
use crate::cri::v1::{CreateContainerRequest, CreateContainerResponse};
use crate::error::RpcError;
use crate::server::trace::record_id;

pub async fn handle(context: &Context, request: CreateContainerRequest) -> Result<CreateContainerResponse, RpcError> {
    record_id("pod_sandbox_id", &request.pod_sandbox_id);
    let config = request.config.ok_or(RpcError::InvalidArgument { field: "config", reason: "missing".into() })?;
    let pod = context
        .pods
        .find(&request.pod_sandbox_id)?
        .ok_or_else(|| crate::containers::ContainerError::PodNotFound(request.pod_sandbox_id.clone()))?;
    let id = context
        .containers
        .create(pod.clone(), CreateRequest { pod_id: pod.id, config, pod_config: request.sandbox_config })
        .await?;
    record_id("container_id", &id);
    Ok(CreateContainerResponse { container_id: id })
}
