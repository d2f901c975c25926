//! The CRI gRPC services: `runtime.v1.RuntimeService` and `runtime.v1.ImageService`.
//!
//! One file per RPC (`version.rs` answers Version, `image_fs_info.rs` answers ImageFsInfo, ...). This file
//! only routes: each method hands its request to that file's `handle` and converts the result at the edge
//! with [`crate::error::into_status`]. RPCs whose feature has not landed answer `Unimplemented` naming the
//! RPC, so kubelet and critest see an honest answer rather than a wrong one.

mod image_fs_info;
mod image_status;
mod list_images;
mod pod_sandbox_status;
mod pull_image;
mod pull_progress;
mod remove_image;
mod remove_pod_sandbox;
mod run_pod_sandbox;
mod runtime_config;
mod status;
mod stop_pod_sandbox;
pub mod trace;
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

/// Methods of RPCs not built yet. `#[tonic::async_trait]` does not look inside macro invocations, so these
/// are written in the form that attribute produces: a boxed, `Send` future.
macro_rules! not_built_yet {
    ($($method:ident($request:ty) -> $response:ty = $rpc:literal;)*) => {$(
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            _request: Request<$request>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<$response>, Status>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Err(into_status(RpcError::Unimplemented { rpc: $rpc })) })
        }
    )*};
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

    not_built_yet! {
        stream_pod_sandboxes(StreamPodSandboxesRequest) -> Self::StreamPodSandboxesStream = "StreamPodSandboxes";
        create_container(CreateContainerRequest) -> CreateContainerResponse = "CreateContainer";
        start_container(StartContainerRequest) -> StartContainerResponse = "StartContainer";
        stop_container(StopContainerRequest) -> StopContainerResponse = "StopContainer";
        remove_container(RemoveContainerRequest) -> RemoveContainerResponse = "RemoveContainer";
        list_containers(ListContainersRequest) -> ListContainersResponse = "ListContainers";
        stream_containers(StreamContainersRequest) -> Self::StreamContainersStream = "StreamContainers";
        container_status(ContainerStatusRequest) -> ContainerStatusResponse = "ContainerStatus";
        update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse = "UpdateContainerResources";
        reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse = "ReopenContainerLog";
        exec_sync(ExecSyncRequest) -> ExecSyncResponse = "ExecSync";
        exec(ExecRequest) -> ExecResponse = "Exec";
        attach(AttachRequest) -> AttachResponse = "Attach";
        port_forward(PortForwardRequest) -> PortForwardResponse = "PortForward";
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse = "ContainerStats";
        list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse = "ListContainerStats";
        stream_container_stats(StreamContainerStatsRequest) -> Self::StreamContainerStatsStream = "StreamContainerStats";
        pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse = "PodSandboxStats";
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse = "ListPodSandboxStats";
        stream_pod_sandbox_stats(StreamPodSandboxStatsRequest) -> Self::StreamPodSandboxStatsStream = "StreamPodSandboxStats";
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse = "CheckpointContainer";
        get_container_events(GetEventsRequest) -> Self::GetContainerEventsStream = "GetContainerEvents";
        list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse = "ListMetricDescriptors";
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse = "ListPodSandboxMetrics";
        stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest) -> Self::StreamPodSandboxMetricsStream = "StreamPodSandboxMetrics";
        update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest) -> UpdatePodSandboxResourcesResponse = "UpdatePodSandboxResources";
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
        // The list, in messages of at most 100 images (the stream exists so huge lists need not be one
        // message).
        let filter = request.into_inner().filter.and_then(|f| f.image).map(|s| s.image);
        let images = list_images::list(&self.context, filter).await.map_err(into_status)?;
        let chunks: Vec<Result<StreamImagesResponse, Status>> =
            images.chunks(100).map(|chunk| Ok(StreamImagesResponse { images: chunk.to_vec() })).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
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
