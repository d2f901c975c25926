//! ContainerStats and ListContainerStats: each container's cgroup figures and writable layer, sampled by
//! [`crate::stats::StatsCollector`].

use std::collections::HashSet;

use crate::containers::ContainerError;
use crate::context::Context;
use crate::cri::v1::{
    ContainerStatsRequest, ContainerStatsResponse, ListContainerStatsRequest, ListContainerStatsResponse,
};
use crate::error::RpcError;
use crate::records::{ContainerRecord, ContainerRecordState};
use crate::server::trace::record_id;

pub async fn stats(context: &Context, request: ContainerStatsRequest) -> Result<ContainerStatsResponse, RpcError> {
    record_id("container_id", &request.container_id);
    let containers = context.containers.clone();
    let collector = context.stats.clone();
    context
        .blocking("ContainerStats", move || {
            let record = containers
                .find(&request.container_id)?
                .ok_or_else(|| ContainerError::NotFound(request.container_id.clone()))?;
            let sample = collector.container(&record);
            Ok(ContainerStatsResponse { stats: Some(sample.to_cri(&collector.layer_filesystem)) })
        })
        .await
}

pub async fn list(
    context: &Context,
    request: ListContainerStatsRequest,
) -> Result<ListContainerStatsResponse, RpcError> {
    let filter = request.filter.unwrap_or_default();
    let containers = context.containers.clone();
    let pods = context.pods.clone();
    let collector = context.stats.clone();
    context
        .blocking("ListContainerStats", move || {
            let records = containers.list()?;
            let matches = |record: &ContainerRecord| {
                record.state != ContainerRecordState::Creating
                    && (filter.id.is_empty() || record.id.starts_with(&filter.id))
                    && (filter.pod_sandbox_id.is_empty() || record.pod_id.starts_with(&filter.pod_sandbox_id))
                    && filter.label_selector.iter().all(|(k, v)| record.labels.get(k) == Some(v))
            };
            let stats = records
                .iter()
                .filter(|r| matches(r))
                .map(|r| collector.container(r).to_cri(&collector.layer_filesystem))
                .collect();
            if filter.id.is_empty() && filter.pod_sandbox_id.is_empty() && filter.label_selector.is_empty() {
                // The whole set is known: forget what is kept about containers and pods that are gone.
                let live: HashSet<String> = records.into_iter().map(|r| r.id).collect();
                let pods: HashSet<String> = pods.list()?.into_iter().map(|p| p.id).collect();
                collector.forget_others(&live, &pods);
            }
            Ok(ListContainerStatsResponse { stats })
        })
        .await
}
