//! ContainerStatus and ListContainers, from the records (kept current by each shim's exit events).

use std::collections::HashMap;

use crate::containers::ContainerError;
use crate::context::Context;
use crate::cri::v1::{ContainerStatusRequest, ContainerStatusResponse, ListContainersRequest, ListContainersResponse};
use crate::error::RpcError;
use crate::records::ContainerRecord;
use crate::server::trace::record_id;

pub async fn status(context: &Context, request: ContainerStatusRequest) -> Result<ContainerStatusResponse, RpcError> {
    record_id("container_id", &request.container_id);
    let record = context
        .containers
        .find(&request.container_id)?
        .ok_or_else(|| ContainerError::NotFound(request.container_id.clone()))?;
    let record = context.containers.refresh(record).await;
    let mut info = HashMap::new();
    if request.verbose {
        info.insert("info".to_owned(), context.containers.info_of(&record));
    }
    Ok(ContainerStatusResponse { status: Some(context.containers.status_of(&record)), info })
}

pub async fn list(context: &Context, request: ListContainersRequest) -> Result<ListContainersResponse, RpcError> {
    let filter = request.filter.unwrap_or_default();
    let matches = |record: &ContainerRecord| {
        (filter.id.is_empty() || record.id.starts_with(&filter.id))
            && (filter.pod_sandbox_id.is_empty() || record.pod_id.starts_with(&filter.pod_sandbox_id))
            && filter.state.as_ref().is_none_or(|s| record.state.cri() as i32 == s.state)
            && filter.label_selector.iter().all(|(k, v)| record.labels.get(k) == Some(v))
    };
    let containers =
        context.containers.list()?.iter().filter(|r| matches(r)).map(|r| context.containers.summary_of(r)).collect();
    Ok(ListContainersResponse { containers })
}
