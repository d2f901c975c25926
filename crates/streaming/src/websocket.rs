//! Exec, attach and port-forward over WebSocket (RFC 6455 framing by tokio-tungstenite).
//!
//! Channel protocols (kubelet's `wsstream`): every message starts with its channel, a byte in the binary
//! protocols (`v5.channel.k8s.io`, `v4.channel.k8s.io`, `channel.k8s.io`, or none named) and an ASCII digit
//! followed by base64 in the text ones (`v4.base64.channel.k8s.io`, `base64.channel.k8s.io`).
//! Exec/attach channels: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; v5 adds 255, on which the client
//! sends `[255, channel]` to close a channel (stdin EOF). v4+ write a `Status` JSON on the error channel.
//! Port-forward: ports from the `port` query parameters; port i has data channel 2i and error channel
//! 2i+1, each of which first carries the port as two little-endian bytes.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::activity::Activity;
use crate::backend::{Backend, Request, Streams};
use crate::config::Config;
use crate::session::{self, CommandRequest, Ended, ResizeDecoder, SessionGuard};
use crate::status::Outcome;

pub const REMOTE_COMMAND_PROTOCOLS: &[&str] =
    &["v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io", "channel.k8s.io", "base64.channel.k8s.io"];
pub const PORT_FORWARD_PROTOCOLS: &[&str] =
    &[SPDY_TUNNEL_PROTOCOL, "v4.channel.k8s.io", "v4.base64.channel.k8s.io", "channel.k8s.io"];
/// SPDY/3.1 port-forward carried in binary WebSocket messages (client-go's tunneling dialer: newer kubectl
/// and `crictl --transport websocket port-forward`); ports come from SPDY stream headers, not the query.
const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

#[derive(Clone, Copy)]
struct Codec {
    base64: bool,
}

impl Codec {
    fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + channel));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::text(text)
        } else {
            let mut frame = Vec::with_capacity(1 + data.len());
            frame.push(channel);
            frame.extend_from_slice(data);
            Message::binary(frame)
        }
    }

    /// The channel and payload of a message; `None` for control messages and malformed ones.
    fn decode(self, message: &Message) -> Option<(u8, Vec<u8>)> {
        let data: &[u8] = match message {
            Message::Binary(data) => data,
            Message::Text(text) => text.as_bytes(),
            _ => return None,
        };
        let (&first, rest) = data.split_first()?;
        if self.base64 {
            let channel = first.checked_sub(b'0')?;
            let payload = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
            Some((channel, payload))
        } else {
            Some((first, rest.to_vec()))
        }
    }
}

fn plain(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response
}

/// Ports from the query: `port=80&port=8080` or `port=80,8080`.
fn query_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        let Some(("port", value)) = pair.split_once('=') else { continue };
        for value in value.split("%2C").flat_map(|v| v.split(',')) {
            match value.parse::<u16>() {
                Ok(port) if port != 0 => ports.push(port),
                _ => return Err(format!("invalid port {value:?}")),
            }
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".to_owned());
    }
    Ok(ports)
}

/// Checks the WebSocket handshake, answers it, and runs the session on the upgraded connection.
pub fn upgrade(
    request: hyper::Request<Incoming>,
    stream_request: Request,
    backend: Arc<dyn Backend>,
    config: Config,
    guard: SessionGuard,
) -> Response<Full<Bytes>> {
    let headers = request.headers();
    let Some(key) = headers.get("sec-websocket-key") else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    if headers.get("sec-websocket-version").and_then(|v| v.to_str().ok()) != Some("13") {
        return plain(StatusCode::BAD_REQUEST, "unsupported Sec-WebSocket-Version (want 13)");
    }
    let accept = derive_accept_key(key.as_bytes());
    let offered: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    let supported = match &stream_request {
        Request::PortForward(_) => PORT_FORWARD_PROTOCOLS,
        _ => REMOTE_COMMAND_PROTOCOLS,
    };
    let protocol = if offered.is_empty() {
        String::new()
    } else {
        match offered.iter().find(|p| supported.contains(&p.as_str())) {
            Some(p) => p.clone(),
            None => {
                return plain(
                    StatusCode::FORBIDDEN,
                    format!("requested protocol(s) are not supported: {offered:?}; supports {supported:?}"),
                );
            }
        }
    };
    let ports = match &stream_request {
        Request::PortForward(_) if protocol == SPDY_TUNNEL_PROTOCOL => Vec::new(),
        Request::PortForward(_) => match query_ports(request.uri().query()) {
            Ok(ports) => ports,
            Err(message) => return plain(StatusCode::BAD_REQUEST, message),
        },
        _ => Vec::new(),
    };
    let codec = Codec { base64: protocol.contains("base64") };
    let on_upgrade = hyper::upgrade::on(request);
    let chosen = protocol.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "websocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        match stream_request {
            Request::Exec(r) => serve_command(ws, &chosen, codec, CommandRequest::Exec(r), backend, &config).await,
            Request::Attach(r) => serve_command(ws, &chosen, codec, CommandRequest::Attach(r), backend, &config).await,
            Request::PortForward(r) if chosen == SPDY_TUNNEL_PROTOCOL => {
                let activity = Activity::new();
                activity.touch();
                let conn =
                    crate::spdy::conn::Connection::server(tunnel(ws, Some(config.close_grace)), activity.clone());
                crate::spdy::portforward::serve(conn, r.pod_sandbox_id, backend, &config, activity).await
            }
            Request::PortForward(r) => serve_port_forward(ws, codec, r.pod_sandbox_id, ports, backend, &config).await,
        }
    });
    let mut response = plain(StatusCode::SWITCHING_PROTOCOLS, "");
    let headers = response.headers_mut();
    headers.insert("connection", HeaderValue::from_static("Upgrade"));
    headers.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert("sec-websocket-accept", value);
    }
    if !protocol.is_empty()
        && let Ok(value) = HeaderValue::from_str(&protocol)
    {
        headers.insert("sec-websocket-protocol", value);
    }
    response
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A byte stream over binary WebSocket messages, for SPDY to run on (both ends: the server's tunnel
/// sessions and `client::websocket::spdy_tunnel`). Ends (with a normal close) when the SPDY side drops its
/// end; with a `grace`, the reading half is stopped that long after if the peer has not closed by then.
pub(crate) fn tunnel<S>(ws: WebSocketStream<S>, grace: Option<std::time::Duration>) -> tokio::io::DuplexStream
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut sink, mut stream) = ws.split();
    let (mut from_spdy, mut to_spdy) = tokio::io::split(ours);
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Binary(data) if to_spdy.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_spdy.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_spdy.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = sink.close().await;
        if let Some(grace) = grace {
            tokio::time::sleep(grace).await;
            reader.abort();
        }
    });
    theirs
}

/// Splits the socket: a writer task sends what the returned sender is given (and a close frame when the
/// sender is dropped); the stream half is returned for reading.
fn split(
    ws: Ws,
    activity: Activity,
) -> (mpsc::Sender<Message>, futures_util::stream::SplitStream<Ws>, tokio::task::JoinHandle<()>) {
    let (mut sink, stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(32);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            activity.touch();
            if sink.send(message).await.is_err() {
                return;
            }
        }
        // A close with a status: client-go (gorilla) takes a close without one (1005) as an error.
        let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = sink.close().await;
    });
    (tx, stream, writer)
}

async fn serve_command(
    ws: Ws,
    protocol: &str,
    codec: Codec,
    request: CommandRequest,
    backend: Arc<dyn Backend>,
    config: &Config,
) {
    let v4 = protocol.starts_with("v4.") || protocol.starts_with("v5.");
    let v5 = protocol.starts_with("v5.");
    let activity = Activity::new();
    activity.touch();
    let (out, mut incoming, writer) = split(ws, activity.clone());

    let mut pumps = Vec::new();
    let mut stdin_tx = None;
    let stdin = request.stdin().then(|| {
        let (tx, backend_side, pump) = session::input();
        pumps.push(pump);
        stdin_tx = Some(tx);
        Box::new(backend_side) as _
    });
    let mut outputs = Vec::new();
    let mut output = |wanted: bool, channel: u8| {
        wanted.then(|| {
            let out = out.clone();
            let (backend_side, pump) = session::output(
                move |chunk| {
                    let out = out.clone();
                    async move {
                        out.send(codec.encode(channel, &chunk))
                            .await
                            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
                    }
                },
                || async {},
            );
            outputs.push(pump);
            Box::new(backend_side) as _
        })
    };
    let stdout = output(request.stdout(), STDOUT);
    let stderr = output(request.stderr(), STDERR);
    let (mut resize_decoder, resize) = if request.tty() {
        let (decoder, rx) = ResizeDecoder::new();
        (Some(decoder), Some(rx))
    } else {
        (None, None)
    };
    let streams = Streams { stdin, stdout, stderr, resize };

    // Reads the client's messages until it closes; resolves then (the client is gone).
    let reader_activity = activity.clone();
    let client_gone = async move {
        while let Some(Ok(message)) = incoming.next().await {
            reader_activity.touch();
            if let Message::Close(_) = message {
                break;
            }
            let Some((channel, data)) = codec.decode(&message) else { continue };
            match channel {
                STDIN => {
                    if let Some(tx) = &stdin_tx
                        && !data.is_empty()
                        && tx.send(Bytes::from(data)).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                RESIZE => {
                    if let Some(decoder) = &mut resize_decoder
                        && !decoder.feed(&data).await
                    {
                        resize_decoder = None;
                    }
                }
                CLOSE if v5 && data.first() == Some(&STDIN) => stdin_tx = None,
                _ => {}
            }
        }
    };

    let ended = session::run(&*backend, request, streams, client_gone, &activity, config.idle_timeout).await;
    let outcome = match ended {
        Ended::Done(outcome) => outcome,
        Ended::ClientGone => {
            tracing::debug!("websocket: client went away, session dropped");
            for pump in pumps {
                pump.abort();
            }
            writer.abort();
            return;
        }
        Ended::Idle => {
            tracing::info!(timeout = ?config.idle_timeout, "streaming session idle, closing");
            Outcome::Error(format!("streaming session idle for {:?}, closing", config.idle_timeout))
        }
    };
    for pump in outputs {
        let _ = pump.await;
    }
    let body = if v4 { Some(outcome.status_json()) } else { outcome.message().map(String::into_bytes) };
    if let Some(body) = body {
        let _ = out.send(codec.encode(ERROR, &body)).await;
    }
    for pump in pumps {
        pump.abort();
    }
    drop(out);
    let _ = tokio::time::timeout(config.close_grace, writer).await;
}

async fn serve_port_forward(
    ws: Ws,
    codec: Codec,
    pod_sandbox_id: String,
    ports: Vec<u16>,
    backend: Arc<dyn Backend>,
    config: &Config,
) {
    let activity = Activity::new();
    activity.touch();
    let (out, mut incoming, writer) = split(ws, activity.clone());
    let mut to_targets = Vec::new();
    let mut forwards = tokio::task::JoinSet::new();
    for (index, port) in ports.iter().copied().enumerate() {
        let data_channel = (index * 2) as u8;
        let error_channel = data_channel + 1;
        let port_bytes = port.to_le_bytes();
        let _ = out.send(codec.encode(data_channel, &port_bytes)).await;
        let _ = out.send(codec.encode(error_channel, &port_bytes)).await;
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        to_targets.push(Some(tx));
        let out = out.clone();
        let backend = backend.clone();
        let pod = pod_sandbox_id.clone();
        forwards.spawn(async move {
            let target = match backend.port_forward(&pod, port).await {
                Ok(target) => target,
                Err(err) => {
                    let message = format!("error forwarding port {port} to pod {pod}: {err}");
                    let _ = out.send(codec.encode(error_channel, message.as_bytes())).await;
                    return;
                }
            };
            let (mut read, mut write) = tokio::io::split(target);
            let upstream = async {
                while let Some(chunk) = rx.recv().await {
                    if write.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = write.shutdown().await;
            };
            let downstream = async {
                let mut buf = vec![0u8; 32 * 1024];
                while let Ok(n) = read.read(&mut buf).await {
                    if n == 0 || out.send(codec.encode(data_channel, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            };
            tokio::pin!(upstream, downstream);
            let mut upstream_done = false;
            loop {
                tokio::select! {
                    () = &mut upstream, if !upstream_done => upstream_done = true,
                    () = &mut downstream => break,
                }
            }
        });
    }
    drop(out);
    loop {
        tokio::select! {
            message = incoming.next() => {
                let Some(Ok(message)) = message else { break };
                activity.touch();
                if let Message::Close(_) = message {
                    break;
                }
                let Some((channel, data)) = codec.decode(&message) else { continue };
                // Only data channels (even) carry bytes for the target.
                if channel % 2 == 0
                    && let Some(slot) = to_targets.get_mut(usize::from(channel / 2))
                    && let Some(tx) = slot
                    && !data.is_empty()
                    && tx.send(Bytes::from(data)).await.is_err()
                {
                    *slot = None;
                }
            }
            joined = forwards.join_next() => {
                if joined.is_none() {
                    break;
                }
            }
            () = activity.idle(config.idle_timeout) => {
                tracing::info!(timeout = ?config.idle_timeout, "port-forward session idle, closing");
                break;
            }
        }
    }
    forwards.shutdown().await;
    let _ = tokio::time::timeout(config.close_grace, writer).await;
}
