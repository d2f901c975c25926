//! `berth.v1.Pulls/Watch`: the progress of a pull in flight, as snapshots at most ten per second, until it
//! ends.

use std::time::Duration;

use tonic::codegen::BoxStream;

use crate::context::Context;
use crate::cri::berth::{PullProgress, WatchPullRequest};
use crate::error::RpcError;

/// Longest a watcher may wait for the pull to start.
const MAX_WAIT: Duration = Duration::from_secs(30);

pub async fn handle(context: &Context, request: WatchPullRequest) -> Result<BoxStream<PullProgress>, RpcError> {
    let wait = Duration::from_secs(u64::from(request.wait_seconds)).min(MAX_WAIT);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    if let Some(mut progress) = context.pulls.watch(&request.image, wait).await {
        tokio::spawn(async move {
            loop {
                let snapshot = progress.borrow_and_update().clone();
                let finished = snapshot.finished;
                if tx.send(Ok(snapshot)).await.is_err() || finished {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if progress.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}
