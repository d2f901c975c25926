//! The `/metrics` HTTP endpoint (`[metrics]` in the config; off by default).
//!
//! HTTP/1.1 through hyper, one task per connection. A scrape reads the pod and container counts from the
//! state database and checks each pod's shim (its bootstrap file and `/proc`) on a blocking thread, then
//! encodes every family. Any other path is 404.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::context::Context;
use crate::records::{ContainerRecordState, PodState};

/// What OpenMetrics text is served as; Prometheus asks for it and parses it.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {address}")]
pub struct MetricsListenError {
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

impl berth_error_kind::Kinded for MetricsListenError {
    fn kind(&self) -> berth_error_kind::ErrorKind {
        berth_error_kind::ErrorKind::of_io(&self.source)
    }
}

/// Binds the address (at start-up, so a taken port stops the daemon before it serves).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, MetricsListenError> {
    TcpListener::bind(address).await.map_err(|source| MetricsListenError { address, source })
}

/// Serves scrapes until the runtime stops.
pub fn spawn(listener: TcpListener, context: Arc<Context>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let context = context.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| handle(request, context.clone()));
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(err) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                    tracing::debug!(error = %err, "metrics connection ended with an error");
                }
            });
        }
    })
}

async fn handle(
    request: Request<hyper::body::Incoming>,
    context: Arc<Context>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if request.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "text/plain", "not found: berth serves /metrics\n".into()));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n".into()));
    }
    let counting = context.clone();
    let counted = context
        .blocking("count pods and containers", move || {
            let pods = counting.pods.list()?;
            let containers = counting.containers.list()?;
            let pod_counts =
                [("ready", PodState::Ready), ("notready", PodState::NotReady), ("creating", PodState::Creating)]
                    .map(|(name, state)| (name, pods.iter().filter(|p| p.state == state).count() as i64));
            let container_counts = [
                ("creating", ContainerRecordState::Creating),
                ("created", ContainerRecordState::Created),
                ("running", ContainerRecordState::Running),
                ("exited", ContainerRecordState::Exited),
                ("unknown", ContainerRecordState::Unknown),
            ]
            .map(|(name, state)| (name, containers.iter().filter(|c| c.state == state).count() as i64));
            // A shim is alive when the process its bootstrap file names still runs (pid and start time).
            let shims = pods
                .iter()
                .filter(|pod| {
                    crate::shim::Bootstrap::load(&counting.layout.pod_dir(&pod.id)).is_ok_and(|b| b.is_alive())
                })
                .count() as i64;
            Ok((pod_counts, container_counts, shims))
        })
        .await;
    match counted {
        Ok((pods, containers, shims)) => {
            super::global().set_counts(&pods, &containers);
            super::global().set_shims(shims);
        }
        Err(err) => tracing::warn!(error = %crate::error::chain(&err), "metrics: cannot count pods and containers"),
    }
    super::global().set_runtime_tasks(tokio::runtime::Handle::current().metrics().num_alive_tasks());
    Ok(reply(StatusCode::OK, CONTENT_TYPE, super::global().encode()))
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}
