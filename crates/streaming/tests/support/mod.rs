//! Test clients (SPDY and WebSocket, written here from the protocol descriptions, sharing only the frame
//! codec with the server) and a fake backend that runs real local processes and dials local ports.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use berth_error_kind::ErrorKind;
use berth_streaming::spdy::frame::{FLAG_FIN, Frame, HeaderCodec, Headers, SETTINGS_INITIAL_WINDOW_SIZE};
use berth_streaming::{
    AttachRequest, Backend, BackendError, ExecRequest, ExitStatus, PortStream, Streams, TerminalSize,
};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Runs `sh -c` for exec; attach echoes stdin to stdout; port-forward dials 127.0.0.1.
#[derive(Default, Clone)]
pub struct FakeBackend {
    pub resizes: Arc<Mutex<Vec<TerminalSize>>>,
    pub pids: Arc<Mutex<Vec<u32>>>,
    pub running: Arc<AtomicUsize>,
}

struct Running(Arc<AtomicUsize>);
impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Backend for FakeBackend {
    async fn exec(&self, request: ExecRequest, streams: Streams) -> Result<ExitStatus, BackendError> {
        if request.container_id == "missing" {
            return Err(BackendError::new(ErrorKind::NotFound, "container \"missing\" not found"));
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        let _running = Running(self.running.clone());
        let Streams { stdin, stdout, stderr, resize } = streams;
        if let Some(mut resize) = resize {
            let resizes = self.resizes.clone();
            tokio::spawn(async move {
                while let Some(size) = resize.recv().await {
                    resizes.lock().unwrap().push(size);
                }
            });
        }
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(request.cmd.join(" "))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BackendError::new(ErrorKind::Internal, "spawn failed").with_source(e))?;
        self.pids.lock().unwrap().push(child.id().unwrap());
        let mut child_stdin = child.stdin.take().unwrap();
        let mut child_stdout = child.stdout.take().unwrap();
        let mut child_stderr = child.stderr.take().unwrap();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                let _ = tokio::io::copy(&mut stdin, &mut child_stdin).await;
            }
            drop(child_stdin);
        };
        let out = async move {
            match stdout {
                Some(mut w) => {
                    let _ = tokio::io::copy(&mut child_stdout, &mut w).await;
                    let _ = w.shutdown().await;
                }
                None => {
                    let _ = tokio::io::copy(&mut child_stdout, &mut tokio::io::sink()).await;
                }
            }
        };
        let err = async move {
            match stderr {
                Some(mut w) => {
                    let _ = tokio::io::copy(&mut child_stderr, &mut w).await;
                    let _ = w.shutdown().await;
                }
                None => {
                    let _ = tokio::io::copy(&mut child_stderr, &mut tokio::io::sink()).await;
                }
            }
        };
        // stdin is fed until the process exits, not until the client closes it.
        let feed = tokio::spawn(feed);
        let (_, _, status) = tokio::join!(out, err, child.wait());
        feed.abort();
        let status = status.map_err(|e| BackendError::new(ErrorKind::Internal, "wait failed").with_source(e))?;
        Ok(ExitStatus { code: status.code().unwrap_or(128) })
    }

    async fn attach(&self, _request: AttachRequest, streams: Streams) -> Result<(), BackendError> {
        if let (Some(mut stdin), Some(mut stdout)) = (streams.stdin, streams.stdout) {
            let _ = tokio::io::copy(&mut stdin, &mut stdout).await;
        }
        Ok(())
    }

    async fn port_forward(&self, _pod: &str, port: u16) -> Result<Box<dyn PortStream>, BackendError> {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| BackendError::new(ErrorKind::Unavailable, format!("dial port {port}: {e}")))?;
        Ok(Box::new(tcp))
    }
}

/// A TCP echo server on 127.0.0.1; returns its port.
pub async fn echo_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// Sends a raw HTTP/1.1 request; returns the status code, the response head and the connection.
pub async fn http_request(url: &str, extra_headers: &[(&str, &str)]) -> (u16, String, TcpStream) {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut tcp = TcpStream::connect(authority).await.unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n");
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    // Read byte by byte up to the blank line, so no frame bytes after it are consumed.
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if tcp.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        response.push(byte[0]);
    }
    let text = String::from_utf8(response).unwrap();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text, tcp)
}

/// What one client stream received.
pub struct ClientStream {
    pub id: u32,
    pub data: mpsc::UnboundedReceiver<Bytes>,
    client: SpdyClient,
}

struct ClientState {
    streams: HashMap<u32, mpsc::UnboundedSender<Bytes>>,
    replies: HashMap<u32, oneshot::Sender<()>>,
    windows: HashMap<u32, i64>,
    session_window: i64,
    resets: Vec<(u32, u32)>,
    goaway: bool,
    max_window_seen: HashMap<u32, i64>,
}

/// A minimal SPDY/3.1 client: opens streams, honours the server's windows, acknowledges what it reads.
#[derive(Clone)]
pub struct SpdyClient {
    out: mpsc::UnboundedSender<Frame>,
    state: Arc<Mutex<ClientState>>,
    notify: Arc<tokio::sync::Notify>,
    next_id: Arc<AtomicUsize>,
    pub protocol: String,
    /// When false, the client never sends WINDOW_UPDATE (to see the server stop at the window).
    pub acknowledge: Arc<std::sync::atomic::AtomicBool>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl SpdyClient {
    /// Upgrades `url` to SPDY/3.1 offering `protocols`; panics unless the answer is 101.
    pub async fn connect(url: &str, protocols: &[&str]) -> SpdyClient {
        let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
        for p in protocols {
            headers.push(("X-Stream-Protocol-Version", p));
        }
        let (status, head, tcp) = http_request(url, &headers).await;
        assert_eq!(status, 101, "upgrade answer: {head}");
        let protocol = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-stream-protocol-version: ").map(str::to_owned))
            .unwrap_or_default();
        SpdyClient::start(tcp, protocol)
    }

    /// Runs the client on an already-upgraded byte stream (e.g. SPDY tunnelled in WebSocket).
    pub fn start<IO>(io: IO, protocol: String) -> SpdyClient
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (mut read, mut write) = tokio::io::split(io);
        let (out, mut out_rx) = mpsc::unbounded_channel::<Frame>();
        let state = Arc::new(Mutex::new(ClientState {
            streams: HashMap::new(),
            replies: HashMap::new(),
            windows: HashMap::new(),
            session_window: 65536,
            resets: Vec::new(),
            goaway: false,
            max_window_seen: HashMap::new(),
        }));
        let notify = Arc::new(tokio::sync::Notify::new());
        let writer = tokio::spawn(async move {
            let mut codec = HeaderCodec::new();
            let mut buf = BytesMut::new();
            while let Some(frame) = out_rx.recv().await {
                frame.encode(&mut codec, &mut buf).unwrap();
                if write.write_all(&buf).await.is_err() {
                    return;
                }
                buf.clear();
            }
        });
        let client = SpdyClient {
            out,
            state: state.clone(),
            notify: notify.clone(),
            next_id: Arc::new(AtomicUsize::new(1)),
            protocol,
            acknowledge: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            tasks: Arc::new(Mutex::new(vec![writer])),
        };
        // Say we do flow control, so the server holds itself to our windows.
        client.send(Frame::Settings { flags: 0, entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 65536)] });
        let reader_client = client.clone();
        let reader = tokio::spawn(async move {
            let mut codec = HeaderCodec::new();
            let mut buf = BytesMut::new();
            let mut received: HashMap<u32, i64> = HashMap::new();
            loop {
                while let Some(frame) = Frame::decode(&mut codec, &mut buf).unwrap() {
                    reader_client.on_frame(frame, &mut received);
                }
                match read.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let mut state = state.lock().unwrap();
            state.streams.clear();
            state.replies.clear();
            notify.notify_waiters();
        });
        client.tasks.lock().unwrap().push(reader);
        client
    }

    /// Drops the TCP connection without any goodbye.
    pub fn disconnect(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn on_frame(&self, frame: Frame, received: &mut HashMap<u32, i64>) {
        let mut state = self.state.lock().unwrap();
        match frame {
            Frame::SynReply { stream_id, .. } => {
                if let Some(tx) = state.replies.remove(&stream_id) {
                    let _ = tx.send(());
                }
            }
            Frame::Data { stream_id, flags, data } => {
                // The server must stay within the window we gave it.
                let outstanding = received.entry(stream_id).or_default();
                *outstanding += data.len() as i64;
                let max = state.max_window_seen.entry(stream_id).or_default();
                *max = (*max).max(*outstanding);
                if !data.is_empty() && self.acknowledge.load(Ordering::SeqCst) {
                    *outstanding -= data.len() as i64;
                    let _ = self.out.send(Frame::WindowUpdate { stream_id, delta: data.len() as u32 });
                    let _ = self.out.send(Frame::WindowUpdate { stream_id: 0, delta: data.len() as u32 });
                }
                if let Some(tx) = state.streams.get(&stream_id)
                    && !data.is_empty()
                {
                    let _ = tx.send(data);
                }
                if flags & FLAG_FIN != 0 {
                    state.streams.remove(&stream_id);
                }
            }
            Frame::WindowUpdate { stream_id, delta } => {
                if stream_id == 0 {
                    state.session_window += i64::from(delta);
                } else if let Some(w) = state.windows.get_mut(&stream_id) {
                    *w += i64::from(delta);
                }
                self.notify.notify_waiters();
            }
            Frame::RstStream { stream_id, status } => {
                state.resets.push((stream_id, status));
                state.streams.remove(&stream_id);
                state.replies.remove(&stream_id);
            }
            Frame::GoAway { .. } => state.goaway = true,
            _ => {}
        }
    }

    pub fn send(&self, frame: Frame) {
        let _ = self.out.send(frame);
    }

    /// Opens a stream and waits for the server's SYN_REPLY.
    pub async fn open(&self, headers: &[(&str, &str)]) -> ClientStream {
        let headers: Headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let (tx, data) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let id = {
            // Ids must reach the server in increasing order: allocate and send under one lock.
            let mut state = self.state.lock().unwrap();
            let id = self.next_id.fetch_add(2, Ordering::SeqCst) as u32;
            state.streams.insert(id, tx);
            state.replies.insert(id, reply_tx);
            state.windows.insert(id, 65536);
            self.send(Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, flags: 0, headers });
            id
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), reply_rx)
            .await
            .expect("SYN_REPLY in time")
            .expect("stream not reset");
        ClientStream { id, data, client: self.clone() }
    }

    pub fn resets(&self) -> Vec<(u32, u32)> {
        self.state.lock().unwrap().resets.clone()
    }

    pub fn max_outstanding(&self, id: u32) -> i64 {
        self.state.lock().unwrap().max_window_seen.get(&id).copied().unwrap_or(0)
    }

    pub fn got_goaway(&self) -> bool {
        self.state.lock().unwrap().goaway
    }
}

impl ClientStream {
    /// Sends `data`, within the server's windows.
    pub async fn write(&self, mut data: &[u8]) {
        while !data.is_empty() {
            let notified = self.client.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let n = {
                let mut state = self.client.state.lock().unwrap();
                let session = state.session_window;
                let window = state.windows.get_mut(&self.id).unwrap();
                let n = (data.len() as i64).min(*window).min(session).min(16 * 1024);
                if n > 0 {
                    *window -= n;
                    state.session_window -= n;
                }
                n
            };
            if n <= 0 {
                notified.await;
                continue;
            }
            let (chunk, rest) = data.split_at(n as usize);
            self.client.send(Frame::Data { stream_id: self.id, flags: 0, data: Bytes::copy_from_slice(chunk) });
            data = rest;
        }
    }

    pub fn close(&self) {
        self.client.send(Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Bytes::new() });
    }

    /// Everything until the server's FIN.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(chunk) = self.data.recv().await {
            all.extend_from_slice(&chunk);
        }
        all
    }
}
