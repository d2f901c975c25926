//! One tracing span per RPC, and one line when it finishes with its duration and status code.
//!
//! The span is named `rpc` with the method; handlers add the ids they act on (`pod_sandbox_id`,
//! `container_id`, `image`) with [`record_id`] so every line logged while serving the request carries them.
//! RPCs that change something finish at info; reads (List*, *Status, *Stats, Version, ...) at debug, because
//! kubelet polls them every second or so. The same place counts each RPC and its latency for `/metrics`
//! ([`crate::metrics`]).
//!
//! Each request runs to completion on a task of its own: hyper drops a request's future when the client
//! resets the stream, which would cancel the handler at an arbitrary `.await` and leave the RPC uncounted. On
//! its own task the work a caller gave up on finishes (DESIGN.md, "State": kubelet's retry then gets the
//! result, not "name is reserved"), its code and duration are recorded, and
//! `berth_grpc_requests_finished_after_deadline_total` counts it.
//!
//! The caller's deadline is enforced here too: when it passes, the caller gets DeadlineExceeded while the
//! work goes on. tonic enforces `grpc-timeout` outside every layer berth can add and answers Cancelled, so
//! the daemon's connections carry the header renamed to [`DEADLINE_HEADER`] (`daemon::authority`), and
//! tonic never sees a deadline.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::field::Empty;

/// The header a client's `grpc-timeout` arrives under (see the module comment).
pub const DEADLINE_HEADER: &str = "berth-grpc-timeout";

#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTraceLayer;

impl<S> Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;
    fn layer(&self, inner: S) -> RpcTrace<S> {
        RpcTrace { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcTrace<S> {
    inner: S,
}

impl<S, B, ResponseBody> Service<http::Request<B>> for RpcTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResponseBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError> + Send + 'static,
    B: Send + 'static,
    ResponseBody: Send + 'static,
{
    type Response = S::Response;
    /// A [`tonic::Status`] in a box is answered as that status (tonic's error recovery downcasts it).
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
        let span =
            tracing::info_span!("rpc", method = %method, pod_sandbox_id = Empty, container_id = Empty, image = Empty);
        let deadline = request
            .headers()
            .get(DEADLINE_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(crate::metrics::parse_grpc_timeout);
        let started = Instant::now();
        let late = deadline.map(|deadline| (started + deadline, method.clone()));
        let future = inner.call(request);
        let handled = tokio::spawn(
            async move {
                let result = future.await;
                let elapsed = started.elapsed();
                let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
                // Failures are answered "trailers-only", with grpc-status in the headers; a success carries it
                // in the trailers, after this point, so a missing header means the call succeeded.
                let code = match &result {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse::<i32>().ok())
                        .map(Code::from)
                        .unwrap_or(Code::Ok),
                    Err(_) => Code::Internal,
                };
                crate::metrics::global().rpc_finished(&method, code, elapsed, deadline);
                crate::daemon::heap::note_rpc_finished();
                if is_read_only(&method) {
                    tracing::debug!(?code, elapsed_ms, "rpc finished");
                } else {
                    tracing::info!(?code, elapsed_ms, "rpc finished");
                }
                result
            }
            .instrument(span),
        );
        let answer = async move {
            match handled.await {
                Ok(result) => result.map_err(Into::into),
                Err(join) => match join.try_into_panic() {
                    // A handler that panicked unwinds here, as it did before it ran on a task of its own.
                    Ok(panic) => std::panic::resume_unwind(panic),
                    // Cancelled: only the runtime's shutdown does that, and it drops this future as well.
                    Err(_) => std::future::pending().await,
                },
            }
        };
        Box::pin(async move {
            let Some((deadline, method)) = late else { return answer.await };
            match tokio::time::timeout_at(deadline.into(), answer).await {
                Ok(result) => result,
                Err(_) => Err(Box::new(tonic::Status::deadline_exceeded(format!(
                    "{method}: the caller's deadline passed after {:.1} ms; berth finishes the request anyway",
                    started.elapsed().as_secs_f64() * 1000.0
                ))) as tower::BoxError),
            }
        })
    }
}

/// Records an object id on the current RPC's span (`pod_sandbox_id`, `container_id` or `image`).
pub fn record_id(field: &'static str, id: &str) {
    tracing::Span::current().record(field, id);
}

/// Whether an RPC only reads state, which decides the level its completion is logged at.
pub fn is_read_only(method: &str) -> bool {
    method.starts_with("List")
        || method.starts_with("Stream")
        || method.ends_with("Status")
        || method.ends_with("Stats")
        || matches!(method, "Version" | "ImageFsInfo" | "RuntimeConfig" | "GetContainerEvents")
}

#[cfg(test)]
mod tests {
    use super::is_read_only;

    #[test]
    fn polling_rpcs_are_read_only_and_changes_are_not() {
        for read in ["Version", "Status", "ListPodSandbox", "ContainerStatus", "ListContainerStats", "ImageFsInfo"] {
            assert!(is_read_only(read), "{read}");
        }
        for write in ["RunPodSandbox", "UpdateRuntimeConfig", "PullImage", "ExecSync", "RemoveImage"] {
            assert!(!is_read_only(write), "{write}");
        }
    }
}
