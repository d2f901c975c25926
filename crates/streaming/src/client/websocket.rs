//! The WebSocket client (tokio-tungstenite): remotecommand over the channel protocols, port-forward over
//! the channel protocol (one port per session, ports in the query) and SPDY tunnelled in binary messages.
//!
//! Channel protocols (kubelet's `wsstream`): each binary message starts with its channel. remotecommand:
//! 0 stdin, 1 stdout, 2 stderr, 3 error (a `Status` JSON in v4+), 4 resize; v5 adds 255, on which
//! `[255, 0]` closes stdin (v4 has no way to say stdin ended). Port-forward: port i's data channel is 2i,
//! its error channel 2i+1, and each first carries the port as two little-endian bytes.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::spdy::SpdyConnection;
use super::{ClientError, CommandIo, dial, split_url};

/// What we offer for exec/attach, newest first: v5 can close stdin, v4 cannot.
pub const REMOTE_COMMAND_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Port-forward with the port in the query.
pub const PORT_FORWARD_PROTOCOL: &str = "v4.channel.k8s.io";
/// SPDY/3.1 port-forward in binary messages (client-go's tunneling dialer).
pub const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

pub type Socket = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `url` (`http://` is taken as `ws://`) offering `protocols`; returns the socket and
/// the protocol the server chose.
pub async fn connect(url: &str, protocols: &[&str]) -> Result<(Socket, String), ClientError> {
    let (authority, _) = split_url(url)?;
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut request = ws_url.as_str().into_client_request().map_err(ClientError::WebSocket)?;
    if !protocols.is_empty() {
        let offered = protocols.join(", ").parse().map_err(|_| ClientError::Url(url.to_owned()))?;
        request.headers_mut().insert("sec-websocket-protocol", offered);
    }
    let tcp = dial(authority).await?;
    let (socket, response) = tokio_tungstenite::client_async(request, tcp).await.map_err(|err| match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            ClientError::Refused(format!("HTTP {}: {}", response.status(), body.trim()))
        }
        err => ClientError::WebSocket(err),
    })?;
    let chosen =
        response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    Ok((socket, chosen))
}

fn message(channel: u8, data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(1 + data.len());
    frame.push(channel);
    frame.extend_from_slice(data);
    Message::binary(frame)
}

/// A writer task owns the sink: everything sent to the returned sender goes out in order; when every
/// sender is dropped it closes with status 1000.
fn spawn_writer(
    mut sink: futures_util::stream::SplitSink<Socket, Message>,
) -> (mpsc::Sender<Message>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Message>(32);
    let task = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = sink.close().await;
    });
    (tx, task)
}

/// remotecommand over WebSocket; see [`super::run_command`].
pub(super) async fn run_command(url: &str, io: CommandIo) -> Result<i32, ClientError> {
    let (socket, protocol) = connect(url, REMOTE_COMMAND_PROTOCOLS).await?;
    if !REMOTE_COMMAND_PROTOCOLS.contains(&protocol.as_str()) {
        return Err(ClientError::Protocol(protocol));
    }
    let v5 = protocol == "v5.channel.k8s.io";
    let (sink, mut incoming) = socket.split();
    let (out, writer) = spawn_writer(sink);
    let CommandIo { stdin, mut stdout, mut stderr, tty, resize } = io;

    let mut inputs = Vec::new();
    if let Some(mut stdin) = stdin {
        let out = out.clone();
        inputs.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out.send(message(STDIN, &buf[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if v5 {
                let _ = out.send(Message::binary(vec![CLOSE, STDIN])).await;
            }
        }));
    }
    if let (true, Some(mut resize)) = (tty, resize) {
        let out = out.clone();
        inputs.push(tokio::spawn(async move {
            while let Some(size) = resize.recv().await {
                let json = serde_json::to_vec(&size).expect("a terminal size serializes");
                if out.send(message(RESIZE, &json)).await.is_err() {
                    break;
                }
            }
        }));
    }

    let mut status = Vec::new();
    let mut closed_cleanly = false;
    let mut output_error = None;
    while let Some(next) = incoming.next().await {
        let Ok(received) = next else { break };
        let data = match received {
            Message::Binary(data) => data,
            Message::Close(_) => {
                closed_cleanly = true;
                break;
            }
            _ => continue,
        };
        let Some((&channel, payload)) = data.split_first() else { continue };
        let target = match channel {
            STDOUT => stdout.as_mut(),
            STDERR => stderr.as_mut(),
            ERROR => {
                status.extend_from_slice(payload);
                continue;
            }
            _ => continue,
        };
        if let Some(to) = target
            && output_error.is_none()
            && let Err(err) = async {
                to.write_all(payload).await?;
                to.flush().await
            }
            .await
        {
            output_error = Some(err);
        }
    }
    for input in inputs {
        input.abort();
    }
    drop(out);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    let code = match super::exit_code_of_status(&status)? {
        Some(code) => code,
        None if closed_cleanly => return Err(ClientError::Remote("the session ended without a status".into())),
        None => return Err(ClientError::ConnectionLost),
    };
    if let Some(err) = output_error {
        return Err(ClientError::Io(err));
    }
    Ok(code)
}

/// Port-forward with the channel protocol: one WebSocket session for one connection to `port` (the URL is
/// single-use, so each connection needs a URL of its own). Bytes both ways until the pod's end closes.
pub async fn forward_port<IO>(url: &str, port: u16, local: IO) -> Result<(), ClientError>
where
    IO: AsyncRead + AsyncWrite + Send,
{
    let separator = if url.contains('?') { '&' } else { '?' };
    let (socket, protocol) = connect(&format!("{url}{separator}port={port}"), &[PORT_FORWARD_PROTOCOL]).await?;
    if protocol != PORT_FORWARD_PROTOCOL {
        return Err(ClientError::Protocol(protocol));
    }
    let (sink, mut incoming) = socket.split();
    let (out, writer) = spawn_writer(sink);
    let (mut local_read, mut local_write) = tokio::io::split(local);
    let upstream = async {
        let mut buf = vec![0u8; 32 * 1024];
        // The channel protocol cannot half-close: at the local EOF we just stop sending.
        while let Ok(n) = local_read.read(&mut buf).await {
            if n == 0 || out.send(message(0, &buf[..n])).await.is_err() {
                break;
            }
        }
    };
    let downstream = async {
        // The first message of each channel is its port, not payload.
        let mut announced = [false, false];
        let mut error = Vec::new();
        let mut clean = false;
        while let Some(Ok(received)) = incoming.next().await {
            let data = match received {
                Message::Binary(data) => data,
                Message::Close(_) => {
                    clean = true;
                    break;
                }
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else { continue };
            let Some(seen) = announced.get_mut(usize::from(channel)) else { continue };
            if !*seen {
                *seen = true;
                continue;
            }
            if channel == 1 {
                error.extend_from_slice(payload);
            } else if local_write.write_all(payload).await.is_err() {
                break;
            }
        }
        let _ = local_write.shutdown().await;
        if !error.is_empty() {
            Err(ClientError::Remote(String::from_utf8_lossy(&error).into_owned()))
        } else if clean {
            Ok(())
        } else {
            Err(ClientError::ConnectionLost)
        }
    };
    let result = {
        tokio::pin!(upstream, downstream);
        let mut upstream_done = false;
        loop {
            tokio::select! {
                () = &mut upstream, if !upstream_done => upstream_done = true,
                result = &mut downstream => break result,
            }
        }
    };
    drop(out);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    result
}

/// Port-forward as SPDY in binary WebSocket messages: the socket is bridged to a byte stream and a SPDY
/// session runs on it.
pub async fn spdy_tunnel(url: &str) -> Result<SpdyConnection, ClientError> {
    let (socket, protocol) = connect(url, &[SPDY_TUNNEL_PROTOCOL]).await?;
    if protocol != SPDY_TUNNEL_PROTOCOL {
        return Err(ClientError::Protocol(protocol));
    }
    // The peer closes the socket when the session ends: no grace to bound the reading half by.
    let theirs = crate::websocket::tunnel(socket, None);
    Ok(SpdyConnection::start(theirs, "portforward.k8s.io".to_owned()))
}
