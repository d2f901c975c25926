//! Interop with crictl's own client code (client-go's SPDY and WebSocket executors and port-forward
//! dialers, via cri-tools `pkg/common`). Built only with the `interop` feature (see Cargo.toml); it needs
//! the Go client built by `tests/interop/build.sh` at `BERTH_STREAMING_INTEROP_CLIENT`, and fails without it.

mod support;

use std::process::Stdio;
use std::time::Duration;

use berth_streaming::{ExecRequest, PortForwardRequest, Request, Server};
use support::{FakeBackend, echo_server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn client() -> Option<String> {
    let path = std::env::var("BERTH_STREAMING_INTEROP_CLIENT")
        .expect("BERTH_STREAMING_INTEROP_CLIENT must name the client built by tests/interop/build.sh");
    Some(path)
}

fn exec(cmd: &str, tty: bool) -> Request {
    Request::Exec(ExecRequest {
        container_id: "c1".into(),
        cmd: vec![cmd.into()],
        tty,
        stdin: true,
        stdout: true,
        stderr: !tty,
    })
}

async fn run_exec(client: &str, transport: &str, url: &str, tty: bool, stdin: &[u8]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(client);
    command.args(["exec", transport, url]);
    if tty {
        command.arg("tty");
    }
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut child_stdin = child.stdin.take().unwrap();
    child_stdin.write_all(stdin).await.unwrap();
    drop(child_stdin);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_go_exec_over_spdy_and_websocket() {
    let Some(client) = client() else { return };
    let backend = FakeBackend::default();
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), backend.clone()).await.unwrap();
    for transport in ["spdy", "websocket"] {
        let url = server.url_for(exec("cat; echo oops >&2; exit 7", false));
        let (code, out, err) = run_exec(&client, transport, &url, false, b"hello").await;
        assert_eq!((code, out.as_str(), err.as_str()), (7, "hello", "oops\n"), "{transport}");

        let url = server.url_for(exec("echo fine", false));
        let (code, out, err) = run_exec(&client, transport, &url, false, b"").await;
        assert_eq!((code, out.as_str(), err.as_str()), (0, "fine\n", ""), "{transport}");

        // A multi-megabyte stdout, beyond any window.
        let url = server.url_for(exec("head -c 3000000 /dev/zero | tr '\\0' a", false));
        let (code, out, _) = run_exec(&client, transport, &url, false, b"").await;
        assert_eq!((code, out.len()), (0, 3_000_000), "{transport}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_go_tty_exec_sends_its_terminal_size() {
    let Some(client) = client() else { return };
    let backend = FakeBackend::default();
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), backend.clone()).await.unwrap();
    for transport in ["spdy", "websocket"] {
        backend.resizes.lock().unwrap().clear();
        let url = server.url_for(exec("cat", true));
        let (code, out, _) = run_exec(&client, transport, &url, true, b"typed").await;
        assert_eq!((code, out.as_str()), (0, "typed"), "{transport}");
        let sizes: Vec<(u16, u16)> = backend.resizes.lock().unwrap().iter().map(|s| (s.width, s.height)).collect();
        assert_eq!(sizes, vec![(123, 45)], "{transport}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_go_port_forward_over_spdy_and_spdy_in_websocket() {
    let Some(client) = client() else { return };
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), FakeBackend::default()).await.unwrap();
    let echo_port = echo_server().await;
    for transport in ["spdy", "websocket"] {
        port_forward_through(&client, &server, transport, echo_port).await;
    }
}

async fn port_forward_through(client: &str, server: &Server, transport: &str, echo_port: u16) {
    let url = server.url_for(Request::PortForward(PortForwardRequest { pod_sandbox_id: "pod1".into() }));
    let mut child = tokio::process::Command::new(client)
        .args(["portforward", transport, &url, &echo_port.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().unwrap();
    let local: u16 = line.strip_prefix("listening ").unwrap().parse().unwrap();
    let mut connections = Vec::new();
    for n in 0..3u8 {
        connections.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", local)).await.unwrap();
            let (mut read, mut write) = tcp.into_split();
            let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8 ^ n).collect();
            let sent = payload.clone();
            let writer = tokio::spawn(async move { write.write_all(&sent).await.unwrap() });
            let mut echoed = vec![0u8; payload.len()];
            read.read_exact(&mut echoed).await.unwrap();
            writer.await.unwrap();
            assert!(echoed == payload, "connection {n}");
        }));
    }
    for connection in connections {
        tokio::time::timeout(Duration::from_secs(30), connection).await.unwrap().unwrap();
    }
}
