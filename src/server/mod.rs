//! The CRI gRPC services: `runtime.v1.RuntimeService` and `runtime.v1.ImageService`.
//!
//! One file per RPC (`version.rs` answers Version, `image_fs_info.rs` answers ImageFsInfo, ...). This file
//! only routes: each method hands its request to that file's `handle` and converts the result at the edge
//! with [`crate::error::into_status`].

mod checkpoint_container;
mod container_events;
mod container_stats;
mod container_status;
mod create_container;
mod exec;
mod exec_sync;
mod image_fs_info;
mod image_status;
mod list_images;
mod list_stream;
mod metrics;
mod pod_sandbox_stats;
mod pod_sandbox_status;
mod port_forward;
mod pull_image;
mod pull_progress;
mod remove_container;
mod remove_image;
mod remove_pod_sandbox;
mod reopen_container_log;
mod run_pod_sandbox;
mod runtime_config;
mod start_container;
mod status;
mod stop_container;
mod stop_pod_sandbox;
pub mod trace;
mod update_container_resources;
mod update_pod_sandbox_resources;
mod update_runtime_config;
mod version;

use std::sync::Arc;

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::cri::v1::image_service_server::{ImageService, ImageServiceServer};
use crate::cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use crate::cri::v1::*;
use crate::error::{RpcError, into_status};

/// Both CRI services over one shared [`Context`].
#[derive(Clone)]
pub struct Cri {
    context: Arc<Context>,
}

impl Cri {
    pub fn new(context: Arc<Context>) -> Cri {
        Cri { context }
    }

    pub fn runtime_service(&self) -> RuntimeServiceServer<Cri> {
        RuntimeServiceServer::new(self.clone())
    }

    pub fn image_service(&self) -> ImageServiceServer<Cri> {
        ImageServiceServer::new(self.clone())
    }

    /// berth's own `berth.v1.Pulls` (pull progress for the CLI), on the same socket.
    pub fn pulls_service(&self) -> crate::cri::berth::pulls_server::PullsServer<Cri> {
        crate::cri::berth::pulls_server::PullsServer::new(self.clone())
    }
}

fn answer<T>(result: Result<T, RpcError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(into_status)
}

/// A Stream* RPC's answer: its List* counterpart's items in messages of a bounded size ([`list_stream`]).
/// A failure of the list is the stream's status, before any message.
fn streamed<T, R>(list: Result<Vec<T>, RpcError>, wrap: fn(Vec<T>) -> R) -> Result<Response<BoxStream<R>>, Status>
where
    T: prost::Message,
    R: Send + 'static,
{
    answer(list.map(|items| list_stream::stream(items, wrap)))
}

#[tonic::async_trait]
impl RuntimeService for Cri {
    type StreamPodSandboxesStream = BoxStream<StreamPodSandboxesResponse>;
    type StreamContainersStream = BoxStream<StreamContainersResponse>;
    type StreamContainerStatsStream = BoxStream<StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = BoxStream<StreamPodSandboxStatsResponse>;
    type GetContainerEventsStream = BoxStream<ContainerEventResponse>;
    type StreamPodSandboxMetricsStream = BoxStream<StreamPodSandboxMetricsResponse>;

    async fn version(&self, request: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        answer(version::handle(request.into_inner()))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        answer(status::handle(&self.context, request.into_inner()).await)
    }

    async fn runtime_config(
        &self,
        request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        answer(runtime_config::handle(&self.context, request.into_inner()))
    }

    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        answer(update_runtime_config::handle(&self.context, request.into_inner()).await)
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        answer(run_pod_sandbox::handle(&self.context, request.into_inner()).await)
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        answer(stop_pod_sandbox::handle(&self.context, request.into_inner()).await)
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        answer(remove_pod_sandbox::handle(&self.context, request.into_inner()).await)
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        answer(pod_sandbox_status::status(&self.context, request.into_inner()).await)
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        answer(pod_sandbox_status::list(&self.context, request.into_inner()).await)
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        answer(create_container::handle(&self.context, request.into_inner()).await)
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        answer(start_container::handle(&self.context, request.into_inner()).await)
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        answer(stop_container::handle(&self.context, request.into_inner()).await)
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        answer(remove_container::handle(&self.context, request.into_inner()).await)
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        answer(container_status::list(&self.context, request.into_inner()).await)
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        answer(container_status::status(&self.context, request.into_inner()).await)
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        answer(update_container_resources::handle(&self.context, request.into_inner()).await)
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        answer(reopen_container_log::handle(&self.context, request.into_inner()).await)
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        answer(exec::exec(&self.context, request.into_inner()).await)
    }

    async fn attach(&self, request: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        answer(exec::attach(&self.context, request.into_inner()).await)
    }

    async fn port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        answer(port_forward::handle(&self.context, request.into_inner()).await)
    }

    async fn exec_sync(&self, request: Request<ExecSyncRequest>) -> Result<Response<ExecSyncResponse>, Status> {
        answer(exec_sync::handle(&self.context, request.into_inner()).await)
    }

    async fn get_container_events(
        &self,
        _request: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Ok(Response::new(container_events::stream(&self.context)))
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<UpdatePodSandboxResourcesResponse>, Status> {
        answer(update_pod_sandbox_resources::handle(&self.context, request.into_inner()).await)
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        answer(container_stats::stats(&self.context, request.into_inner()).await)
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        answer(container_stats::list(&self.context, request.into_inner()).await)
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        answer(pod_sandbox_stats::stats(&self.context, request.into_inner()).await)
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        answer(pod_sandbox_stats::list(&self.context, request.into_inner()).await)
    }

    async fn list_metric_descriptors(
        &self,
        request: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        answer(metrics::descriptors(request.into_inner()))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        request: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        answer(metrics::pod_metrics(&self.context, request.into_inner()).await)
    }

    async fn stream_pod_sandboxes(
        &self,
        request: Request<StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let list = ListPodSandboxRequest { filter: request.into_inner().filter };
        let listed = pod_sandbox_status::list(&self.context, list).await.map(|answer| answer.items);
        streamed(listed, |pod_sandboxes| StreamPodSandboxesResponse { pod_sandboxes })
    }

    async fn stream_containers(
        &self,
        request: Request<StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let list = ListContainersRequest { filter: request.into_inner().filter };
        let listed = container_status::list(&self.context, list).await.map(|answer| answer.containers);
        streamed(listed, |containers| StreamContainersResponse { containers })
    }

    async fn stream_container_stats(
        &self,
        request: Request<StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let list = ListContainerStatsRequest { filter: request.into_inner().filter };
        let listed = container_stats::list(&self.context, list).await.map(|answer| answer.stats);
        streamed(listed, |container_stats| StreamContainerStatsResponse { container_stats })
    }

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let list = ListPodSandboxStatsRequest { filter: request.into_inner().filter };
        let listed = pod_sandbox_stats::list(&self.context, list).await.map(|answer| answer.stats);
        streamed(listed, |pod_sandbox_stats| StreamPodSandboxStatsResponse { pod_sandbox_stats })
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let listed = metrics::pod_metrics(&self.context, ListPodSandboxMetricsRequest {}).await.map(|a| a.pod_metrics);
        streamed(listed, |pod_sandbox_metrics| StreamPodSandboxMetricsResponse { pod_sandbox_metrics })
    }

    async fn checkpoint_container(
        &self,
        request: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        answer(checkpoint_container::handle(&self.context, request.into_inner()).await)
    }
}

#[tonic::async_trait]
impl ImageService for Cri {
    type StreamImagesStream = BoxStream<StreamImagesResponse>;

    async fn image_fs_info(
        &self,
        request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        answer(image_fs_info::handle(&self.context, request.into_inner()).await)
    }

    async fn list_images(&self, request: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        answer(list_images::handle(&self.context, request.into_inner()).await)
    }

    async fn stream_images(
        &self,
        request: Request<StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let filter = request.into_inner().filter.and_then(|f| f.image).map(|s| s.image);
        streamed(list_images::list(&self.context, filter).await, |images| StreamImagesResponse { images })
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        answer(image_status::handle(&self.context, request.into_inner()).await)
    }

    async fn pull_image(&self, request: Request<PullImageRequest>) -> Result<Response<PullImageResponse>, Status> {
        let deadline = pull_image::grpc_deadline(request.metadata());
        answer(pull_image::handle(&self.context, request.into_inner(), deadline).await)
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        answer(remove_image::handle(&self.context, request.into_inner()).await)
    }
}

#[tonic::async_trait]
impl crate::cri::berth::pulls_server::Pulls for Cri {
    type WatchStream = BoxStream<crate::cri::berth::PullProgress>;

    async fn watch(
        &self,
        request: Request<crate::cri::berth::WatchPullRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        answer(pull_progress::handle(&self.context, request.into_inner()).await)
    }
}
