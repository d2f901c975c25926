//! What every RPC handler can reach: the configuration, the on-disk layout and the state database.

use std::sync::Arc;

use berth_store::Store;

use crate::config::Config;
use crate::error::RpcError;
use crate::layout::Layout;

#[derive(Debug)]
pub struct Context {
    pub config: Config,
    pub layout: Layout,
    pub store: Arc<Store>,
    /// Pulled images, their content and layer snapshots.
    pub images: Arc<berth_image::ImageStore>,
    /// Progress of the pulls in flight, for `berth pull`.
    pub pulls: Arc<crate::pulls::PullHub>,
    /// Pod sandboxes.
    pub pods: Arc<crate::pods::PodManager>,
    /// Containers, through each pod's shim.
    pub containers: Arc<crate::containers::ContainerManager>,
    /// Container and pod statistics (previous CPU samples, writable-layer usage, network counters).
    pub stats: Arc<crate::stats::StatsCollector>,
    /// The exec / attach / port-forward server whose URLs the streaming RPCs return.
    pub streaming: Arc<berth_streaming::Server>,
}

impl Context {
    /// Runs blocking work (database transactions, filesystem walks) off the async worker threads.
    pub async fn blocking<T, F>(&self, task: &'static str, work: F) -> Result<T, RpcError>
    where
        F: FnOnce() -> Result<T, RpcError> + Send + 'static,
        T: Send + 'static,
    {
        tokio::task::spawn_blocking(work).await.map_err(|source| RpcError::WorkerFailed { task, source })?
    }
}
