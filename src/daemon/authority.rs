//! Accepting the `:authority` that older Go gRPC clients send over unix sockets.
//!
//! grpc-go dialing a plain socket path (kubelet and crictl before Kubernetes 1.31 do: they gained
//! `WithAuthority("localhost")` then) sends the path itself, e.g. `/run/berth/berth.sock`, as the HTTP/2
//! `:authority`. That is not a valid URI authority, and the h2 server under tonic resets every such stream
//! with PROTOCOL_ERROR before berth sees it (hyperium/h2#487). containerd and CRI-O, written in Go, accept
//! it, so kubelets of those releases work with them; to work with berth too, each connection's
//! client-to-server bytes pass through [`AuthorityFix`], which decodes every header block (HPACK, RFC 7541),
//! replaces an invalid `:authority` with `localhost`, and re-encodes it. Every block is re-encoded, valid or
//! not, so the HPACK dynamic table the server decodes with always matches the one the re-encoder fills.
//! All other frames pass through byte for byte, and the server-to-client direction is untouched.
//!
//! The same re-encoding renames the client's `grpc-timeout` to `berth-grpc-timeout`
//! ([`crate::server::trace::DEADLINE_HEADER`]): tonic enforces a `grpc-timeout` it sees outside every layer
//! berth can add and answers Cancelled when it passes, where the gRPC spec, containerd and CRI-O answer
//! DeadlineExceeded (critest checks it). Renamed, the deadline is berth's trace layer's to enforce.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame a server accepts until it says otherwise (RFC 9113 §4.2); h2's default too.
const MAX_FRAME: usize = 16_384;

/// Rewrites header blocks on the client-to-server byte stream of one HTTP/2 connection.
#[derive(Default)]
pub struct HeaderRewriter {
    preface_seen: usize,
    input: Vec<u8>,
    /// A header block still waiting for CONTINUATION frames: stream, HEADERS flags, priority bytes, fragment.
    pending: Option<(u32, u8, Vec<u8>, Vec<u8>)>,
    decoder: fluke_hpack::Decoder<'static>,
    encoder: fluke_hpack::Encoder<'static>,
}

impl HeaderRewriter {
    /// Takes bytes read from the client and appends what the server should read to `output`.
    pub fn feed(&mut self, bytes: &[u8], output: &mut Vec<u8>) -> io::Result<()> {
        let mut bytes = bytes;
        if self.preface_seen < PREFACE.len() {
            let take = bytes.len().min(PREFACE.len() - self.preface_seen);
            output.extend_from_slice(&bytes[..take]);
            self.preface_seen += take;
            bytes = &bytes[take..];
        }
        self.input.extend_from_slice(bytes);
        let mut consumed = 0;
        while self.input.len() - consumed >= FRAME_HEADER {
            let header = &self.input[consumed..consumed + FRAME_HEADER];
            let length = (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
            if self.input.len() - consumed < FRAME_HEADER + length {
                break;
            }
            let (kind, flags) = (header[3], header[4]);
            let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let frame = consumed..consumed + FRAME_HEADER + length;
            let payload = self.input[frame.start + FRAME_HEADER..frame.end].to_vec();
            match kind {
                HEADERS => {
                    let (priority, fragment) = split_headers_payload(flags, &payload)?;
                    self.pending = Some((stream, flags, priority, fragment));
                    if flags & END_HEADERS != 0 {
                        self.finish_block(output)?;
                    }
                }
                CONTINUATION if self.pending.as_ref().is_some_and(|(s, ..)| *s == stream) => {
                    if let Some((_, _, _, fragment)) = self.pending.as_mut() {
                        fragment.extend_from_slice(&payload);
                    }
                    if flags & END_HEADERS != 0 {
                        self.finish_block(output)?;
                    }
                }
                _ => output.extend_from_slice(&self.input[frame.clone()]),
            }
            consumed = frame.end;
        }
        self.input.drain(..consumed);
        Ok(())
    }

    fn finish_block(&mut self, output: &mut Vec<u8>) -> io::Result<()> {
        let Some((stream, flags, priority, fragment)) = self.pending.take() else { return Ok(()) };
        let mut headers = self.decoder.decode(&fragment).map_err(|err| {
            io::Error::new(io::ErrorKind::InvalidData, format!("undecodable HTTP/2 header block: {err:?}"))
        })?;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err() {
                *value = b"localhost".to_vec();
            } else if name.as_slice() == b"grpc-timeout" {
                *name = crate::server::trace::DEADLINE_HEADER.as_bytes().to_vec();
            }
        }
        let block = self.encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        // HEADERS keeps END_STREAM and PRIORITY; padding is dropped; END_HEADERS goes on the last frame.
        let mut chunks = block.chunks(MAX_FRAME - priority.len()).peekable();
        let first = chunks.next().unwrap_or(&[]);
        let last = chunks.peek().is_none();
        let mut first_flags = flags & (END_STREAM | PRIORITY);
        if last {
            first_flags |= END_HEADERS;
        }
        let mut payload = priority;
        payload.extend_from_slice(first);
        write_frame(output, HEADERS, first_flags, stream, &payload);
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() { END_HEADERS } else { 0 };
            write_frame(output, CONTINUATION, flags, stream, chunk);
        }
        Ok(())
    }
}

/// Splits a HEADERS payload into its priority bytes (kept) and header block fragment (padding removed).
fn split_headers_payload(flags: u8, payload: &[u8]) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP/2 HEADERS frame");
    let mut rest = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        padding = usize::from(*rest.first().ok_or_else(malformed)?);
        rest = &rest[1..];
    }
    let mut priority = Vec::new();
    if flags & PRIORITY != 0 {
        priority = rest.get(..5).ok_or_else(malformed)?.to_vec();
        rest = &rest[5..];
    }
    let fragment = rest.get(..rest.len().checked_sub(padding).ok_or_else(malformed)?).ok_or_else(malformed)?;
    Ok((priority, fragment.to_vec()))
}

fn write_frame(output: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let length = payload.len() as u32;
    output.extend_from_slice(&length.to_be_bytes()[1..]);
    output.push(kind);
    output.push(flags);
    output.extend_from_slice(&stream.to_be_bytes());
    output.extend_from_slice(payload);
}

/// A client connection whose incoming bytes pass through a [`HeaderRewriter`].
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: HeaderRewriter,
    ready: Vec<u8>,
    ready_from: usize,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix { inner, rewriter: HeaderRewriter::default(), ready: Vec::new(), ready_from: 0 }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_from < this.ready.len() {
                let available = &this.ready[this.ready_from..];
                let take = available.len().min(buf.remaining());
                buf.put_slice(&available[..take]);
                this.ready_from += take;
                if this.ready_from == this.ready.len() {
                    this.ready.clear();
                    this.ready_from = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Ready(Ok(())) if chunk_buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => this.rewriter.feed(chunk_buf.filled(), &mut this.ready)?,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_frame(
        encoder: &mut fluke_hpack::Encoder<'_>,
        stream: u32,
        headers: &[(&[u8], &[u8])],
        flags: u8,
    ) -> Vec<u8> {
        let block = encoder.encode(headers.iter().copied());
        let mut frame = Vec::new();
        write_frame(&mut frame, HEADERS, flags | END_HEADERS, stream, &block);
        frame
    }

    fn decode_headers(output: &[u8], decoder: &mut fluke_hpack::Decoder<'_>) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut blocks = Vec::new();
        let mut rest = output;
        while rest.len() >= FRAME_HEADER {
            let length = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            if rest[3] == HEADERS {
                blocks.push(decoder.decode(&rest[FRAME_HEADER..FRAME_HEADER + length]).unwrap());
            }
            rest = &rest[FRAME_HEADER + length..];
        }
        blocks
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_other_frames_pass_through() {
        let mut client = fluke_hpack::Encoder::new();
        let request: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", b"/run/berth/berth.sock"),
            (b"content-type", b"application/grpc"),
        ];
        let mut input = PREFACE.to_vec();
        let mut settings = Vec::new();
        write_frame(&mut settings, 0x4, 0, 0, &[]);
        input.extend_from_slice(&settings);
        input.extend(headers_frame(&mut client, 1, &request, 0));
        let mut data = Vec::new();
        write_frame(&mut data, 0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]);
        input.extend_from_slice(&data);
        // The second request reuses the client's dynamic table entries.
        input.extend(headers_frame(&mut client, 3, &request, END_STREAM));

        // Fed in awkward pieces, as a socket may deliver it.
        let mut rewriter = HeaderRewriter::default();
        let mut output = Vec::new();
        for piece in input.chunks(7) {
            rewriter.feed(piece, &mut output).unwrap();
        }
        assert!(output.starts_with(PREFACE));
        let frames = &output[PREFACE.len()..];
        assert!(frames.starts_with(&settings));
        assert!(frames.windows(data.len()).any(|w| w == data.as_slice()), "DATA frame altered");
        let mut server = fluke_hpack::Decoder::new();
        let blocks = decode_headers(&frames[settings.len()..], &mut server);
        assert_eq!(blocks.len(), 2);
        for block in blocks {
            let authority = block.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(authority.1, b"localhost");
            assert!(block.iter().any(|(n, v)| n == b":path" && v == b"/runtime.v1.RuntimeService/Version"));
        }
    }

    #[test]
    fn the_callers_deadline_is_renamed_for_berth_to_enforce() {
        let mut client = fluke_hpack::Encoder::new();
        let request: Vec<(&[u8], &[u8])> =
            vec![(b":method", b"POST"), (b"grpc-timeout", b"1m"), (b"content-type", b"application/grpc")];
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(&mut client, 1, &request, 0));
        input.extend(headers_frame(&mut client, 3, &request, 0));
        let mut output = Vec::new();
        HeaderRewriter::default().feed(&input, &mut output).unwrap();
        let blocks = decode_headers(&output[PREFACE.len()..], &mut fluke_hpack::Decoder::new());
        assert_eq!(blocks.len(), 2);
        for block in blocks {
            assert!(!block.iter().any(|(n, _)| n == b"grpc-timeout"), "{block:?}");
            let renamed = block.iter().find(|(n, _)| n == crate::server::trace::DEADLINE_HEADER.as_bytes());
            assert_eq!(renamed.map(|(_, v)| v.as_slice()), Some(&b"1m"[..]));
        }
    }

    #[test]
    fn valid_authorities_are_kept_and_padding_is_removed() {
        let mut client = fluke_hpack::Encoder::new();
        let block = client.encode(vec![(&b":authority"[..], &b"localhost:1234"[..]), (&b":method"[..], &b"POST"[..])]);
        let mut payload = vec![3u8];
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        write_frame(&mut input, HEADERS, END_HEADERS | PADDED, 5, &payload);
        let mut output = Vec::new();
        HeaderRewriter::default().feed(&input, &mut output).unwrap();
        let blocks = decode_headers(&output[PREFACE.len()..], &mut fluke_hpack::Decoder::new());
        assert_eq!(blocks[0][0], (b":authority".to_vec(), b"localhost:1234".to_vec()));
    }
}
