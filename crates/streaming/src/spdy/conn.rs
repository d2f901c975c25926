//! One SPDY/3.1 session on an upgraded HTTP connection, server side: frames in and out, streams the peer
//! opens, per-stream and session flow control, clean close. What the streams mean (exec, port-forward) is
//! left to `remotecommand.rs` and `portforward.rs`.
//!
//! Flow control (SPDY/3.1 draft, 2.6.8 and 3.1's session window): what we receive is acknowledged with
//! WINDOW_UPDATE (stream and session) as the consumer takes it, so a peer that honours windows never has more
//! than one window in flight. What we send is held to the peer's windows once the peer shows it does flow
//! control (it sent SETTINGS or a WINDOW_UPDATE). moby/spdystream, which kubelet and client-go use, does
//! neither and ignores windows, so a peer that never speaks of windows gets TCP backpressure only, exactly
//! what it gets from kubelet; holding it to 64 KiB would stall it forever.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::frame::{self, FLAG_FIN, Frame, Headers};
use super::wire::{self, FrameReader, Outgoing};
use crate::activity::Activity;

/// The window each side starts with (SPDY/3 default).
pub const INITIAL_WINDOW: i64 = 64 * 1024;
/// Largest DATA frame we send.
const MAX_DATA_FRAME: usize = 32 * 1024;
/// Bytes a slow stream consumer may leave queued before the reader waits for it. Above our 64 KiB window,
/// so a peer that honours windows never makes the reader wait (which could deadlock: the WINDOW_UPDATE
/// that lets a blocked consumer go on would sit unread); a peer that ignores windows gets TCP backpressure.
const STREAM_QUEUE_BYTES: usize = 256 * 1024;

struct FlowState {
    /// Per-stream send windows; a stream absent here is closed for sending.
    stream_windows: HashMap<u32, i64>,
    session_window: i64,
    initial_window: i64,
}

struct Shared {
    out: mpsc::Sender<Outgoing>,
    streams: Mutex<HashMap<u32, QueueSender>>,
    flow: Mutex<FlowState>,
    flow_changed: Notify,
    peer_flow_control: AtomicBool,
    last_stream_id: AtomicU32,
    closed: watch::Sender<bool>,
    activity: Activity,
}

/// A stream the peer opened, with the headers of its SYN_STREAM; we have already replied.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub reader: StreamReader,
    pub writer: StreamWriter,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        frame::header(&self.headers, name)
    }
}

/// A stream's queue of received data, bounded in bytes (each chunk holds permits for its length).
#[derive(Clone)]
struct QueueSender {
    tx: mpsc::UnboundedSender<(Bytes, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
}

impl QueueSender {
    fn new() -> (QueueSender, mpsc::UnboundedReceiver<(Bytes, OwnedSemaphorePermit)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (QueueSender { tx, budget: Arc::new(Semaphore::new(STREAM_QUEUE_BYTES)) }, rx)
    }

    /// Queues `data`, waiting while the queue is full; false if the consumer is gone.
    async fn send(&self, data: Bytes) -> bool {
        let permits = data.len().min(STREAM_QUEUE_BYTES) as u32;
        let Ok(permit) = self.budget.clone().acquire_many_owned(permits).await else { return false };
        self.tx.send((data, permit)).is_ok()
    }
}

/// The receiving half of a stream.
pub struct StreamReader {
    id: u32,
    rx: mpsc::UnboundedReceiver<(Bytes, OwnedSemaphorePermit)>,
    shared: Arc<Shared>,
}

/// The sending half of a stream; cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    shared: Arc<Shared>,
}

/// The server's side of one SPDY session.
pub struct Connection {
    shared: Arc<Shared>,
    incoming: mpsc::Receiver<Stream>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Connection {
    /// Starts reading and writing frames on `io` (the upgraded connection).
    pub fn server<IO>(io: IO, activity: Activity) -> Connection
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(256);
        let (incoming_tx, incoming) = mpsc::channel(64);
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            out: out_tx,
            streams: Mutex::new(HashMap::new()),
            flow: Mutex::new(FlowState {
                stream_windows: HashMap::new(),
                session_window: INITIAL_WINDOW,
                initial_window: INITIAL_WINDOW,
            }),
            flow_changed: Notify::new(),
            peer_flow_control: AtomicBool::new(false),
            last_stream_id: AtomicU32::new(0),
            closed,
            activity,
        });
        let reader = tokio::spawn(read_frames(read, shared.clone(), incoming_tx));
        let writer = tokio::spawn(write_frames(write, out_rx, shared.clone()));
        Connection { shared, incoming, tasks: vec![reader, writer] }
    }

    /// The next stream the peer opens; `None` once the connection is gone.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Resolves when the peer has gone (connection closed, reset or GOAWAY'd and read to the end).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.closed.subscribe();
        async move {
            let _ = rx.wait_for(|closed| *closed).await;
        }
    }

    /// Sends GOAWAY, flushes what is queued and shuts the write half; waits (bounded) for the peer to close.
    pub async fn close(mut self, grace: std::time::Duration) {
        let last = self.shared.last_stream_id.load(Ordering::Relaxed);
        let _ = self.shared.out.send(Outgoing::Frame(Frame::GoAway { last_good_stream_id: last, status: 0 })).await;
        let _ = self.shared.out.send(Outgoing::Close).await;
        let closed = self.closed();
        let _ = tokio::time::timeout(grace, closed).await;
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.shared.shut();
    }
}

impl Shared {
    /// Marks the connection gone: readers see EOF, writers fail, `closed()` resolves.
    fn shut(&self) {
        self.streams.lock().unwrap().clear();
        self.flow.lock().unwrap().stream_windows.clear();
        self.flow_changed.notify_waiters();
        self.closed.send_replace(true);
    }

    async fn send(&self, frame: Frame) -> io::Result<()> {
        self.out.send(Outgoing::Frame(frame)).await.map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    fn try_send(&self, frame: Frame) {
        let _ = self.out.try_send(Outgoing::Frame(frame));
    }
}

async fn read_frames<R: AsyncRead + Unpin>(read: R, shared: Arc<Shared>, incoming: mpsc::Sender<Stream>) {
    let mut frames = FrameReader::new(read);
    let mut going_away = false;
    loop {
        match frames.next().await {
            Ok(Some(frame)) => {
                shared.activity.touch();
                if !handle_frame(frame, &shared, &incoming, &mut going_away).await {
                    break;
                }
            }
            Ok(None) => break,
            Err(err) => {
                tracing::debug!(error = %err, "spdy: protocol error, going away");
                let _ = shared.send(Frame::GoAway { last_good_stream_id: 0, status: 1 }).await;
                let _ = shared.out.send(Outgoing::Close).await;
                break;
            }
        }
    }
    shared.shut();
}

/// Handles one frame from the peer; false ends the session.
async fn handle_frame(
    frame: Frame,
    shared: &Arc<Shared>,
    incoming: &mpsc::Sender<Stream>,
    going_away: &mut bool,
) -> bool {
    match frame {
        Frame::SynStream { stream_id, flags, headers, .. } => {
            let last = shared.last_stream_id.load(Ordering::Relaxed);
            // Peers open odd ids, each larger than the last (draft 2.3.2).
            if stream_id % 2 == 0 || stream_id <= last || *going_away {
                let status = if *going_away { frame::rst::REFUSED_STREAM } else { frame::rst::PROTOCOL_ERROR };
                shared.try_send(Frame::RstStream { stream_id, status });
                return true;
            }
            shared.last_stream_id.store(stream_id, Ordering::Relaxed);
            let (tx, rx) = QueueSender::new();
            if flags & FLAG_FIN == 0 {
                shared.streams.lock().unwrap().insert(stream_id, tx);
            }
            {
                let mut flow = shared.flow.lock().unwrap();
                let window = flow.initial_window;
                if flags & frame::FLAG_UNIDIRECTIONAL == 0 {
                    flow.stream_windows.insert(stream_id, window);
                }
            }
            if shared.send(Frame::SynReply { stream_id, flags: 0, headers: Vec::new() }).await.is_err() {
                return false;
            }
            let stream = Stream {
                id: stream_id,
                headers,
                reader: StreamReader { id: stream_id, rx, shared: shared.clone() },
                writer: StreamWriter { id: stream_id, shared: shared.clone() },
            };
            if incoming.send(stream).await.is_err() {
                // Nobody takes streams any more: refuse it.
                shared.try_send(Frame::RstStream { stream_id, status: frame::rst::REFUSED_STREAM });
            }
        }
        Frame::Data { stream_id, flags, data } => {
            let tx = shared.streams.lock().unwrap().get(&stream_id).cloned();
            match tx {
                Some(tx) => {
                    if !data.is_empty() && !tx.send(data).await {
                        // The consumer is gone: stop the peer sending more.
                        shared.streams.lock().unwrap().remove(&stream_id);
                        shared.try_send(Frame::RstStream { stream_id, status: frame::rst::CANCEL });
                    }
                    if flags & FLAG_FIN != 0 {
                        shared.streams.lock().unwrap().remove(&stream_id);
                    }
                }
                None if stream_id > shared.last_stream_id.load(Ordering::Relaxed) => {
                    shared.try_send(Frame::RstStream { stream_id, status: frame::rst::INVALID_STREAM });
                }
                // Data for a stream we already consider closed (or reset): dropped.
                None => {}
            }
        }
        Frame::Headers { stream_id, flags, .. } => {
            if flags & FLAG_FIN != 0 {
                shared.streams.lock().unwrap().remove(&stream_id);
            }
        }
        Frame::RstStream { stream_id, .. } => {
            shared.streams.lock().unwrap().remove(&stream_id);
            shared.flow.lock().unwrap().stream_windows.remove(&stream_id);
            shared.flow_changed.notify_waiters();
        }
        Frame::Settings { entries, .. } => {
            shared.peer_flow_control.store(true, Ordering::Relaxed);
            for (_, id, value) in entries {
                if id == frame::SETTINGS_INITIAL_WINDOW_SIZE {
                    let mut flow = shared.flow.lock().unwrap();
                    let delta = i64::from(value) - flow.initial_window;
                    flow.initial_window = i64::from(value);
                    for window in flow.stream_windows.values_mut() {
                        *window += delta;
                    }
                }
            }
            shared.flow_changed.notify_waiters();
        }
        Frame::WindowUpdate { stream_id, delta } => {
            shared.peer_flow_control.store(true, Ordering::Relaxed);
            let mut flow = shared.flow.lock().unwrap();
            if stream_id == 0 {
                flow.session_window += i64::from(delta);
            } else if let Some(window) = flow.stream_windows.get_mut(&stream_id) {
                *window += i64::from(delta);
            }
            drop(flow);
            shared.flow_changed.notify_waiters();
        }
        Frame::Ping { id } => {
            // Echo the peer's pings (odd ids from a client); ours would be even and we send none.
            if id % 2 == 1 {
                shared.try_send(Frame::Ping { id });
            }
        }
        Frame::GoAway { .. } => *going_away = true,
        Frame::SynReply { .. } | Frame::Unknown { .. } => {}
    }
    true
}

async fn write_frames<W: AsyncWrite + Unpin>(write: W, out: mpsc::Receiver<Outgoing>, shared: Arc<Shared>) {
    let touch_on_data = |frame: &Frame| {
        if matches!(frame, Frame::Data { .. }) {
            shared.activity.touch();
        }
    };
    if !wire::write_frames(write, out, touch_on_data).await {
        shared.shut();
    }
}

impl StreamReader {
    /// The next chunk the peer sent; `None` at FIN, reset or when the connection is gone. Taking a chunk
    /// gives its bytes back to the peer's windows.
    pub async fn read_chunk(&mut self) -> Option<Bytes> {
        let (chunk, _permit) = self.rx.recv().await?;
        let delta = chunk.len() as u32;
        self.shared.try_send_window_update(self.id, delta).await;
        Some(chunk)
    }
}

impl Shared {
    async fn try_send_window_update(&self, stream_id: u32, delta: u32) {
        if delta == 0 {
            return;
        }
        let _ = self.send(Frame::WindowUpdate { stream_id, delta }).await;
        let _ = self.send(Frame::WindowUpdate { stream_id: 0, delta }).await;
    }
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data` as DATA frames, waiting for window when the peer does flow control.
    pub async fn write(&self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            let allowed = self.reserve(data.len()).await?;
            let chunk = data.split_to(allowed);
            self.shared.send(Frame::Data { stream_id: self.id, flags: 0, data: chunk }).await?;
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
                let mut flow = self.shared.flow.lock().unwrap();
                let session = flow.session_window;
                let Some(window) = flow.stream_windows.get_mut(&self.id) else {
                    return Err(io::Error::from(io::ErrorKind::BrokenPipe));
                };
                if !self.shared.peer_flow_control.load(Ordering::Relaxed) {
                    return Ok(want as usize);
                }
                let allowed = want.min(*window).min(session);
                if allowed > 0 {
                    *window -= allowed;
                    flow.session_window -= allowed;
                    return Ok(allowed as usize);
                }
            }
            notified.await;
        }
    }

    /// Half-closes the stream (DATA with FIN); nothing more can be written.
    pub async fn finish(&self) -> io::Result<()> {
        let open = self.shared.flow.lock().unwrap().stream_windows.remove(&self.id).is_some();
        if !open {
            return Ok(());
        }
        self.shared.send(Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Bytes::new() }).await
    }

    /// Resets the stream (RST_STREAM with `status`).
    pub fn reset(&self, status: u32) {
        self.shared.streams.lock().unwrap().remove(&self.id);
        self.shared.flow.lock().unwrap().stream_windows.remove(&self.id);
        self.shared.flow_changed.notify_waiters();
        self.shared.try_send(Frame::RstStream { stream_id: self.id, status });
    }
}
