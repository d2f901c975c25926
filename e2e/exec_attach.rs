//! Exec and Attach through the daemon: the CRI call hands out a one-shot URL, and a WebSocket client
//! (`v5.channel.k8s.io`, as kubectl 1.30+ speaks it) runs the session on the streaming server, which runs it
//! through the pod's shim. Checked: stdin, stdout and stderr kept apart, the exit code in the v4+ Status,
//! a tty with its initial and later sizes, attach to a running container's output and stdin, detach and a
//! client that goes away mid-exec leave the container running and no process behind.

use std::time::{Duration, Instant};

use berth::cli::client::Client;
use berth::cri::v1::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tonic::Code;

use crate::support::cri::{container_config, node_network, pull, run_container, run_pod, status, stop_and_remove_pod};
use crate::support::registry::TestRegistry;
use crate::support::{Daemon, DaemonDirs};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// A connection to the streaming server, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Socket = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// A WebSocket remotecommand session (`v5.channel.k8s.io`).
struct Session {
    socket: Socket,
}

/// What a session produced by the time the server closed it.
#[derive(Debug, Default)]
struct Transcript {
    stdout: String,
    stderr: String,
    /// The Status JSON from the error channel.
    status: Option<serde_json::Value>,
}

impl Session {
    async fn open(url: &str) -> Session {
        Session::open_with(url, None).await
    }

    /// Over plain HTTP; the handshake's error if the server refuses.
    async fn try_open(url: &str) -> Result<Session, String> {
        let mut request = url.replacen("http://", "ws://", 1).into_client_request().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", "v5.channel.k8s.io".parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(request.uri().authority().unwrap().to_string()).await.unwrap();
        let io: Box<dyn Io> = Box::new(tcp);
        let (socket, _) = tokio_tungstenite::client_async(request, io).await.map_err(|e| e.to_string())?;
        Ok(Session { socket })
    }

    /// Over TLS, trusting only the CA certificate `ca` (a PEM file).
    async fn open_tls(url: &str, ca: &std::path::Path) -> Session {
        Session::try_open_tls(url, ca, None).await.expect("WebSocket handshake")
    }

    /// Over TLS, presenting `client` (certificate and key PEM files) if given; the handshake's error if the
    /// server refuses.
    async fn try_open_tls(
        url: &str,
        ca: &std::path::Path,
        client: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Session, String> {
        let ws_url = url.replacen("https://", "wss://", 1);
        let mut request = ws_url.into_client_request().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", "v5.channel.k8s.io".parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(request.uri().authority().unwrap().to_string()).await.unwrap();
        let tls = tls_connect(tcp, ca, client).await.map_err(|e| format!("TLS: {e}"))?;
        let io: Box<dyn Io> = Box::new(tls);
        let handshake = tokio::time::timeout(Duration::from_secs(15), tokio_tungstenite::client_async(request, io));
        let (socket, _) = handshake.await.map_err(|_| "timed out".to_owned())?.map_err(|e| e.to_string())?;
        Ok(Session { socket })
    }

    async fn open_with(url: &str, ca: Option<&std::path::Path>) -> Session {
        let ws_url = url.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1);
        let mut request = ws_url.into_client_request().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", "v5.channel.k8s.io".parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(request.uri().authority().unwrap().to_string()).await.unwrap();
        let io: Box<dyn Io> = match ca {
            None => Box::new(tcp),
            Some(ca) => Box::new(tls_connect(tcp, ca, None).await.expect("TLS handshake")),
        };
        let (socket, response) = tokio_tungstenite::client_async(request, io).await.expect("WebSocket handshake");
        assert_eq!(response.headers().get("sec-websocket-protocol").unwrap(), "v5.channel.k8s.io");
        Session { socket }
    }

    async fn send(&mut self, channel: u8, data: &[u8]) {
        let mut message = vec![channel];
        message.extend_from_slice(data);
        self.socket.send(Message::binary(message)).await.expect("send to the session");
    }

    async fn stdin(&mut self, data: &[u8]) {
        self.send(STDIN, data).await;
    }

    async fn close_stdin(&mut self) {
        self.send(CLOSE, &[STDIN]).await;
    }

    async fn resize(&mut self, width: u16, height: u16) {
        self.send(RESIZE, format!(r#"{{"Width":{width},"Height":{height}}}"#).as_bytes()).await;
    }

    /// Reads until stdout contains `needle` (or the session ends); returns all stdout so far.
    async fn read_stdout_until(&mut self, needle: &str, transcript: &mut Transcript) {
        while !transcript.stdout.contains(needle) {
            if !self.read_one(transcript).await {
                return;
            }
        }
    }

    /// One message into the transcript; false when the session has ended.
    async fn read_one(&mut self, transcript: &mut Transcript) -> bool {
        let message = tokio::time::timeout(Duration::from_secs(20), self.socket.next())
            .await
            .expect("the session answers within 20 s");
        match message {
            Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                let text = String::from_utf8_lossy(&data[1..]).into_owned();
                match data[0] {
                    STDOUT => transcript.stdout.push_str(&text),
                    STDERR => transcript.stderr.push_str(&text),
                    ERROR => transcript.status = Some(serde_json::from_str(&text).expect("a Status JSON")),
                    _ => {}
                }
                true
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => false,
            Some(Ok(_)) => true,
        }
    }

    async fn finish(mut self) -> Transcript {
        let mut transcript = Transcript::default();
        while self.read_one(&mut transcript).await {}
        transcript
    }
}

async fn tls_connect(
    tcp: tokio::net::TcpStream,
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap()).unwrap()
        }
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await
}

fn exit_code_of(status: &serde_json::Value) -> i64 {
    match status["status"].as_str() {
        Some("Success") => 0,
        _ => {
            assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
            let causes = status["details"]["causes"].as_array().expect("causes");
            let cause = causes.iter().find(|c| c["reason"] == "ExitCode").expect("an ExitCode cause");
            cause["message"].as_str().unwrap().parse().unwrap()
        }
    }
}

struct Rig {
    _dirs: DaemonDirs,
    _daemon: Daemon,
    client: Client,
    pod: String,
    pod_config: PodSandboxConfig,
}

async fn rig(name: &str) -> Rig {
    rig_with(name, "").await
}

/// A daemon with `extra` appended to its config, and a pod on the node's network.
async fn rig_with(name: &str, extra: &str) -> Rig {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let dirs = DaemonDirs::new();
    dirs.write_config(&format!("[registries.\"{}\"]\ninsecure = true\n{extra}", registry.address));
    let daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let pod_config = crate::support::cri::pod_config(name, &dirs.path().join("logs"), node_network());
    let pod = run_pod(&mut client, &pod_config).await;
    Rig { _dirs: dirs, _daemon: daemon, client, pod, pod_config }
}

impl Rig {
    async fn container(&mut self, name: &str, command: &[&str], tweak: impl FnOnce(&mut ContainerConfig)) -> String {
        let registry = TestRegistry::get();
        let mut config = container_config(name, &registry.image("busybox").reference, command);
        tweak(&mut config);
        run_container(&mut self.client, &self.pod, &self.pod_config, config).await
    }

    async fn exec_url(&mut self, id: &str, cmd: &[&str], tty: bool, stdin: bool) -> String {
        self.client
            .runtime
            .exec(ExecRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty,
                stdin,
                stdout: true,
                stderr: !tty,
            })
            .await
            .expect("Exec")
            .into_inner()
            .url
    }

    async fn attach_url(&mut self, id: &str, tty: bool, stdin: bool) -> String {
        self.client
            .runtime
            .attach(AttachRequest { container_id: id.into(), stdin, tty, stdout: true, stderr: !tty })
            .await
            .expect("Attach")
            .into_inner()
            .url
    }

    async fn end(mut self) {
        stop_and_remove_pod(&mut self.client, &self.pod).await;
    }
}

/// Whether a host process's command line contains `marker`.
fn host_process_with(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(marker))
            .unwrap_or(false)
    })
}

async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn exec_keeps_stdin_stdout_and_stderr_apart_and_reports_the_exit_code() {
    let mut rig = rig("exec-pipes").await;
    let id = rig.container("main", &["sleep", "3600"], |_| {}).await;

    let url = rig.exec_url(&id, &["sh", "-c", "cat; echo to-stderr >&2; exit 3"], false, true).await;
    let mut session = Session::open(&url).await;
    session.stdin(b"hello ").await;
    session.stdin(b"through stdin\n").await;
    session.close_stdin().await;
    let transcript = session.finish().await;
    assert_eq!(transcript.stdout, "hello through stdin\n");
    assert_eq!(transcript.stderr, "to-stderr\n");
    assert_eq!(exit_code_of(transcript.status.as_ref().expect("a status")), 3);

    // Success is reported as such; the URL was single-use.
    let url = rig.exec_url(&id, &["echo", "ok"], false, false).await;
    let transcript = Session::open(&url).await.finish().await;
    assert_eq!(transcript.stdout, "ok\n");
    assert_eq!(exit_code_of(transcript.status.as_ref().unwrap()), 0);
    let mut request = url.replacen("http://", "ws://", 1).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "v5.channel.k8s.io".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(request.uri().authority().unwrap().to_string()).await.unwrap();
    assert!(tokio_tungstenite::client_async(request, tcp).await.is_err(), "a used exec token was accepted again");

    // Requests the CRI refuses before any URL exists.
    let refused = |r: Result<tonic::Response<ExecResponse>, tonic::Status>| r.unwrap_err().code();
    let both = ExecRequest {
        container_id: id.clone(),
        cmd: vec!["true".into()],
        tty: true,
        stderr: true,
        ..Default::default()
    };
    assert_eq!(refused(rig.client.runtime.exec(both).await), Code::InvalidArgument);
    let none = ExecRequest { container_id: id.clone(), cmd: vec!["true".into()], ..Default::default() };
    assert_eq!(refused(rig.client.runtime.exec(none).await), Code::InvalidArgument);
    let unknown =
        ExecRequest { container_id: "nope".into(), cmd: vec!["true".into()], stdout: true, ..Default::default() };
    assert_eq!(refused(rig.client.runtime.exec(unknown).await), Code::NotFound);
    rig.end().await;
}

#[tokio::test]
async fn a_tty_exec_starts_with_the_clients_size_and_follows_resizes() {
    let mut rig = rig("exec-tty").await;
    let id = rig.container("main", &["sleep", "3600"], |_| {}).await;

    let url = rig.exec_url(&id, &["sh", "-c", "stty size; read line; stty size"], true, true).await;
    let mut session = Session::open(&url).await;
    session.resize(100, 40).await;
    let mut transcript = Transcript::default();
    session.read_stdout_until("40 100", &mut transcript).await;
    assert!(transcript.stdout.contains("40 100"), "initial size: {:?}", transcript.stdout);
    session.resize(120, 30).await;
    // Sizes and stdin are separate streams with no order between them (in the protocol as in kubelet):
    // give the resize time to land before the input that makes the shell look.
    tokio::time::sleep(Duration::from_millis(300)).await;
    session.stdin(b"go\r").await;
    session.read_stdout_until("30 120", &mut transcript).await;
    assert!(transcript.stdout.contains("30 120"), "after a resize: {:?}", transcript.stdout);
    let rest = session.finish().await;
    assert_eq!(exit_code_of(rest.status.as_ref().expect("a status")), 0);
    rig.end().await;
}

#[tokio::test]
async fn attach_sees_output_from_now_on_writes_stdin_and_detaching_leaves_the_container_running() {
    let mut rig = rig("attach").await;
    let id = rig
        .container(
            "echoer",
            &["sh", "-c", "echo started; while read line; do echo got:$line; echo err:$line >&2; done"],
            |c| {
                c.stdin = true;
            },
        )
        .await;

    for round in ["first", "second"] {
        let url = rig.attach_url(&id, false, true).await;
        let mut session = Session::open(&url).await;
        session.stdin(format!("{round}\n").as_bytes()).await;
        let mut transcript = Transcript::default();
        while !(transcript.stdout.contains(&format!("got:{round}"))
            && transcript.stderr.contains(&format!("err:{round}")))
        {
            assert!(session.read_one(&mut transcript).await, "the attach ended early: {transcript:?}");
        }
        // Output from before the attach is not replayed.
        assert!(!transcript.stdout.contains("started"), "{transcript:?}");
        drop(session);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let state = status(&mut rig.client, &id).await.state;
        assert_eq!(state, ContainerState::ContainerRunning as i32, "detaching stopped the container");
    }

    // Two clients attached at once both see what either one's input caused.
    let (first_url, second_url) = (rig.attach_url(&id, false, true).await, rig.attach_url(&id, false, false).await);
    let (mut writer, mut listener) = (Session::open(&first_url).await, Session::open(&second_url).await);
    // The listener's attach reaches the shim a moment after its handshake, and it sees output from then on
    // only: the writer repeats its line until the listener has seen one.
    let mut heard = Transcript::default();
    for _ in 0..40 {
        writer.stdin(b"both\n").await;
        let _ =
            tokio::time::timeout(Duration::from_millis(250), listener.read_stdout_until("got:both", &mut heard)).await;
        if heard.stdout.contains("got:both") {
            break;
        }
    }
    assert!(heard.stdout.contains("got:both"), "the second client saw nothing: {heard:?}");
    let mut transcript = Transcript::default();
    writer.read_stdout_until("got:both", &mut transcript).await;
    assert!(transcript.stdout.contains("got:both"), "{transcript:?}");
    drop((writer, listener));

    // The log has what every attach wrote to stdin, in order.
    let log = std::fs::read_to_string(rig._dirs.path().join("logs/echoer/0.log")).unwrap();
    let first = log.find("got:first").expect("first line in the log");
    let second = log.find("got:second").expect("second line in the log");
    assert!(first < second, "{log}");
    rig.end().await;
}

/// A `stdin_once` container echoing its stdin until EOF, then saying so; and an attach to it that has
/// written `line` and seen the echo.
async fn stdin_once_reader(rig: &mut Rig, name: &str, line: &str) -> (String, Session, Transcript) {
    let id = rig
        .container(
            name,
            &["sh", "-c", "while read line; do echo got:$line; done; echo stdin-closed; sleep 3600"],
            |c| {
                c.stdin = true;
                c.stdin_once = true;
            },
        )
        .await;
    let url = rig.attach_url(&id, false, true).await;
    let mut session = Session::open(&url).await;
    session.stdin(format!("{line}\n").as_bytes()).await;
    let mut transcript = Transcript::default();
    session.read_stdout_until(&format!("got:{line}"), &mut transcript).await;
    assert!(transcript.stdout.contains(&format!("got:{line}")), "{transcript:?}");
    (id, session, transcript)
}

#[tokio::test]
async fn stdin_once_closes_the_containers_stdin_when_the_first_attachs_stdin_or_session_ends() {
    let mut rig = rig("attach-once").await;
    let (id, mut session, mut transcript) = stdin_once_reader(&mut rig, "reader", "only").await;
    // The client's stdin ends (`kubectl attach -i` with its input done): the container's stdin ends too.
    session.close_stdin().await;
    session.read_stdout_until("stdin-closed", &mut transcript).await;
    assert!(transcript.stdout.contains("stdin-closed"), "{transcript:?}");
    drop(session);
    assert_eq!(status(&mut rig.client, &id).await.state, ContainerState::ContainerRunning as i32);

    // An attach that ends without closing its stdin closes the container's too.
    let (_, session, _) = stdin_once_reader(&mut rig, "dropper", "once").await;
    drop(session);
    let log_path = rig._dirs.path().join("logs/dropper/0.log");
    eventually("the container sees EOF on stdin", Duration::from_secs(10), || {
        std::fs::read_to_string(&log_path).map(|l| l.contains("stdin-closed")).unwrap_or(false)
    })
    .await;
    rig.end().await;
}

#[tokio::test]
async fn a_client_that_goes_away_mid_exec_kills_only_its_process() {
    let mut rig = rig("exec-gone").await;
    let id = rig.container("main", &["sleep", "3600"], |_| {}).await;
    let url = rig.exec_url(&id, &["sh", "-c", "echo up; exec sleep 4242"], false, false).await;
    let mut session = Session::open(&url).await;
    let mut transcript = Transcript::default();
    session.read_stdout_until("up", &mut transcript).await;
    assert!(host_process_with("sleep 4242"), "the exec'd process runs");
    drop(session);
    eventually("the exec'd process is killed", Duration::from_secs(10), || !host_process_with("sleep 4242")).await;
    assert_eq!(status(&mut rig.client, &id).await.state, ContainerState::ContainerRunning as i32);
    rig.end().await;
}

#[tokio::test]
async fn the_streaming_server_serves_https_when_given_a_certificate() {
    let certs = tempfile::Builder::new().prefix("berth-streaming-tls.").tempdir().unwrap();
    crate::support::tls::make_server_certificate(certs.path());
    let (cert, key) = (certs.path().join("server.crt"), certs.path().join("server.key"));

    // A certificate that cannot be read stops the daemon at start, naming the file.
    let dirs = DaemonDirs::new();
    let missing = certs.path().join("missing.crt");
    dirs.write_config(&format!("[streaming]\ntls_cert = {missing:?}\ntls_key = {key:?}\n"));
    let output = dirs.serve_command().output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("streaming TLS: {}", missing.display())), "{stderr}");
    assert!(!dirs.socket().exists(), "the CRI socket was served without the streaming server");

    let mut rig = rig_with("exec-tls", &format!("[streaming]\ntls_cert = {cert:?}\ntls_key = {key:?}\n")).await;
    let id = rig.container("main", &["sleep", "3600"], |_| {}).await;
    let url = rig.exec_url(&id, &["echo", "over", "tls"], false, false).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let transcript = Session::open_tls(&url, &certs.path().join("ca.crt")).await.finish().await;
    assert_eq!(transcript.stdout, "over tls\n");
    assert_eq!(exit_code_of(transcript.status.as_ref().unwrap()), 0);

    // Plain HTTP on the TLS port gets no session.
    let url = rig.exec_url(&id, &["echo", "plain"], false, false).await;
    let mut request = url.replacen("https://", "ws://", 1).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "v5.channel.k8s.io".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(request.uri().authority().unwrap().to_string()).await.unwrap();
    let plain = tokio::time::timeout(Duration::from_secs(15), tokio_tungstenite::client_async(request, tcp)).await;
    assert!(!matches!(plain, Ok(Ok(_))), "a plain-text client got a session on the TLS port");
    rig.end().await;
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_it_signed_get_a_session() {
    let certs = tempfile::Builder::new().prefix("berth-streaming-mtls.").tempdir().unwrap();
    crate::support::tls::make_server_certificate(certs.path());
    crate::support::tls::make_client_certificate(certs.path());
    let other = tempfile::Builder::new().prefix("berth-streaming-other-ca.").tempdir().unwrap();
    crate::support::tls::make_server_certificate(other.path());
    crate::support::tls::make_client_certificate(other.path());
    let path = |name: &str| certs.path().join(name);
    let config = format!(
        "[streaming]\ntls_cert = {:?}\ntls_key = {:?}\ntls_client_ca = {:?}\n",
        path("server.crt"),
        path("server.key"),
        path("ca.crt")
    );
    let mut rig = rig_with("exec-mtls", &config).await;
    let id = rig.container("main", &["sleep", "3600"], |_| {}).await;

    let url = rig.exec_url(&id, &["echo", "with", "a", "client", "certificate"], false, false).await;
    let client = (path("client.crt"), path("client.key"));
    let session = Session::try_open_tls(&url, &path("ca.crt"), Some((&client.0, &client.1))).await;
    let transcript = session.expect("a client with a certificate the CA signed").finish().await;
    assert_eq!(transcript.stdout, "with a client certificate\n");

    // No certificate, or one another CA signed: the TLS handshake fails, so no request is ever read.
    let url = rig.exec_url(&id, &["echo", "anonymous"], false, false).await;
    let refused = Session::try_open_tls(&url, &path("ca.crt"), None).await;
    assert!(refused.is_err(), "a client without a certificate got a session");
    let (other_cert, other_key) = (other.path().join("client.crt"), other.path().join("client.key"));
    let url = rig.exec_url(&id, &["echo", "stranger"], false, false).await;
    let refused = Session::try_open_tls(&url, &path("ca.crt"), Some((&other_cert, &other_key))).await;
    assert!(refused.is_err(), "a client with another CA's certificate got a session");
    assert!(!host_process_with("echo anonymous") && !host_process_with("echo stranger"));
    rig.end().await;
}

#[tokio::test]
async fn a_streaming_url_serves_only_the_one_session_it_was_issued_for() {
    let mut rig = rig_with("exec-misuse", "").await;
    let id = rig.container("main", &["sleep", "3600"], |_| {}).await;
    let upgrade = [("Upgrade", "websocket"), ("Sec-WebSocket-Protocol", "v5.channel.k8s.io")];
    // An exec URL taken to the attach or port-forward endpoint: refused, and used up by the try.
    for other in ["attach", "portforward"] {
        let url = rig.exec_url(&id, &["echo", "misused"], false, false).await;
        let (base, token) = url.rsplit_once("/exec/").expect("an exec URL");
        let address = base.trim_start_matches("http://").to_owned();
        let path = format!("/{other}/{token}");
        let response =
            tokio::task::spawn_blocking(move || crate::support::http::get(&address, &path, &upgrade)).await.unwrap();
        assert_eq!(response.status, 404, "an exec token on /{other}/");
        let again = tokio::time::timeout(Duration::from_secs(15), Session::try_open(&url)).await.unwrap();
        assert!(again.is_err(), "the token still worked on /exec/ after a try on /{other}/");
    }
    // A made-up token, and a token's prefix.
    let url = rig.exec_url(&id, &["echo", "guessed"], false, false).await;
    let (base, token) = url.rsplit_once("/exec/").unwrap();
    for guess in
        [format!("{base}/exec/{}", "A".repeat(token.len())), format!("{base}/exec/{}", &token[..token.len() / 2])]
    {
        assert!(Session::try_open(&guess).await.is_err(), "{guess} got a session");
    }
    assert!(!host_process_with("echo misused") && !host_process_with("echo guessed"));
    rig.end().await;
}

#[tokio::test]
async fn sessions_beyond_the_per_container_limit_are_refused() {
    let mut rig = rig_with("exec-limit", "[streaming]\nmax_sessions_per_container = 1\n").await;
    let id = rig.container("main", &["sleep", "3600"], |_| {}).await;
    let url = rig.exec_url(&id, &["sh", "-c", "echo first; exec sleep 4343"], false, false).await;
    let mut first = Session::open(&url).await;
    let mut transcript = Transcript::default();
    first.read_stdout_until("first", &mut transcript).await;

    let url = rig.exec_url(&id, &["echo", "second"], false, false).await;
    let mut request = url.replacen("http://", "ws://", 1).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "v5.channel.k8s.io".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(request.uri().authority().unwrap().to_string()).await.unwrap();
    match tokio_tungstenite::client_async(request, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429, "{response:?}");
        }
        other => panic!("a second session was not refused: {:?}", other.map(|(_, r)| r)),
    }
    drop(first);
    eventually("the first exec is killed", Duration::from_secs(10), || !host_process_with("sleep 4343")).await;
    rig.end().await;
}
