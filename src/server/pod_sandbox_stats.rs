//! PodSandboxStats and ListPodSandboxStats: the pod's cgroup (or the sum of its containers'), its network
//! interfaces read inside its namespace, and each of its containers.

use crate::context::Context;
use crate::cri::v1::{
    ListPodSandboxStatsRequest, ListPodSandboxStatsResponse, PodSandboxStatsRequest, PodSandboxStatsResponse,
};
use crate::error::RpcError;
use crate::pods::PodError;
use crate::records::{ContainerRecord, ContainerRecordState, PodRecord, PodState};
use crate::server::trace::record_id;
use crate::stats::PodSample;

/// Samples `pods`, each with its containers (those not being created).
pub fn sample_pods(
    context_stats: &crate::stats::StatsCollector,
    pods: &[PodRecord],
    containers: &[ContainerRecord],
) -> Vec<PodSample> {
    pods.iter()
        .map(|pod| {
            let own: Vec<ContainerRecord> = containers
                .iter()
                .filter(|c| c.pod_id == pod.id && c.state != ContainerRecordState::Creating)
                .cloned()
                .collect();
            context_stats.pod(pod, &own)
        })
        .collect()
}

pub async fn stats(context: &Context, request: PodSandboxStatsRequest) -> Result<PodSandboxStatsResponse, RpcError> {
    record_id("pod_sandbox_id", &request.pod_sandbox_id);
    let pods = context.pods.clone();
    let containers = context.containers.clone();
    let collector = context.stats.clone();
    context
        .blocking("PodSandboxStats", move || {
            let pod = pods
                .find(&request.pod_sandbox_id)?
                .ok_or_else(|| PodError::NotFound(request.pod_sandbox_id.clone()))?;
            let sample = sample_pods(&collector, &[pod], &containers.list()?).remove(0);
            Ok(PodSandboxStatsResponse { stats: Some(sample.to_cri(&collector.layer_filesystem)) })
        })
        .await
}

pub async fn list(
    context: &Context,
    request: ListPodSandboxStatsRequest,
) -> Result<ListPodSandboxStatsResponse, RpcError> {
    let filter = request.filter.unwrap_or_default();
    let pods = context.pods.clone();
    let containers = context.containers.clone();
    let collector = context.stats.clone();
    context
        .blocking("ListPodSandboxStats", move || {
            // Ready pods only, as containerd answers: a stopped pod has nothing running and no network.
            let selected: Vec<PodRecord> = pods
                .list()?
                .into_iter()
                .filter(|pod| {
                    pod.state == PodState::Ready
                        && (filter.id.is_empty() || pod.id.starts_with(&filter.id))
                        && filter.label_selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
                })
                .collect();
            let samples = sample_pods(&collector, &selected, &containers.list()?);
            Ok(ListPodSandboxStatsResponse {
                stats: samples.iter().map(|s| s.to_cri(&collector.layer_filesystem)).collect(),
            })
        })
        .await
}
