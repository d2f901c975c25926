//! The server driven over WebSocket (tokio-tungstenite as the client) with a backend that runs real processes.

mod support;

use std::time::Duration;

use base64::Engine;
use berth_streaming::{ExecRequest, PortForwardRequest, Request, Server};
use futures_util::{SinkExt, StreamExt};
use support::{FakeBackend, echo_server};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Client = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(url: &str, protocol: &str) -> (Client, Option<String>) {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut request = ws_url.as_str().into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", protocol.parse().unwrap());
    let authority = request.uri().authority().unwrap().to_string();
    let tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    let chosen = response.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_owned());
    (ws, chosen)
}

fn exec(cmd: &str) -> Request {
    Request::Exec(ExecRequest {
        container_id: "c1".into(),
        cmd: vec![cmd.into()],
        tty: false,
        stdin: true,
        stdout: true,
        stderr: true,
    })
}

/// Every message until the server closes, by channel.
async fn collect(ws: &mut Client, base64: bool) -> [Vec<u8>; 5] {
    let mut channels: [Vec<u8>; 5] = Default::default();
    let read = async {
        while let Some(Ok(message)) = ws.next().await {
            let (channel, data) = match message {
                Message::Binary(data) => (data[0], data[1..].to_vec()),
                Message::Text(text) if base64 => {
                    let bytes = text.as_bytes();
                    let decoded = base64::engine::general_purpose::STANDARD.decode(&bytes[1..]);
                    (bytes[0] - b'0', decoded.unwrap_or_else(|e| panic!("{text:?}: {e}")))
                }
                Message::Close(_) => break,
                _ => continue,
            };
            channels[channel as usize].extend_from_slice(&data);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("session ends");
    channels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_exec_with_stdin_closed_by_the_close_signal() {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), FakeBackend::default()).await.unwrap();
    let (mut ws, chosen) = connect(&server.url_for(exec("cat; echo oops >&2; exit 2")), "v5.channel.k8s.io").await;
    assert_eq!(chosen.as_deref(), Some("v5.channel.k8s.io"));
    ws.send(Message::binary(b"\x00hello ".to_vec())).await.unwrap();
    ws.send(Message::binary(b"\x00world".to_vec())).await.unwrap();
    // v5: [255, 0] closes stdin, so `cat` sees EOF while the connection stays open.
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let channels = collect(&mut ws, false).await;
    assert_eq!(channels[1], b"hello world");
    assert_eq!(channels[2], b"oops\n");
    let status: serde_json::Value = serde_json::from_slice(&channels[3]).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_base64_exec_encodes_every_channel() {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), FakeBackend::default()).await.unwrap();
    let url = server.url_for(exec("printf '\\001\\377'; echo e >&2"));
    let (mut ws, chosen) = connect(&url, "v4.base64.channel.k8s.io").await;
    assert_eq!(chosen.as_deref(), Some("v4.base64.channel.k8s.io"));
    let channels = collect(&mut ws, true).await;
    assert_eq!(channels[1], [1u8, 255]);
    assert_eq!(channels[2], b"e\n");
    assert_eq!(channels[3], br#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_websocket_announces_the_port_and_echoes() {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), FakeBackend::default()).await.unwrap();
    let port = echo_server().await;
    let url = server.url_for(Request::PortForward(PortForwardRequest { pod_sandbox_id: "pod1".into() }));
    let (mut ws, chosen) = connect(&format!("{url}?port={port}"), "v4.channel.k8s.io").await;
    assert_eq!(chosen.as_deref(), Some("v4.channel.k8s.io"));
    let mut announced = Vec::new();
    while announced.len() < 2 {
        if let Some(Ok(Message::Binary(data))) = ws.next().await {
            announced.push(data.to_vec());
        }
    }
    let port_bytes = port.to_le_bytes();
    assert_eq!(announced, vec![vec![0, port_bytes[0], port_bytes[1]], vec![1, port_bytes[0], port_bytes[1]]]);
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    for chunk in payload.chunks(30_000) {
        let mut message = vec![0u8];
        message.extend_from_slice(chunk);
        ws.send(Message::binary(message)).await.unwrap();
    }
    let mut echoed = Vec::new();
    let read = async {
        while echoed.len() < payload.len() {
            match ws.next().await {
                Some(Ok(Message::Binary(data))) => {
                    assert_eq!(data[0], 0, "data channel");
                    echoed.extend_from_slice(&data[1..]);
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.unwrap();
    assert!(echoed == payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_websocket_needs_a_port() {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), FakeBackend::default()).await.unwrap();
    let url = server.url_for(Request::PortForward(PortForwardRequest { pod_sandbox_id: "pod1".into() }));
    let request = url.replacen("http://", "ws://", 1).into_client_request().unwrap();
    let tcp = tokio::net::TcpStream::connect(request.uri().authority().unwrap().as_str()).await.unwrap();
    let err = tokio_tungstenite::client_async(request, tcp).await.unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}

/// `SPDY/3.1+portforward.k8s.io`: SPDY frames in binary messages (client-go's tunneling dialer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_with_spdy_tunnelled_in_websocket() {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), FakeBackend::default()).await.unwrap();
    let port = echo_server().await.to_string();
    let url = server.url_for(Request::PortForward(PortForwardRequest { pod_sandbox_id: "pod1".into() }));
    let client = berth_streaming::client::websocket::spdy_tunnel(&url).await.unwrap();
    let mut error = client.open(&[("streamType", "error"), ("port", &port), ("requestID", "0")]).await.unwrap();
    let data = client.open(&[("streamType", "data"), ("port", &port), ("requestID", "0")]).await.unwrap();
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 239) as u8).collect();
    let support::SpdyStream { mut reader, writer, .. } = data;
    let send = async {
        writer.write(&payload).await.unwrap();
        writer.close().await.unwrap();
    };
    let (_, echoed) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(send, reader.read_to_end()) })
        .await
        .unwrap();
    let echoed = echoed.unwrap();
    assert!(echoed == payload, "{} bytes echoed", echoed.len());
    assert_eq!(support::read_all(&mut error).await, b"");
}
