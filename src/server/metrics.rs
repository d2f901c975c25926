//! ListMetricDescriptors and ListPodSandboxMetrics: cAdvisor-named metrics of every ready pod and its
//! containers (see [`crate::stats::metrics`]).

use crate::context::Context;
use crate::cri::v1::{
    ListMetricDescriptorsRequest, ListMetricDescriptorsResponse, ListPodSandboxMetricsRequest,
    ListPodSandboxMetricsResponse,
};
use crate::error::RpcError;
use crate::records::{ContainerRecordState, PodRecord, PodState};
use crate::server::pod_sandbox_stats::sample_pods;
use crate::stats::metrics::LayerFilesystem;

pub fn descriptors(_request: ListMetricDescriptorsRequest) -> Result<ListMetricDescriptorsResponse, RpcError> {
    Ok(ListMetricDescriptorsResponse { descriptors: crate::stats::metrics::descriptors() })
}

pub async fn pod_metrics(
    context: &Context,
    _request: ListPodSandboxMetricsRequest,
) -> Result<ListPodSandboxMetricsResponse, RpcError> {
    let pods = context.pods.clone();
    let containers = context.containers.clone();
    let collector = context.stats.clone();
    context
        .blocking("ListPodSandboxMetrics", move || {
            let ready: Vec<PodRecord> = pods.list()?.into_iter().filter(|p| p.state == PodState::Ready).collect();
            let mut samples = sample_pods(&collector, &ready, &containers.list()?);
            for container in samples.iter_mut().flat_map(|pod| pod.containers.iter_mut()) {
                if container.record.state == ContainerRecordState::Running {
                    collector.add_metrics_detail(container);
                }
            }
            let layers = LayerFilesystem {
                name: &collector.layer_filesystem,
                device: collector.layer_device(),
                resolve: &|major, minor| collector.block_device(major, minor),
            };
            Ok(ListPodSandboxMetricsResponse {
                pod_metrics: samples.iter().map(|s| crate::stats::metrics::pod_metrics(s, &layers)).collect(),
            })
        })
        .await
}
