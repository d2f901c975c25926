//! The streaming server as a client on its port sees it: a one-shot URL is issued, the fuzzer's bytes
//! follow an upgrade to SPDY/3.1 or WebSocket (exec, attach or port-forward, every protocol version), or are
//! the whole HTTP request. The backend is in-process (echoes, no containers), the server and its sockets
//! are real. Whatever the bytes, once the client has closed its side the server must end the session and
//! close the connection: no session, task or token may outlive its client.
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use berth_streaming::{
    AttachRequest, Backend, BackendError, Config, ExecRequest, ExitStatus, PortForwardRequest, PortStream, Request,
    Server, Streams,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

/// Exec echoes stdin to stdout and exits 3; attach echoes; a forwarded port echoes.
struct Echo;

#[async_trait::async_trait]
impl Backend for Echo {
    async fn exec(&self, _request: ExecRequest, streams: Streams) -> Result<ExitStatus, BackendError> {
        let Streams { stdin, stdout, stderr, resize } = streams;
        if let Some(mut resize) = resize {
            tokio::spawn(async move { while resize.recv().await.is_some() {} });
        }
        if let Some(mut stderr) = stderr {
            let _ = stderr.write_all(b"stderr\n").await;
            let _ = stderr.shutdown().await;
        }
        if let (Some(mut stdin), Some(mut stdout)) = (stdin, stdout) {
            let _ = tokio::io::copy(&mut stdin, &mut stdout).await;
            let _ = stdout.shutdown().await;
        }
        Ok(ExitStatus { code: 3 })
    }

    async fn attach(&self, _request: AttachRequest, streams: Streams) -> Result<(), BackendError> {
        if let (Some(mut stdin), Some(mut stdout)) = (streams.stdin, streams.stdout) {
            let _ = tokio::io::copy(&mut stdin, &mut stdout).await;
        }
        Ok(())
    }

    async fn port_forward(&self, _pod: &str, port: u16) -> Result<Box<dyn PortStream>, BackendError> {
        if port == 1 {
            return Err(BackendError::new(berth_error_kind::ErrorKind::Unavailable, "port 1 refuses"));
        }
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let (mut read, mut write) = tokio::io::split(theirs);
            let _ = tokio::io::copy(&mut read, &mut write).await;
        });
        Ok(Box::new(ours))
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    server: Server,
    addr: SocketAddr,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let config = Config {
            idle_timeout: Duration::from_secs(5),
            stream_creation_timeout: Duration::from_secs(1),
            token_ttl: Duration::from_secs(5),
            max_sessions_per_container: 1000,
            close_grace: Duration::from_millis(100),
            ..Config::default()
        };
        let server = runtime
            .block_on(Server::bind_with("127.0.0.1:0".parse().unwrap(), Echo, config))
            .expect("bind the streaming server on 127.0.0.1");
        let addr = server.local_addr();
        Harness { runtime, server, addr }
    })
}

const SPDY_COMMAND: &[&str] =
    &["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];
const WS_COMMAND: &[&str] =
    &["v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io", "channel.k8s.io", "base64.channel.k8s.io"];
const WS_PORT_FORWARD: &[&str] =
    &["SPDY/3.1+portforward.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io", "channel.k8s.io"];

/// The request the first byte picks, and the HTTP head that upgrades it (`None`: the input is the request).
fn scenario(selector: u8) -> (Request, Option<String>) {
    let tty = selector & 0x40 != 0;
    let stderr = selector & 0x20 == 0;
    let version = usize::from(selector >> 2 & 0x7);
    let exec = || {
        Request::Exec(ExecRequest {
            container_id: "c".into(),
            cmd: vec!["cat".into()],
            tty,
            stdin: true,
            stdout: true,
            stderr: stderr && !tty,
        })
    };
    let attach =
        || Request::Attach(AttachRequest { container_id: "c".into(), tty, stdin: true, stdout: true, stderr: false });
    let port_forward = || Request::PortForward(PortForwardRequest { pod_sandbox_id: "p".into() });
    let spdy = |protocol: &str| {
        format!("Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n")
    };
    let websocket = |protocol: &str| {
        format!(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
        )
    };
    let pick = |list: &[&'static str]| list[version % list.len()];
    match selector & 0x3 {
        0 if selector & 0x80 == 0 => (exec(), Some(spdy(pick(SPDY_COMMAND)))),
        0 => (exec(), Some(websocket(pick(WS_COMMAND)))),
        1 if selector & 0x80 == 0 => (attach(), Some(spdy(pick(SPDY_COMMAND)))),
        1 => (attach(), Some(websocket(pick(WS_COMMAND)))),
        2 if selector & 0x80 == 0 => (port_forward(), Some(spdy("portforward.k8s.io"))),
        2 => (port_forward(), Some(websocket(pick(WS_PORT_FORWARD)))),
        _ => (exec(), None),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let harness = harness();
    let (request, upgrade) = scenario(selector);
    let url = harness.server.url_for(request);
    let path = &url[url.find("://").unwrap() + 3..];
    let path = &path[path.find('/').unwrap()..];
    let mut wire = Vec::new();
    match upgrade {
        Some(head) => {
            let method = if head.contains("websocket") { "GET" } else { "POST" };
            let query = if path.starts_with("/portforward/") { "?port=80&port=1" } else { "" };
            wire.extend_from_slice(format!("{method} {path}{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}").as_bytes());
            wire.extend_from_slice(body);
        }
        // The fuzzer writes the request; `TOKEN` stands for the issued URL's path.
        None => {
            let mut rest = body;
            while let Some(at) = rest.windows(5).position(|w| w == b"TOKEN") {
                wire.extend_from_slice(&rest[..at]);
                wire.extend_from_slice(path.as_bytes());
                rest = &rest[at + 5..];
            }
            wire.extend_from_slice(rest);
        }
    }
    let mut tcp = TcpStream::connect(harness.addr).expect("connect to the streaming server");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may close before it has read everything (a refused upgrade): a reset is an answer too.
    let _ = tcp.write_all(&wire);
    let _ = tcp.shutdown(Shutdown::Write);
    let mut sink = [0u8; 64 * 1024];
    loop {
        match tcp.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                panic!("the server kept the connection open 20 s after its client closed its side")
            }
            Err(_) => break,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while harness.server.active_sessions() != 0 {
        assert!(Instant::now() < deadline, "a session outlived its connection by 5 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = &harness.runtime;
});
