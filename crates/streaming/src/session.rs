//! What SPDY and WebSocket sessions share: the pipes between a backend's stdio and a protocol's streams,
//! running the backend call so that it is dropped when the client goes or the session idles out, and the
//! bookkeeping of live sessions (count, per-container limit).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use crate::activity::Activity;
use crate::backend::{AttachRequest, Backend, ExecRequest, Streams, TerminalSize};
use crate::status::Outcome;

/// Bytes buffered between a protocol stream and the backend, per direction and stream.
const PIPE_BUFFER: usize = 64 * 1024;

/// Exec or attach: the two requests that run a session on a container's stdio.
#[derive(Debug, Clone)]
pub enum CommandRequest {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl CommandRequest {
    pub fn tty(&self) -> bool {
        match self {
            CommandRequest::Exec(r) => r.tty,
            CommandRequest::Attach(r) => r.tty,
        }
    }
    pub fn stdin(&self) -> bool {
        match self {
            CommandRequest::Exec(r) => r.stdin,
            CommandRequest::Attach(r) => r.stdin,
        }
    }
    pub fn stdout(&self) -> bool {
        match self {
            CommandRequest::Exec(r) => r.stdout,
            CommandRequest::Attach(r) => r.stdout,
        }
    }
    /// A tty merges stderr into stdout, so no stderr stream exists then.
    pub fn stderr(&self) -> bool {
        match self {
            CommandRequest::Exec(r) => r.stderr && !r.tty,
            CommandRequest::Attach(r) => r.stderr && !r.tty,
        }
    }
}

/// An input stream for the backend: the returned sender feeds it; dropping the sender is EOF.
pub fn input() -> (mpsc::Sender<Bytes>, DuplexStream, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let (backend_side, mut our_side) = tokio::io::duplex(PIPE_BUFFER);
    let pump = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if our_side.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = our_side.shutdown().await;
    });
    (tx, backend_side, pump)
}

/// An output stream of the backend: what it writes is handed to `send`; `finish` runs at its EOF.
pub fn output<S, SF, F, FF>(mut send: S, finish: F) -> (DuplexStream, tokio::task::JoinHandle<()>)
where
    S: FnMut(Bytes) -> SF + Send + 'static,
    SF: Future<Output = io::Result<()>> + Send,
    F: FnOnce() -> FF + Send + 'static,
    FF: Future<Output = ()> + Send,
{
    let (backend_side, mut our_side) = tokio::io::duplex(PIPE_BUFFER);
    let pump = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match our_side.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
        finish().await;
    });
    (backend_side, pump)
}

/// Decodes the resize stream: concatenated JSON objects `{"Width":..,"Height":..}`.
pub struct ResizeDecoder {
    buf: Vec<u8>,
    tx: mpsc::Sender<TerminalSize>,
}

impl ResizeDecoder {
    pub fn new() -> (ResizeDecoder, mpsc::Receiver<TerminalSize>) {
        let (tx, rx) = mpsc::channel(16);
        (ResizeDecoder { buf: Vec::new(), tx }, rx)
    }

    /// Feeds bytes; every complete object is sent on. False when the input is not JSON.
    pub async fn feed(&mut self, data: &[u8]) -> bool {
        self.buf.extend_from_slice(data);
        loop {
            let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TerminalSize>();
            match stream.next() {
                Some(Ok(size)) => {
                    let used = stream.byte_offset();
                    self.buf.drain(..used);
                    // A backend that does not read sizes does not stop the session.
                    let _ = self.tx.try_send(size);
                }
                Some(Err(err)) if err.is_eof() => return true,
                Some(Err(_)) => return false,
                None => {
                    self.buf.clear();
                    return true;
                }
            }
        }
    }
}

/// How a backend call ended, or why it was abandoned.
pub enum Ended {
    Done(Outcome),
    ClientGone,
    Idle,
}

/// Runs the backend call; drops it if the client goes away or nothing moves for `idle_timeout`.
pub async fn run(
    backend: &dyn Backend,
    request: CommandRequest,
    streams: Streams,
    client_gone: impl Future<Output = ()>,
    activity: &Activity,
    idle_timeout: Duration,
) -> Ended {
    let call = async {
        match request {
            CommandRequest::Exec(r) => Outcome::of_exec(backend.exec(r, streams).await),
            CommandRequest::Attach(r) => Outcome::of_attach(backend.attach(r, streams).await),
        }
    };
    tokio::select! {
        outcome = call => Ended::Done(outcome),
        () = client_gone => Ended::ClientGone,
        () = activity.idle(idle_timeout) => Ended::Idle,
    }
}

/// Live sessions: the total and per container (or pod sandbox), for the limit.
#[derive(Default)]
pub struct Sessions {
    total: AtomicUsize,
    by_key: Mutex<HashMap<String, usize>>,
}

/// Held while a session runs.
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    key: String,
}

impl Sessions {
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    /// A slot for a session on `key`, unless `limit` sessions already run there.
    pub fn acquire(self: &Arc<Self>, key: String, limit: usize) -> Option<SessionGuard> {
        let mut by_key = self.by_key.lock().unwrap();
        let count = by_key.entry(key.clone()).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        Some(SessionGuard { sessions: self.clone(), key })
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut by_key = self.sessions.by_key.lock().unwrap();
        if let Some(count) = by_key.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                by_key.remove(&self.key);
            }
        }
        self.sessions.total.fetch_sub(1, Ordering::SeqCst);
    }
}
