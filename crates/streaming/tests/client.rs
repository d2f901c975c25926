//! The crate's client (`berth_streaming::client`) end to end against the server, over both transports:
//! what `berth exec/attach/port-forward` relies on.

mod support;

use std::time::Duration;

use berth_streaming::client::{self, ClientError, CommandIo, PortForwarder, Transport};
use berth_streaming::{AttachRequest, ExecRequest, PortForwardRequest, Request, Server, TerminalSize};
use support::{FakeBackend, echo_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRANSPORTS: [Transport; 2] = [Transport::Spdy, Transport::WebSocket];

fn exec(cmd: &str, tty: bool, stdin: bool) -> Request {
    Request::Exec(ExecRequest {
        container_id: "c1".into(),
        cmd: vec![cmd.into()],
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
}

async fn server() -> (Server, FakeBackend) {
    let backend = FakeBackend::default();
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), backend.clone()).await.unwrap();
    (server, backend)
}

async fn with_timeout<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A writer whose bytes the test can read afterwards.
fn capture() -> (Box<dyn tokio::io::AsyncWrite + Send + Unpin>, tokio::io::DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(16 * 1024 * 1024);
    (Box::new(ours), theirs)
}

async fn captured(mut from: tokio::io::DuplexStream) -> String {
    let mut text = String::new();
    from.read_to_string(&mut text).await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_pipes_stdin_separates_stdout_and_stderr_and_returns_the_exit_code() {
    let (server, _) = server().await;
    for transport in TRANSPORTS {
        let url = server.url_for(exec("cat; echo oops >&2; exit 7", false, true));
        let (stdout, out) = capture();
        let (stderr, err) = capture();
        let io = CommandIo {
            stdin: Some(Box::new(&b"piped stdin\n"[..])),
            stdout: Some(stdout),
            stderr: Some(stderr),
            ..CommandIo::default()
        };
        let code = with_timeout("exec", client::run_command(&url, transport, io)).await.unwrap();
        assert_eq!(code, 7, "{transport:?}");
        assert_eq!(captured(out).await, "piped stdin\n", "{transport:?}");
        assert_eq!(captured(err).await, "oops\n", "{transport:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_success_is_zero_and_a_backend_error_is_its_message() {
    let (server, _) = server().await;
    for transport in TRANSPORTS {
        let (stdout, out) = capture();
        let io = CommandIo { stdout: Some(stdout), stderr: Some(Box::new(tokio::io::sink())), ..CommandIo::default() };
        let code = client::run_command(&server.url_for(exec("echo hi", false, false)), transport, io).await.unwrap();
        assert_eq!((code, captured(out).await.as_str()), (0, "hi\n"), "{transport:?}");

        let missing = Request::Exec(ExecRequest {
            container_id: "missing".into(),
            cmd: vec!["true".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        });
        let io = CommandIo { stdout: Some(Box::new(tokio::io::sink())), ..CommandIo::default() };
        let err = client::run_command(&server.url_for(missing), transport, io).await.unwrap_err();
        assert!(matches!(&err, ClientError::Remote(m) if m.contains("not found")), "{transport:?}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_sessions_send_the_initial_size_and_resizes() {
    let (server, backend) = server().await;
    for (round, transport) in TRANSPORTS.into_iter().enumerate() {
        let (resize_tx, resize_rx) = tokio::sync::mpsc::channel(4);
        resize_tx.send(TerminalSize { width: 80, height: 24 }).await.unwrap();
        resize_tx.send(TerminalSize { width: 100, height: 30 }).await.unwrap();
        let (stdin_ours, stdin_theirs) = tokio::io::duplex(1024);
        let (stdout, out) = capture();
        let io = CommandIo {
            stdin: Some(Box::new(stdin_theirs)),
            stdout: Some(stdout),
            tty: true,
            resize: Some(resize_rx),
            ..CommandIo::default()
        };
        let url = server.url_for(exec("cat", true, true));
        let session = tokio::spawn(async move { client::run_command(&url, transport, io).await });
        let want = 2 * (round + 1);
        with_timeout("resizes", async {
            while backend.resizes.lock().unwrap().len() < want {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let sizes: Vec<(u16, u16)> =
            backend.resizes.lock().unwrap()[want - 2..].iter().map(|s| (s.width, s.height)).collect();
        assert_eq!(sizes, vec![(80, 24), (100, 30)], "{transport:?}");
        let mut stdin = stdin_ours;
        stdin.write_all(b"typed").await.unwrap();
        drop(stdin);
        let code = with_timeout("tty exec", session).await.unwrap().unwrap();
        assert_eq!(code, 0, "{transport:?}");
        assert_eq!(captured(out).await, "typed", "{transport:?}");
        drop(resize_tx);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_runs_to_success() {
    let (server, _) = server().await;
    for transport in TRANSPORTS {
        let request = Request::Attach(AttachRequest {
            container_id: "c1".into(),
            tty: false,
            stdin: true,
            stdout: true,
            stderr: false,
        });
        let (stdout, out) = capture();
        let io = CommandIo { stdin: Some(Box::new(&b"attached"[..])), stdout: Some(stdout), ..CommandIo::default() };
        let code = with_timeout("attach", client::run_command(&server.url_for(request), transport, io)).await.unwrap();
        assert_eq!((code, captured(out).await.as_str()), (0, "attached"), "{transport:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_url_is_refused_with_the_servers_answer() {
    let (server, _) = server().await;
    let url = server.url_for(exec("true", false, false));
    let io = || CommandIo {
        stdout: Some(Box::new(tokio::io::sink())),
        stderr: Some(Box::new(tokio::io::sink())),
        ..CommandIo::default()
    };
    client::run_command(&url, Transport::Spdy, io()).await.unwrap();
    for transport in TRANSPORTS {
        let err = client::run_command(&url, transport, io()).await.unwrap_err();
        assert!(matches!(&err, ClientError::Refused(m) if m.contains("404")), "{transport:?}: {err:?}");
    }
}

/// Many connections at once over one session, megabytes each way, as `berth port-forward` runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forwarder_runs_parallel_connections_over_one_session() {
    let (server, _) = server().await;
    let port = echo_server().await;
    for transport in TRANSPORTS {
        let url = server.url_for(Request::PortForward(PortForwardRequest { pod_sandbox_id: "pod1".into() }));
        let forwarder = std::sync::Arc::new(PortForwarder::connect(&url, transport).await.unwrap());
        let mut connections = Vec::new();
        for n in 0..4u8 {
            let forwarder = forwarder.clone();
            connections.push(tokio::spawn(async move {
                // `forwarded` stands for an accepted local connection; the test is the program behind it.
                let (forwarded, mut app) = tokio::io::duplex(64 * 1024);
                let forward = tokio::spawn(async move { forwarder.forward(port, forwarded).await });
                let payload: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 251) as u8 ^ n).collect();
                let (mut read, mut write) = tokio::io::split(&mut app);
                let send = async {
                    write.write_all(&payload).await.unwrap();
                    write.shutdown().await.unwrap();
                };
                let mut echoed = Vec::new();
                let (_, read_result) = tokio::join!(send, read.read_to_end(&mut echoed));
                read_result.unwrap();
                assert!(echoed == payload, "connection {n}: {} of {} bytes echoed", echoed.len(), payload.len());
                forward.await.unwrap().unwrap();
            }));
        }
        for connection in connections {
            with_timeout("forward", connection).await.unwrap();
        }
        std::sync::Arc::into_inner(forwarder).unwrap().close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dial_is_the_forwards_error() {
    let (server, _) = server().await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    for transport in TRANSPORTS {
        let url = server.url_for(Request::PortForward(PortForwardRequest { pod_sandbox_id: "pod1".into() }));
        let forwarder = PortForwarder::connect(&url, transport).await.unwrap();
        let (local, _keep) = tokio::io::duplex(1024);
        let err = with_timeout("forward", forwarder.forward(port, local)).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Remote(m) if m.contains(&format!("error forwarding port {port} to pod pod1"))),
            "{transport:?}: {err:?}"
        );
    }
    // The channel protocol reports it the same way.
    let url = server.url_for(Request::PortForward(PortForwardRequest { pod_sandbox_id: "pod1".into() }));
    let (local, _keep) = tokio::io::duplex(1024);
    let err = with_timeout("forward", client::websocket::forward_port(&url, port, local)).await.unwrap_err();
    assert!(matches!(&err, ClientError::Remote(m) if m.contains("error forwarding port")), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_channel_port_forward_carries_one_connection() {
    let (server, _) = server().await;
    let port = echo_server().await;
    let url = server.url_for(Request::PortForward(PortForwardRequest { pod_sandbox_id: "pod1".into() }));
    let (local, mut test_end) = tokio::io::duplex(64 * 1024);
    let forward = tokio::spawn(async move { client::websocket::forward_port(&url, port, local).await });
    let payload: Vec<u8> = (0..500_000u32).map(|i| (i % 241) as u8).collect();
    let (mut read, mut write) = tokio::io::split(&mut test_end);
    let mut echoed = vec![0u8; payload.len()];
    let (sent, received) =
        with_timeout("echo", async { tokio::join!(write.write_all(&payload), read.read_exact(&mut echoed)) }).await;
    sent.unwrap();
    received.unwrap();
    assert!(echoed == payload);
    // The channel protocol cannot half-close; dropping the local end leaves the session to the caller.
    forward.abort();
}
