//! The HTTP side: listening, one-shot URLs, the upgrade handshakes (SPDY/3.1 and WebSocket) with protocol
//! negotiation, the per-container session limit, and handing the upgraded connection to a protocol.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderMap, HeaderValue, UPGRADE};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::activity::Activity;
use crate::backend::{Backend, Request};
use crate::config::Config;
use crate::error::ServerError;
use crate::session::{CommandRequest, Sessions};
use crate::spdy;
use crate::tokens::TokenStore;
use crate::websocket;

const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const ACCEPTED_PROTOCOLS_HEADER: &str = "x-accepted-stream-protocol-versions";

/// A running streaming server. Dropping it stops accepting connections; sessions in flight go on.
pub struct Server {
    addr: SocketAddr,
    base_url: String,
    inner: Arc<Inner>,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local_addr", &self.local_addr()).finish_non_exhaustive()
    }
}

struct Inner {
    tokens: TokenStore,
    sessions: Arc<Sessions>,
    backend: Arc<dyn Backend>,
    config: Config,
}

impl Server {
    /// Listens on `addr` (port 0: any free port) with the default configuration.
    pub async fn bind(addr: SocketAddr, backend: impl Backend) -> Result<Server, ServerError> {
        Server::bind_with(addr, backend, Config::default()).await
    }

    pub async fn bind_with(addr: SocketAddr, backend: impl Backend, config: Config) -> Result<Server, ServerError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr, source })?;
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let base_url = config.base_url.clone().unwrap_or_else(|| format!("{scheme}://{addr}"));
        let inner = Arc::new(Inner {
            tokens: TokenStore::new(config.token_ttl),
            sessions: Arc::new(Sessions::default()),
            backend: Arc::new(backend),
            config,
        });
        let accept = tokio::spawn(accept_loop(listener, inner.clone()));
        tracing::info!(%addr, "streaming server listening");
        Ok(Server { addr, base_url, inner, accept })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A one-shot URL for `request`: what the Exec, Attach and PortForward RPCs return.
    pub fn url_for(&self, request: Request) -> String {
        let path = request.path();
        let token = self.inner.tokens.issue(request);
        format!("{}/{path}/{token}", self.base_url)
    }

    /// Issued URLs not yet used (expired ones are swept when the next is issued).
    pub fn pending_tokens(&self) -> usize {
        self.inner.tokens.len()
    }

    /// Sessions running now (upgraded connections whose protocol has not finished).
    pub fn active_sessions(&self) -> usize {
        self.inner.sessions.total()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "streaming server: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let inner = inner.clone();
        tokio::spawn(async move {
            match inner.config.tls.clone() {
                None => serve_connection(tcp, peer, inner).await,
                Some(tls) => {
                    // A client that connects and never finishes the handshake must not hold a task forever.
                    let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(tcp);
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, inner).await,
                        Ok(Err(err)) => tracing::debug!(%peer, error = %err, "streaming server: TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "streaming server: TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// How long a client has to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves HTTP/1.1 (with upgrades) on one accepted connection, plain or TLS.
async fn serve_connection<IO>(io: IO, peer: SocketAddr, inner: Arc<Inner>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let inner = inner.clone();
        async move { Ok::<_, Infallible>(handle(request, inner).await) }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service).with_upgrades();
    if let Err(err) = connection.await {
        tracing::debug!(%peer, error = %err, "streaming server: connection error");
    }
}

fn plain(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn header_has_token(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// The values of a header that may be repeated and comma-separated, in order.
fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first protocol the client offers that we speak (the client's order wins, as in kubelet).
/// `Some("")` when the client offered none: old clients, which get the oldest protocol.
fn negotiate(offered: &[String], supported: &[&str]) -> Option<String> {
    if offered.is_empty() {
        return Some(String::new());
    }
    offered.iter().find(|p| supported.contains(&p.as_str())).cloned()
}

async fn handle(request: hyper::Request<Incoming>, inner: Arc<Inner>) -> Response<Full<Bytes>> {
    let path = request.uri().path().trim_start_matches('/').to_owned();
    let Some((kind, token)) = path.split_once('/') else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() || token.contains('/') {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    // The token is used up whatever happens next: a URL is good for one try.
    let Some(stream_request) = inner.tokens.take(token) else {
        return plain(StatusCode::NOT_FOUND, "unknown, used or expired streaming token");
    };
    if stream_request.path() != kind {
        return plain(StatusCode::NOT_FOUND, "unknown, used or expired streaming token");
    }
    let websocket = header_has_token(request.headers(), UPGRADE, "websocket");
    let spdy = request
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("SPDY/3.1"));
    if !header_has_token(request.headers(), CONNECTION, "upgrade") || !(websocket || spdy) {
        return plain(StatusCode::BAD_REQUEST, "unable to upgrade: missing upgrade headers in request");
    }
    let key = stream_request.session_key();
    let limit = inner.config.max_sessions_per_container;
    let Some(guard) = inner.sessions.acquire(key.clone(), limit) else {
        tracing::warn!(%key, limit, "streaming session refused: too many sessions");
        return plain(StatusCode::TOO_MANY_REQUESTS, format!("too many streaming sessions for {key} (limit {limit})"));
    };
    if websocket {
        return websocket::upgrade(request, stream_request, inner.backend.clone(), inner.config.clone(), guard);
    }

    let supported: &[&str] = match &stream_request {
        Request::PortForward(_) => spdy::PORT_FORWARD_PROTOCOLS,
        _ => spdy::REMOTE_COMMAND_PROTOCOLS,
    };
    let offered = header_list(request.headers(), PROTOCOL_HEADER);
    let Some(protocol) = negotiate(&offered, supported) else {
        let mut response = plain(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}"
            ),
        );
        if let Ok(value) = HeaderValue::from_str(&supported.join(", ")) {
            response.headers_mut().insert(ACCEPTED_PROTOCOLS_HEADER, value);
        }
        return response;
    };

    let backend = inner.backend.clone();
    let config = inner.config.clone();
    let on_upgrade = hyper::upgrade::on(request);
    let chosen = protocol.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "spdy upgrade failed");
                return;
            }
        };
        let activity = Activity::new();
        activity.touch();
        let conn = spdy::conn::Connection::server(TokioIo::new(upgraded), activity.clone());
        match stream_request {
            Request::Exec(r) => {
                let r = CommandRequest::Exec(r);
                spdy::remotecommand::serve(conn, &chosen, r, backend, &config, activity).await
            }
            Request::Attach(r) => {
                let r = CommandRequest::Attach(r);
                spdy::remotecommand::serve(conn, &chosen, r, backend, &config, activity).await
            }
            Request::PortForward(r) => {
                spdy::portforward::serve(conn, r.pod_sandbox_id, backend, &config, activity).await
            }
        }
    });
    let mut response = plain(StatusCode::SWITCHING_PROTOCOLS, "");
    let headers = response.headers_mut();
    headers.remove("content-type");
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if !protocol.is_empty()
        && let Ok(value) = HeaderValue::from_str(&protocol)
    {
        headers.insert(PROTOCOL_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_order_wins_and_no_offer_means_the_oldest() {
        let offered = vec!["v3.channel.k8s.io".to_owned(), "v4.channel.k8s.io".to_owned()];
        assert_eq!(negotiate(&offered, spdy::REMOTE_COMMAND_PROTOCOLS).as_deref(), Some("v3.channel.k8s.io"));
        assert_eq!(negotiate(&[], spdy::REMOTE_COMMAND_PROTOCOLS).as_deref(), Some(""));
        assert_eq!(negotiate(&["v9".to_owned()], spdy::REMOTE_COMMAND_PROTOCOLS), None);
    }
}
