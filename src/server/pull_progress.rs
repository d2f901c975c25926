//! `berth.v1.Pulls/Watch`: the progress of a pull in flight, as snapshots at most ten per second (the last
//! one at once), until it ends.

use std::time::Duration;

use tonic::codegen::BoxStream;

use crate::context::Context;
use crate::cri::berth::{PullProgress, WatchPullRequest};
use crate::error::RpcError;

/// Shortest time between two progress snapshots.
const INTERVAL: Duration = Duration::from_millis(100);

/// Longest a watcher may wait for the pull to start.
const MAX_WAIT: Duration = Duration::from_secs(30);

pub async fn handle(context: &Context, request: WatchPullRequest) -> Result<BoxStream<PullProgress>, RpcError> {
    let wait = Duration::from_secs(u64::from(request.wait_seconds)).min(MAX_WAIT);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    if let Some(mut progress) = context.pulls.watch(&request.image, wait).await {
        tokio::spawn(async move {
            // At most one snapshot per interval, except the last: the end of a pull is sent at once, so a
            // client waiting for it (berth pull) is not held up by the rate limit.
            let mut last_sent: Option<tokio::time::Instant> = None;
            loop {
                let snapshot = progress.borrow_and_update().clone();
                let due = last_sent.is_none_or(|at| at.elapsed() >= INTERVAL);
                if snapshot.finished || due {
                    let finished = snapshot.finished;
                    if tx.send(Ok(snapshot)).await.is_err() || finished {
                        return;
                    }
                    last_sent = Some(tokio::time::Instant::now());
                }
                if progress.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}
