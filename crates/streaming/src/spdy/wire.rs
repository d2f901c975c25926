//! Frames on a byte stream, shared by both ends of a SPDY connection: the server's sessions
//! ([`super::conn`]) and berth's client (`client::spdy`). Each end keeps its own stream bookkeeping; how
//! frames are read from and batched onto the connection is the same.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::frame::{Frame, FrameError, HeaderCodec};

/// What an end queues for its writer.
pub(crate) enum Outgoing {
    Frame(Frame),
    /// Flush what is queued, then shut the write half down.
    Close,
}

/// Decodes frames from a read half, growing its buffer as frames need.
pub(crate) struct FrameReader<R> {
    read: R,
    codec: HeaderCodec,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(read: R) -> Self {
        FrameReader { read, codec: HeaderCodec::new(), buf: BytesMut::with_capacity(64 * 1024) }
    }

    /// The next frame; `Ok(None)` once the peer closed or the read failed, an error for a frame that
    /// breaks the protocol.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = Frame::decode(&mut self.codec, &mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            match self.read.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }
}

/// Writes what `out` is given until it ends, batching whatever is already queued into one write (up to
/// 256 KiB); `on_frame` sees each frame before it is encoded. Returns true when it ended on
/// [`Outgoing::Close`]: the write half is shut down and `out` drained until its senders are gone, so they
/// never fail while the reader drains what the peer still sends. False means the connection failed or
/// every sender went away.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    mut write: W,
    mut out: mpsc::Receiver<Outgoing>,
    mut on_frame: impl FnMut(&Frame),
) -> bool {
    let mut codec = HeaderCodec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = out.recv().await {
        let mut next = Some(first);
        let mut close = false;
        while let Some(item) = next.take() {
            match item {
                Outgoing::Frame(frame) => {
                    on_frame(&frame);
                    if let Err(err) = frame.encode(&mut codec, &mut buf) {
                        tracing::debug!(error = %err, "spdy: cannot encode frame");
                        return false;
                    }
                }
                Outgoing::Close => {
                    close = true;
                    break;
                }
            }
            if buf.len() < 256 * 1024 {
                next = out.try_recv().ok();
            }
        }
        if write.write_all(&buf).await.is_err() || write.flush().await.is_err() {
            return false;
        }
        buf.clear();
        if close {
            let _ = write.shutdown().await;
            while out.recv().await.is_some() {}
            return true;
        }
    }
    false
}
