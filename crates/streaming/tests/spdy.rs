//! The server driven over SPDY/3.1 by the test client in `support/`, with a backend that runs real processes.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use berth_streaming::{Config, ExecRequest, PortForwardRequest, Request, Server};
use support::{FakeBackend, SpdyStream, echo_server, http_request, read_all, spdy};

const V4: &[&str] = &["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];

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

async fn server_with(config: Config) -> (Server, FakeBackend) {
    let backend = FakeBackend::default();
    let server = Server::bind_with("127.0.0.1:0".parse().unwrap(), backend.clone(), config).await.unwrap();
    (server, backend)
}

async fn server() -> (Server, FakeBackend) {
    server_with(Config::default()).await
}

async fn with_timeout<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_separates_stdin_stdout_stderr_and_reports_success_as_v4_status() {
    let (server, _) = server().await;
    let client = spdy(&server.url_for(exec("cat; echo oops >&2", false, true)), V4).await;
    assert_eq!(client.protocol(), "v4.channel.k8s.io");
    let mut error = client.open(&[("streamType", "error")]).await.unwrap();
    let stdin = client.open(&[("streamType", "stdin")]).await.unwrap();
    let mut stdout = client.open(&[("streamType", "stdout")]).await.unwrap();
    let mut stderr = client.open(&[("streamType", "stderr")]).await.unwrap();
    stdin.write(b"hello from stdin").await.unwrap();
    stdin.close().await.unwrap();
    let (out, err, status) = with_timeout("exec", async {
        tokio::join!(read_all(&mut stdout), read_all(&mut stderr), read_all(&mut error))
    })
    .await;
    assert_eq!(String::from_utf8(out).unwrap(), "hello from stdin");
    assert_eq!(String::from_utf8(err).unwrap(), "oops\n");
    assert_eq!(String::from_utf8(status).unwrap(), r#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_zero_exit_code_is_a_failure_status_with_the_code() {
    let (server, _) = server().await;
    let client = spdy(&server.url_for(exec("echo out; exit 3", false, false)), V4).await;
    let mut error = client.open(&[("streamType", "error")]).await.unwrap();
    let mut stdout = client.open(&[("streamType", "stdout")]).await.unwrap();
    let _stderr = client.open(&[("streamType", "stderr")]).await.unwrap();
    let (out, status) = with_timeout("exec", async { tokio::join!(read_all(&mut stdout), read_all(&mut error)) }).await;
    assert_eq!(out, b"out\n");
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_v4_the_error_stream_carries_only_a_failure_message() {
    let (server, _) = server().await;
    for (cmd, want_message) in [("exit 0", false), ("exit 5", true)] {
        let client = spdy(&server.url_for(exec(cmd, false, false)), &["v2.channel.k8s.io"]).await;
        assert_eq!(client.protocol(), "v2.channel.k8s.io");
        let mut error = client.open(&[("streamType", "error")]).await.unwrap();
        let _stdout = client.open(&[("streamType", "stdout")]).await.unwrap();
        let _stderr = client.open(&[("streamType", "stderr")]).await.unwrap();
        let message = String::from_utf8(with_timeout("exec", read_all(&mut error)).await).unwrap();
        if want_message {
            assert!(message.contains("non-zero exit code") && message.contains('5'), "{message}");
        } else {
            assert_eq!(message, "");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_events_reach_the_backend() {
    let (server, backend) = server().await;
    let client = spdy(&server.url_for(exec("cat", true, true)), V4).await;
    let mut error = client.open(&[("streamType", "error")]).await.unwrap();
    let stdin = client.open(&[("streamType", "stdin")]).await.unwrap();
    let mut stdout = client.open(&[("streamType", "stdout")]).await.unwrap();
    let resize = client.open(&[("streamType", "resize")]).await.unwrap();
    // One object split across two writes, then a second one.
    resize.write(br#"{"Width":80,"He"#).await.unwrap();
    resize.write(br#"ight":24}{"Width":132,"Height":43}"#).await.unwrap();
    with_timeout("resizes", async {
        while backend.resizes.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let sizes: Vec<(u16, u16)> = backend.resizes.lock().unwrap().iter().map(|s| (s.width, s.height)).collect();
    assert_eq!(sizes, vec![(80, 24), (132, 43)]);
    stdin.write(b"x").await.unwrap();
    stdin.close().await.unwrap();
    let (out, status) = with_timeout("exec", async { tokio::join!(read_all(&mut stdout), read_all(&mut error)) }).await;
    assert_eq!(out, b"x");
    assert!(String::from_utf8(status).unwrap().contains("Success"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_never_sends_more_than_the_window_the_client_gave() {
    let (server, _) = server().await;
    let client = spdy(&server.url_for(exec("head -c 1000000 /dev/zero", false, false)), V4).await;
    let _error = client.open(&[("streamType", "error")]).await.unwrap();
    let stdout = client.open(&[("streamType", "stdout")]).await.unwrap();
    let _stderr = client.open(&[("streamType", "stderr")]).await.unwrap();
    // Nothing is read, so nothing is acknowledged: one window may arrive, then the server must wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stdout.reader.unacknowledged(), 65536, "exactly one window, then the server waits for WINDOW_UPDATE");
    assert_eq!(stdout.reader.max_unacknowledged(), 65536);
    client.disconnect();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_runs_parallel_connections_and_megabytes_through_flow_control() {
    let (server, _) = server().await;
    let port = echo_server().await.to_string();
    let url = server.url_for(Request::PortForward(PortForwardRequest { pod_sandbox_id: "pod1".into() }));
    let client = spdy(&url, &["portforward.k8s.io"]).await;
    assert_eq!(client.protocol(), "portforward.k8s.io");
    let mut transfers = Vec::new();
    for request in 0..4u8 {
        let client = client.clone();
        let port = port.clone();
        transfers.push(tokio::spawn(async move {
            let id = request.to_string();
            let mut error = client.open(&[("streamType", "error"), ("port", &port), ("requestID", &id)]).await.unwrap();
            let data = client.open(&[("streamType", "data"), ("port", &port), ("requestID", &id)]).await.unwrap();
            let payload: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8 ^ request).collect();
            let SpdyStream { reader: mut received, writer, .. } = data;
            let reader = async {
                let mut echoed = Vec::new();
                while echoed.len() < payload.len() {
                    match received.read_chunk().await.unwrap() {
                        Some(chunk) => echoed.extend_from_slice(&chunk),
                        None => break,
                    }
                }
                echoed
            };
            let (written, echoed) = tokio::join!(writer.write(&payload), reader);
            written.unwrap();
            assert!(echoed == payload, "request {request}: {} bytes echoed of {}", echoed.len(), payload.len());
            writer.close().await.unwrap();
            assert_eq!(read_all(&mut error).await, b"", "no error for request {request}");
            assert!(received.max_unacknowledged() <= 65536, "the server kept to the window");
        }));
    }
    for transfer in transfers {
        with_timeout("transfer", transfer).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reports_a_failed_dial_on_the_error_stream() {
    let (server, _) = server().await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    let url = server.url_for(Request::PortForward(PortForwardRequest { pod_sandbox_id: "pod1".into() }));
    let client = spdy(&url, &["portforward.k8s.io"]).await;
    let mut error = client.open(&[("streamType", "error"), ("port", &port), ("requestID", "0")]).await.unwrap();
    let _data = client.open(&[("streamType", "data"), ("port", &port), ("requestID", "0")]).await.unwrap();
    let message = String::from_utf8(with_timeout("error", read_all(&mut error)).await).unwrap();
    assert!(message.contains(&format!("error forwarding port {port} to pod pod1")), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_unknown_expired_and_misrouted_tokens_get_404_and_run_nothing() {
    let config = Config { token_ttl: Duration::from_millis(200), ..Config::default() };
    let (server, backend) = server_with(config).await;
    let upgrade =
        [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v4.channel.k8s.io")];

    let url = server.url_for(exec("true", false, false));
    let (status, _, _first) = http_request(&url, &upgrade).await;
    assert_eq!(status, 101);
    let (status, _, _) = http_request(&url, &upgrade).await;
    assert_eq!(status, 404, "reused token");

    let unknown = format!("http://{}/exec/{}", server.local_addr(), "A".repeat(43));
    assert_eq!(http_request(&unknown, &upgrade).await.0, 404, "unknown token");

    let exec_url = server.url_for(exec("true", false, false));
    let attach_url = exec_url.replace("/exec/", "/attach/");
    assert_eq!(http_request(&attach_url, &upgrade).await.0, 404, "exec token on the attach path");
    assert_eq!(http_request(&exec_url, &upgrade).await.0, 404, "the misrouted try used it up");

    let expired = server.url_for(exec("true", false, false));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http_request(&expired, &upgrade).await.0, 404, "expired token");

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(backend.pids.lock().unwrap().is_empty(), "no process ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_session_leaves_no_session_and_no_process() {
    let (server, backend) = server().await;
    let client = spdy(&server.url_for(exec("sleep 1000", false, false)), V4).await;
    let _error = client.open(&[("streamType", "error")]).await.unwrap();
    let _stdout = client.open(&[("streamType", "stdout")]).await.unwrap();
    let _stderr = client.open(&[("streamType", "stderr")]).await.unwrap();
    let pid = with_timeout("spawn", async {
        loop {
            if let Some(pid) = backend.pids.lock().unwrap().first().copied() {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(server.active_sessions(), 1);
    client.disconnect();
    with_timeout("session end", async {
        while server.active_sessions() != 0 || backend.running.load(Ordering::SeqCst) != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    with_timeout("process gone", async {
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for tokio's orphan reaper: either way not running.
            if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_the_per_container_limit_are_refused_with_429() {
    let config = Config { max_sessions_per_container: 1, ..Config::default() };
    let (server, _) = server_with(config).await;
    let first = spdy(&server.url_for(exec("sleep 1000", false, false)), V4).await;
    let upgrade =
        [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v4.channel.k8s.io")];
    let (status, head, _) = http_request(&server.url_for(exec("true", false, false)), &upgrade).await;
    assert_eq!(status, 429, "{head}");
    first.disconnect();
    with_timeout("first session ends", async {
        while server.active_sessions() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (status, _, _) = http_request(&server.url_for(exec("true", false, false)), &upgrade).await;
    assert_eq!(status, 101, "a slot is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_closed_with_an_error() {
    let config = Config { idle_timeout: Duration::from_millis(300), ..Config::default() };
    let (server, backend) = server_with(config).await;
    let client = spdy(&server.url_for(exec("sleep 1000", false, false)), V4).await;
    let mut error = client.open(&[("streamType", "error")]).await.unwrap();
    let _stdout = client.open(&[("streamType", "stdout")]).await.unwrap();
    let _stderr = client.open(&[("streamType", "stderr")]).await.unwrap();
    let status: serde_json::Value = serde_json::from_slice(&with_timeout("idle", read_all(&mut error)).await).unwrap();
    assert_eq!(status["status"], "Failure");
    assert!(status["message"].as_str().unwrap().contains("idle"), "{status}");
    with_timeout("session end", async {
        while server.active_sessions() != 0 || backend.running.load(Ordering::SeqCst) != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_protocol_is_refused_with_the_ones_we_speak() {
    let (server, _) = server().await;
    let upgrade = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", "v9.example")];
    let (status, head, _) = http_request(&server.url_for(exec("true", false, false)), &upgrade).await;
    assert_eq!(status, 403);
    assert!(head.to_ascii_lowercase().contains("x-accepted-stream-protocol-versions: v5.channel.k8s.io"), "{head}");
    let (status, _, _) = http_request(&server.url_for(exec("true", false, false)), &[]).await;
    assert_eq!(status, 400, "no upgrade headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_connects_stdin_and_stdout_and_reports_success() {
    let (server, _) = server().await;
    let request = Request::Attach(berth_streaming::AttachRequest {
        container_id: "c1".into(),
        tty: false,
        stdin: true,
        stdout: true,
        stderr: false,
    });
    let client = spdy(&server.url_for(request), V4).await;
    let mut error = client.open(&[("streamType", "error")]).await.unwrap();
    let stdin = client.open(&[("streamType", "stdin")]).await.unwrap();
    let mut stdout = client.open(&[("streamType", "stdout")]).await.unwrap();
    stdin.write(b"attached").await.unwrap();
    stdin.close().await.unwrap();
    let (out, status) =
        with_timeout("attach", async { tokio::join!(read_all(&mut stdout), read_all(&mut error)) }).await;
    assert_eq!(out, b"attached");
    assert_eq!(status, br#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_request_did_not_ask_for_is_refused_and_the_session_goes_on() {
    let (server, _) = server().await;
    let client = spdy(&server.url_for(exec("echo ok", false, false)), V4).await;
    let mut error = client.open(&[("streamType", "error")]).await.unwrap();
    // No stdin was asked for: the server resets it (REFUSED_STREAM) and waits for the streams it wants.
    let stdin = client.open(&[("streamType", "stdin")]).await.unwrap();
    with_timeout("reset", async {
        while !client.resets().contains(&(stdin.id, 3)) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut stdout = client.open(&[("streamType", "stdout")]).await.unwrap();
    let _stderr = client.open(&[("streamType", "stderr")]).await.unwrap();
    let (out, status) = with_timeout("exec", async { tokio::join!(read_all(&mut stdout), read_all(&mut error)) }).await;
    assert_eq!(out, b"ok\n");
    assert!(String::from_utf8(status).unwrap().contains("Success"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_error_is_a_failure_status_with_its_message() {
    let (server, _) = server().await;
    let request = Request::Exec(ExecRequest {
        container_id: "missing".into(),
        cmd: vec!["true".into()],
        tty: false,
        stdin: false,
        stdout: true,
        stderr: false,
    });
    let client = spdy(&server.url_for(request), V4).await;
    let mut error = client.open(&[("streamType", "error")]).await.unwrap();
    let _stdout = client.open(&[("streamType", "stdout")]).await.unwrap();
    let status: serde_json::Value = serde_json::from_slice(&with_timeout("exec", read_all(&mut error)).await).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["message"], "container \"missing\" not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_port_forward_session_goes_away() {
    let config = Config { idle_timeout: Duration::from_millis(300), ..Config::default() };
    let (server, _) = server_with(config).await;
    let url = server.url_for(Request::PortForward(PortForwardRequest { pod_sandbox_id: "pod1".into() }));
    let client = spdy(&url, &["portforward.k8s.io"]).await;
    assert_eq!(server.active_sessions(), 1);
    with_timeout("idle close", async {
        while server.active_sessions() != 0 || !client.got_goaway() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
