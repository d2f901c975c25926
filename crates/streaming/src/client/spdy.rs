//! The SPDY/3.1 client: a session on an upgraded connection (streams we open, the peer's SYN_REPLY and
//! RST_STREAM, flow control both ways), and remotecommand and port-forward on top.
//!
//! It shares only the frame codec and the wire loops (`spdy::wire`: decoding frames off the read half,
//! batching queued frames onto the write half) with the server (`spdy::conn` is the server's session); the
//! session rules are its own, so this crate's tests drive the server with an independent implementation
//! of them.
//!
//! Flow control: what we receive is acknowledged (WINDOW_UPDATE, stream and session) when the consumer
//! takes it, so a peer that honours windows never has more than 64 KiB in flight per stream. What we send
//! is held to the peer's windows only once it shows it does flow control (SETTINGS or WINDOW_UPDATE):
//! moby/spdystream, kubelet's server, does neither and ignores windows, and holding it to 64 KiB would
//! stall every stream after the first window. Such a peer gets TCP backpressure, as kubectl gives it.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use super::{ClientError, CommandIo, http_upgrade, refused};
use crate::spdy::frame::{self, FLAG_FIN, Frame, Headers, SETTINGS_INITIAL_WINDOW_SIZE};
use crate::spdy::wire::{self, FrameReader, Outgoing};

/// The remotecommand protocol we ask for: v4 reports exit codes as a `Status` (every kubelet since 1.5).
pub const REMOTE_COMMAND_PROTOCOLS: &[&str] = &["v4.channel.k8s.io"];
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &["portforward.k8s.io"];

/// The window we give the peer per stream (and for the session); SPDY/3's default.
const WINDOW: i64 = 64 * 1024;
/// Largest DATA frame we send.
const MAX_DATA_FRAME: usize = 32 * 1024;
/// Bytes a stream's consumer may leave unread before the reader waits for it: above our window, so a peer
/// that honours it never makes the reader wait (the reader would then not see the WINDOW_UPDATEs a writer
/// on another stream waits for); a peer that ignores windows gets TCP backpressure.
const QUEUE_BYTES: usize = 256 * 1024;
/// How long the peer has to answer a SYN_STREAM.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What arrives on a stream's queue.
enum Item {
    Data(Bytes, OwnedSemaphorePermit),
    /// The peer's FIN: the stream ended cleanly (a queue that closes without it was reset or lost).
    Fin,
}

/// Per-stream receive counters, shared by the frame reader and the stream's consumer.
#[derive(Default)]
struct Received {
    /// Bytes received and not yet acknowledged.
    unacknowledged: AtomicI64,
    /// The most that ever was: a peer honouring our window keeps it at or under [`WINDOW`].
    max_unacknowledged: AtomicI64,
}

struct StreamState {
    /// Where received data goes; `None` once the peer finished or the consumer went away.
    queue: Option<(mpsc::UnboundedSender<Item>, Arc<Semaphore>)>,
    received: Arc<Received>,
    reply: Option<oneshot::Sender<Result<(), u32>>>,
    /// Our send window; `None` once we finished or the stream was reset.
    send_window: Option<i64>,
}

struct State {
    next_id: u32,
    streams: HashMap<u32, StreamState>,
    session_window: i64,
    initial_window: i64,
    peer_flow_control: bool,
    resets: Vec<(u32, u32)>,
    goaway: bool,
}

struct Shared {
    out: mpsc::Sender<Outgoing>,
    state: Mutex<State>,
    /// Windows grew or streams closed: writers waiting for window look again.
    flow_changed: Notify,
    closed: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A client SPDY session. Cheap to clone; every clone is the same session.
#[derive(Clone)]
pub struct SpdyConnection {
    shared: Arc<Shared>,
    protocol: String,
}

/// A stream we opened (the peer has replied to it).
pub struct SpdyStream {
    pub id: u32,
    pub reader: SpdyReader,
    pub writer: SpdyWriter,
}

/// The receiving half of a stream.
pub struct SpdyReader {
    id: u32,
    rx: mpsc::UnboundedReceiver<Item>,
    received: Arc<Received>,
    finished: bool,
    shared: Arc<Shared>,
}

/// The sending half of a stream; cheap to clone.
#[derive(Clone)]
pub struct SpdyWriter {
    id: u32,
    shared: Arc<Shared>,
}

impl SpdyConnection {
    /// Upgrades `url` to SPDY/3.1 offering `protocols` (in order of preference) as
    /// `X-Stream-Protocol-Version`.
    pub async fn connect(url: &str, protocols: &[&str]) -> Result<SpdyConnection, ClientError> {
        let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
        headers.extend(protocols.iter().map(|p| ("X-Stream-Protocol-Version", *p)));
        let response = http_upgrade(url, &headers).await?;
        if response.status != 101 {
            return Err(refused(response).await);
        }
        let protocol = response.header("X-Stream-Protocol-Version").unwrap_or("").to_owned();
        if !protocols.is_empty() && !protocols.contains(&protocol.as_str()) {
            return Err(ClientError::Protocol(protocol));
        }
        Ok(SpdyConnection::start(response.connection, protocol))
    }

    /// Runs a session on an already-upgraded byte stream (e.g. SPDY tunnelled in WebSocket).
    pub fn start<IO>(io: IO, protocol: String) -> SpdyConnection
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out, out_rx) = mpsc::channel(256);
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            out,
            state: Mutex::new(State {
                next_id: 1,
                streams: HashMap::new(),
                session_window: WINDOW,
                initial_window: WINDOW,
                peer_flow_control: false,
                resets: Vec::new(),
                goaway: false,
            }),
            flow_changed: Notify::new(),
            closed,
            tasks: Mutex::new(Vec::new()),
        });
        // Say we do flow control, so a server that can hold itself to our windows does.
        let _ = shared.out.try_send(Outgoing::Frame(Frame::Settings {
            flags: 0,
            entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, WINDOW as u32)],
        }));
        let writer = tokio::spawn(write_frames(write, out_rx, shared.clone()));
        let reader = tokio::spawn(read_frames(read, shared.clone()));
        shared.tasks.lock().unwrap().extend([writer, reader]);
        SpdyConnection { shared, protocol }
    }

    /// The protocol the server chose (`X-Stream-Protocol-Version` of its answer).
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Opens a stream with `headers` and waits for the peer's SYN_REPLY.
    pub async fn open(&self, headers: &[(&str, &str)]) -> Result<SpdyStream, ClientError> {
        let headers: Headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let (queue_tx, rx) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let received = Arc::new(Received::default());
        let id = {
            // Ids must reach the peer in increasing order: allocate and queue the frame under one lock.
            let mut state = self.shared.state.lock().unwrap();
            if *self.shared.closed.borrow() || state.goaway {
                return Err(ClientError::ConnectionLost);
            }
            let id = state.next_id;
            state.next_id += 2;
            let send_window = Some(state.initial_window);
            state.streams.insert(
                id,
                StreamState {
                    queue: Some((queue_tx, Arc::new(Semaphore::new(QUEUE_BYTES)))),
                    received: received.clone(),
                    reply: Some(reply_tx),
                    send_window,
                },
            );
            let syn = Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, flags: 0, headers };
            // A full queue means the connection is stuck; treat the stream as refused rather than block here.
            if self.shared.out.try_send(Outgoing::Frame(syn)).is_err() {
                state.streams.remove(&id);
                return Err(ClientError::ConnectionLost);
            }
            id
        };
        match tokio::time::timeout(REPLY_TIMEOUT, reply_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(status))) => return Err(ClientError::StreamRefused(status)),
            Ok(Err(_)) | Err(_) => return Err(ClientError::ConnectionLost),
        }
        let shared = self.shared.clone();
        Ok(SpdyStream {
            id,
            reader: SpdyReader { id, rx, received, finished: false, shared: shared.clone() },
            writer: SpdyWriter { id, shared },
        })
    }

    /// The streams the peer reset, with the RST_STREAM status, in order.
    pub fn resets(&self) -> Vec<(u32, u32)> {
        self.shared.state.lock().unwrap().resets.clone()
    }

    /// Whether the peer sent GOAWAY.
    pub fn got_goaway(&self) -> bool {
        self.shared.state.lock().unwrap().goaway
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Resolves when the connection is gone.
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Ends the session politely: GOAWAY, flush, shut our write half; waits (up to 2 s) for the peer to
    /// close, then drops the connection.
    pub async fn close(&self) {
        let _ = self.shared.out.send(Outgoing::Frame(Frame::GoAway { last_good_stream_id: 0, status: 0 })).await;
        let _ = self.shared.out.send(Outgoing::Close).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.closed()).await;
        self.disconnect();
    }

    /// Drops the connection at once, without any goodbye.
    pub fn disconnect(&self) {
        for task in self.shared.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        self.shared.shut();
    }
}

impl Shared {
    /// Marks the connection gone: readers see the end (not a FIN), writers fail, `closed()` resolves.
    fn shut(&self) {
        let mut state = self.state.lock().unwrap();
        for stream in state.streams.values_mut() {
            stream.queue = None;
            stream.reply = None;
            stream.send_window = None;
        }
        state.streams.clear();
        drop(state);
        self.flow_changed.notify_waiters();
        self.closed.send_replace(true);
    }

    async fn send(&self, frame: Frame) -> io::Result<()> {
        self.out.send(Outgoing::Frame(frame)).await.map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Forgets a stream once neither side can use it any more.
    fn forget_if_done(state: &mut State, id: u32) {
        if let Some(stream) = state.streams.get(&id)
            && stream.queue.is_none()
            && stream.send_window.is_none()
            && stream.reply.is_none()
        {
            state.streams.remove(&id);
        }
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(write: W, out: mpsc::Receiver<Outgoing>, shared: Arc<Shared>) {
    if !wire::write_frames(write, out, |_| {}).await {
        shared.shut();
    }
}

async fn read_frames<R: AsyncRead + Unpin>(read: R, shared: Arc<Shared>) {
    let mut frames = FrameReader::new(read);
    loop {
        match frames.next().await {
            Ok(Some(frame)) => on_frame(frame, &shared).await,
            Ok(None) => break,
            Err(err) => {
                tracing::debug!(error = %err, "spdy client: protocol error from the server");
                break;
            }
        }
    }
    shared.shut();
}

async fn on_frame(frame: Frame, shared: &Arc<Shared>) {
    match frame {
        Frame::SynReply { stream_id, .. } => {
            let mut state = shared.state.lock().unwrap();
            if let Some(reply) = state.streams.get_mut(&stream_id).and_then(|s| s.reply.take()) {
                let _ = reply.send(Ok(()));
            }
        }
        Frame::Data { stream_id, flags, data } => {
            let target = {
                let state = shared.state.lock().unwrap();
                state.streams.get(&stream_id).map(|s| (s.queue.clone(), s.received.clone()))
            };
            let mut delivered = false;
            if let Some((Some((tx, budget)), received)) = target
                && !data.is_empty()
            {
                let len = data.len() as i64;
                let now = received.unacknowledged.fetch_add(len, Ordering::SeqCst) + len;
                received.max_unacknowledged.fetch_max(now, Ordering::SeqCst);
                let permits = data.len().min(QUEUE_BYTES) as u32;
                if let Ok(permit) = budget.acquire_many_owned(permits).await {
                    delivered = tx.send(Item::Data(data.clone(), permit)).is_ok();
                }
                if !delivered {
                    received.unacknowledged.fetch_sub(len, Ordering::SeqCst);
                }
            }
            // Bytes nobody will consume still count against the session window: give them back now.
            if !delivered && !data.is_empty() {
                let delta = data.len() as u32;
                let _ = shared.out.try_send(Outgoing::Frame(Frame::WindowUpdate { stream_id: 0, delta }));
            }
            if flags & FLAG_FIN != 0 {
                let mut state = shared.state.lock().unwrap();
                if let Some(stream) = state.streams.get_mut(&stream_id)
                    && let Some((tx, _)) = stream.queue.take()
                {
                    let _ = tx.send(Item::Fin);
                }
                Shared::forget_if_done(&mut state, stream_id);
            }
        }
        Frame::Headers { stream_id, flags, .. } => {
            if flags & FLAG_FIN != 0 {
                let mut state = shared.state.lock().unwrap();
                if let Some(stream) = state.streams.get_mut(&stream_id)
                    && let Some((tx, _)) = stream.queue.take()
                {
                    let _ = tx.send(Item::Fin);
                }
                Shared::forget_if_done(&mut state, stream_id);
            }
        }
        Frame::RstStream { stream_id, status } => {
            let mut state = shared.state.lock().unwrap();
            state.resets.push((stream_id, status));
            if let Some(mut stream) = state.streams.remove(&stream_id)
                && let Some(reply) = stream.reply.take()
            {
                let _ = reply.send(Err(status));
            }
            drop(state);
            shared.flow_changed.notify_waiters();
        }
        Frame::Settings { entries, .. } => {
            let mut state = shared.state.lock().unwrap();
            state.peer_flow_control = true;
            for (_, id, value) in entries {
                if id == SETTINGS_INITIAL_WINDOW_SIZE {
                    let delta = i64::from(value) - state.initial_window;
                    state.initial_window = i64::from(value);
                    for window in state.streams.values_mut().filter_map(|s| s.send_window.as_mut()) {
                        *window += delta;
                    }
                }
            }
            drop(state);
            shared.flow_changed.notify_waiters();
        }
        Frame::WindowUpdate { stream_id, delta } => {
            let mut state = shared.state.lock().unwrap();
            state.peer_flow_control = true;
            if stream_id == 0 {
                state.session_window += i64::from(delta);
            } else if let Some(window) = state.streams.get_mut(&stream_id).and_then(|s| s.send_window.as_mut()) {
                *window += i64::from(delta);
            }
            drop(state);
            shared.flow_changed.notify_waiters();
        }
        Frame::Ping { id } => {
            // Echo the server's pings (even ids); ours would be odd and we send none.
            if id % 2 == 0 {
                let _ = shared.out.try_send(Outgoing::Frame(Frame::Ping { id }));
            }
        }
        Frame::GoAway { .. } => shared.state.lock().unwrap().goaway = true,
        Frame::SynStream { stream_id, .. } => {
            // Kubernetes' protocols never have the server open streams.
            let status = frame::rst::REFUSED_STREAM;
            let _ = shared.out.try_send(Outgoing::Frame(Frame::RstStream { stream_id, status }));
        }
        Frame::Unknown { .. } => {}
    }
}

impl SpdyReader {
    /// The next chunk the peer sent; `Ok(None)` at its FIN; an error when the stream was reset or the
    /// connection lost before it. Taking a chunk gives its bytes back to the peer's windows.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if self.finished {
            return Ok(None);
        }
        match self.rx.recv().await {
            Some(Item::Data(chunk, _permit)) => {
                let delta = chunk.len() as u32;
                self.received.unacknowledged.fetch_sub(i64::from(delta), Ordering::SeqCst);
                let _ = self.shared.send(Frame::WindowUpdate { stream_id: self.id, delta }).await;
                let _ = self.shared.send(Frame::WindowUpdate { stream_id: 0, delta }).await;
                Ok(Some(chunk))
            }
            Some(Item::Fin) => {
                self.finished = true;
                Ok(None)
            }
            None => Err(io::Error::new(io::ErrorKind::ConnectionReset, "stream reset or connection lost")),
        }
    }

    /// Everything until the peer's FIN.
    pub async fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(chunk) = self.read_chunk().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }

    /// Copies the stream into `to` (flushing after each chunk, for terminals) until the peer's FIN.
    pub async fn copy_to<W: AsyncWrite + Unpin + ?Sized>(&mut self, to: &mut W) -> io::Result<u64> {
        let mut total = 0;
        while let Some(chunk) = self.read_chunk().await? {
            to.write_all(&chunk).await?;
            to.flush().await?;
            total += chunk.len() as u64;
        }
        Ok(total)
    }

    /// Bytes received and not yet taken by the consumer.
    pub fn unacknowledged(&self) -> i64 {
        self.received.unacknowledged.load(Ordering::SeqCst)
    }

    /// The most bytes the peer ever had unacknowledged on this stream: one that honours our window keeps
    /// it at or under 64 KiB.
    pub fn max_unacknowledged(&self) -> i64 {
        self.received.max_unacknowledged.load(Ordering::SeqCst)
    }
}

impl Drop for SpdyReader {
    fn drop(&mut self) {
        // Nobody reads any more: what arrives from now on is acknowledged at once (see on_frame).
        let mut state = self.shared.state.lock().unwrap();
        if let Some(stream) = state.streams.get_mut(&self.id) {
            stream.queue = None;
        }
        Shared::forget_if_done(&mut state, self.id);
    }
}

impl SpdyWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data` as DATA frames, within the peer's windows when it does flow control.
    pub async fn write(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let allowed = self.reserve(data.len()).await?;
            let (chunk, rest) = data.split_at(allowed);
            let frame = Frame::Data { stream_id: self.id, flags: 0, data: Bytes::copy_from_slice(chunk) };
            self.shared.send(frame).await?;
            data = rest;
        }
        Ok(())
    }

    /// Takes up to `want` bytes of send window (at most one frame's worth), waiting for it if needed.
    async fn reserve(&self, want: usize) -> io::Result<usize> {
        let want = want.min(MAX_DATA_FRAME) as i64;
        loop {
            let notified = self.shared.flow_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.shared.state.lock().unwrap();
                let session = state.session_window;
                let flow_control = state.peer_flow_control;
                let Some(window) = state.streams.get_mut(&self.id).and_then(|s| s.send_window.as_mut()) else {
                    return Err(io::Error::from(io::ErrorKind::BrokenPipe));
                };
                if !flow_control {
                    return Ok(want as usize);
                }
                let allowed = want.min(*window).min(session);
                if allowed > 0 {
                    *window -= allowed;
                    state.session_window -= allowed;
                    return Ok(allowed as usize);
                }
            }
            notified.await;
        }
    }

    /// Half-closes the stream (DATA with FIN): nothing more will be written.
    pub async fn close(&self) -> io::Result<()> {
        let open = {
            let mut state = self.shared.state.lock().unwrap();
            let open = state.streams.get_mut(&self.id).and_then(|s| s.send_window.take()).is_some();
            Shared::forget_if_done(&mut state, self.id);
            open
        };
        if !open {
            return Ok(());
        }
        self.shared.send(Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Bytes::new() }).await
    }

    /// Resets the stream (RST_STREAM CANCEL): the peer stops sending and writing on it.
    pub fn reset(&self) {
        let mut state = self.shared.state.lock().unwrap();
        if let Some(stream) = state.streams.remove(&self.id) {
            if let Some((tx, _)) = stream.queue {
                drop(tx);
            }
        }
        drop(state);
        self.shared.flow_changed.notify_waiters();
        let status = frame::rst::CANCEL;
        let _ = self.shared.out.try_send(Outgoing::Frame(Frame::RstStream { stream_id: self.id, status }));
    }

    /// Copies `from` into the stream until its EOF, then half-closes the stream.
    pub async fn copy_from<R: AsyncRead + Unpin + ?Sized>(&self, from: &mut R) -> io::Result<u64> {
        let mut buf = vec![0u8; MAX_DATA_FRAME];
        let mut total = 0;
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            self.write(&buf[..n]).await?;
            total += n as u64;
        }
        self.close().await?;
        Ok(total)
    }
}

impl SpdyStream {
    /// [`SpdyWriter::write`].
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        self.writer.write(data).await
    }

    /// [`SpdyWriter::close`].
    pub async fn close(&self) -> io::Result<()> {
        self.writer.close().await
    }

    /// [`SpdyReader::read_to_end`].
    pub async fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        self.reader.read_to_end().await
    }
}

/// remotecommand (exec or attach) over SPDY: one stream per channel, named by `streamType`; the exit status
/// is the `Status` the server writes on the error stream after the output streams end.
pub(super) async fn run_command(url: &str, io: CommandIo) -> Result<i32, ClientError> {
    let conn = SpdyConnection::connect(url, REMOTE_COMMAND_PROTOCOLS).await?;
    let result = command_session(&conn, io).await;
    conn.disconnect();
    result
}

async fn command_session(conn: &SpdyConnection, io: CommandIo) -> Result<i32, ClientError> {
    let CommandIo { stdin, stdout, stderr, tty, resize } = io;
    let mut error = conn.open(&[("streamType", "error")]).await?;
    // We never write on the error stream (client-go half-closes it at once, too).
    let _ = error.writer.close().await;
    let stdin_stream = match &stdin {
        Some(_) => Some(conn.open(&[("streamType", "stdin")]).await?),
        None => None,
    };
    let stdout_stream = match &stdout {
        Some(_) => Some(conn.open(&[("streamType", "stdout")]).await?),
        None => None,
    };
    let stderr_stream = match &stderr {
        Some(_) => Some(conn.open(&[("streamType", "stderr")]).await?),
        None => None,
    };
    let resize_stream = if tty { Some(conn.open(&[("streamType", "resize")]).await?) } else { None };

    // Input runs beside the session and is dropped at its end: a terminal's stdin never reaches EOF.
    let mut inputs = Vec::new();
    if let (Some(mut stdin), Some(stream)) = (stdin, stdin_stream) {
        let writer = stream.writer;
        inputs.push(tokio::spawn(async move {
            let _ = writer.copy_from(&mut stdin).await;
        }));
    }
    if let (Some(mut resize), Some(stream)) = (resize, resize_stream) {
        let writer = stream.writer;
        inputs.push(tokio::spawn(async move {
            while let Some(size) = resize.recv().await {
                let json = serde_json::to_vec(&size).expect("a terminal size serializes");
                if writer.write(&json).await.is_err() {
                    break;
                }
            }
        }));
    }
    let copy_out = |stream: Option<SpdyStream>, to: Option<Box<dyn AsyncWrite + Send + Unpin>>| async move {
        match (stream, to) {
            (Some(mut stream), Some(mut to)) => stream.reader.copy_to(&mut to).await.map(drop),
            _ => Ok(()),
        }
    };
    let (out, err, status) =
        tokio::join!(copy_out(stdout_stream, stdout), copy_out(stderr_stream, stderr), error.reader.read_to_end());
    for input in inputs {
        input.abort();
    }
    let status = status.map_err(|_| ClientError::ConnectionLost)?;
    // The status comes after all output; if the output broke off first, the session did not end well.
    let code = super::exit_code_of_status(&status)?.ok_or(ClientError::ConnectionLost)?;
    out.and(err).map_err(ClientError::Io)?;
    Ok(code)
}

/// One forwarded connection: an error and a data stream sharing `port` and `requestID`; bytes both ways
/// until the pod's end finishes the data stream; whatever arrives on the error stream is the failure.
pub(super) async fn forward<IO>(conn: &SpdyConnection, port: u16, request_id: u64, local: IO) -> Result<(), ClientError>
where
    IO: AsyncRead + AsyncWrite + Send,
{
    let (port, request_id) = (port.to_string(), request_id.to_string());
    let mut error = conn.open(&[("streamType", "error"), ("port", &port), ("requestID", &request_id)]).await?;
    let _ = error.writer.close().await;
    let data = conn.open(&[("streamType", "data"), ("port", &port), ("requestID", &request_id)]).await?;
    let SpdyStream { reader: mut from_pod, writer: to_pod, .. } = data;
    let (mut local_read, mut local_write) = tokio::io::split(local);
    let upstream = async {
        let _ = to_pod.copy_from(&mut local_read).await;
    };
    let downstream = async {
        let copied = from_pod.copy_to(&mut local_write).await;
        let _ = local_write.shutdown().await;
        copied
    };
    let reset = to_pod.clone();
    // Done when the pod's side is: the local side may never close its write half.
    tokio::pin!(upstream, downstream);
    let mut upstream_done = false;
    let copied = loop {
        tokio::select! {
            () = &mut upstream, if !upstream_done => upstream_done = true,
            copied = &mut downstream => break copied,
        }
    };
    if copied.is_err() {
        // The local side went away (or the session did): tell the server to stop this connection, since
        // its error stream ends only when its side of the connection does.
        reset.reset();
        error.writer.reset();
        return if conn.is_closed() { Err(ClientError::ConnectionLost) } else { Ok(()) };
    }
    let message = error.reader.read_to_end().await.unwrap_or_default();
    if !message.is_empty() {
        return Err(ClientError::Remote(String::from_utf8_lossy(&message).into_owned()));
    }
    Ok(())
}
