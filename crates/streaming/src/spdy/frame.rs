//! SPDY/3.1 frames: their wire layout, and the zlib-compressed header blocks with the SPDY/3 dictionary.
//!
//! Only the codec lives here; streams, flow control and the connection's life are in `conn.rs`. Layout from
//! the SPDY/3.1 draft, section 2.6 (control frames) and 2.6.10 (header block compression).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The zlib dictionary every SPDY/3 header block is compressed with (SPDY/3 draft, section 2.6.10.1).
pub const HEADER_DICTIONARY: &[u8] = include_bytes!("dictionary.bin");

/// The largest frame payload we accept; SPDY's length field allows 16 MiB, no peer of ours needs more.
pub const MAX_FRAME_PAYLOAD: usize = (1 << 24) - 1;
/// A decompressed header block larger than this is refused (a zlib bomb otherwise).
const MAX_HEADER_BLOCK: usize = 256 * 1024;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes (draft 2.6.3).
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// SETTINGS ids (draft 2.6.4).
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u32 = 4;

/// Header name/value pairs in order; names are lowercase on the wire.
pub type Headers = Vec<(String, String)>;

/// One SPDY frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type we do not know; SPDY says to ignore it.
    Unknown {
        frame_type: u16,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("frame payload of {0} bytes is too large")]
    TooLarge(usize),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("malformed header block")]
    HeaderBlock,
    #[error("header block compression failed")]
    Compression,
}

/// Header block (de)compression state: one zlib stream per direction for the connection's whole life.
pub struct HeaderCodec {
    compress: Compress,
    decompress: Decompress,
}

impl Default for HeaderCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderCodec {
    pub fn new() -> Self {
        let mut compress = Compress::new(Compression::default(), true);
        // A fresh compressor accepts a dictionary before the first byte; it then marks the stream FDICT.
        compress.set_dictionary(HEADER_DICTIONARY).expect("a fresh zlib stream accepts a dictionary");
        HeaderCodec { compress, decompress: Decompress::new(true) }
    }

    fn encode_block(&mut self, headers: &Headers) -> Result<Vec<u8>, FrameError> {
        let mut plain = Vec::with_capacity(64);
        plain.put_u32(headers.len() as u32);
        for (name, value) in headers {
            plain.put_u32(name.len() as u32);
            plain.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            plain.put_u32(value.len() as u32);
            plain.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            out.reserve(256);
            let before_in = self.compress.total_in();
            self.compress.compress_vec(input, &mut out, FlushCompress::Sync).map_err(|_| FrameError::Compression)?;
            let used = (self.compress.total_in() - before_in) as usize;
            input = &input[used..];
            // A sync flush is complete when it did not fill the output buffer.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    fn decode_block(&mut self, mut compressed: &[u8]) -> Result<Headers, FrameError> {
        let mut plain: Vec<u8> = Vec::with_capacity(compressed.len() * 4 + 64);
        while !compressed.is_empty() || plain.len() == plain.capacity() {
            if plain.len() == plain.capacity() {
                if plain.len() >= MAX_HEADER_BLOCK {
                    return Err(FrameError::HeaderBlock);
                }
                plain.reserve(plain.len().max(256));
            }
            let before_in = self.decompress.total_in();
            let before_out = self.decompress.total_out();
            match self.decompress.decompress_vec(compressed, &mut plain, FlushDecompress::Sync) {
                Ok(Status::StreamEnd) => return Err(FrameError::HeaderBlock),
                Ok(_) => {}
                Err(err) if err.needs_dictionary().is_some() => {
                    self.decompress.set_dictionary(HEADER_DICTIONARY).map_err(|_| FrameError::HeaderBlock)?;
                }
                Err(_) => return Err(FrameError::HeaderBlock),
            }
            let used = (self.decompress.total_in() - before_in) as usize;
            compressed = &compressed[used..];
            if used == 0 && self.decompress.total_out() == before_out && plain.len() < plain.capacity() {
                break;
            }
        }
        parse_block(&plain)
    }
}

fn parse_block(mut buf: &[u8]) -> Result<Headers, FrameError> {
    fn take<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], FrameError> {
        if buf.remaining() < 4 {
            return Err(FrameError::HeaderBlock);
        }
        let len = buf.get_u32() as usize;
        if buf.remaining() < len {
            return Err(FrameError::HeaderBlock);
        }
        let (head, tail) = buf.split_at(len);
        *buf = tail;
        Ok(head)
    }
    if buf.remaining() < 4 {
        return Err(FrameError::HeaderBlock);
    }
    let count = buf.get_u32() as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = std::str::from_utf8(take(&mut buf)?).map_err(|_| FrameError::HeaderBlock)?;
        let value = std::str::from_utf8(take(&mut buf)?).map_err(|_| FrameError::HeaderBlock)?;
        headers.push((name.to_ascii_lowercase(), value.to_owned()));
    }
    Ok(headers)
}

/// The first value of a header (SPDY joins several values with NUL), by lowercase name.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

fn control_header(out: &mut BytesMut, frame_type: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | 3);
    out.put_u16(frame_type);
    out.put_u8(flags);
    out.put_uint(len as u64, 3);
}

impl Frame {
    /// Appends the frame's wire form to `out`.
    pub fn encode(&self, codec: &mut HeaderCodec, out: &mut BytesMut) -> Result<(), FrameError> {
        match self {
            Frame::SynStream { stream_id, associated_to, priority, flags, headers } => {
                let block = codec.encode_block(headers)?;
                control_header(out, TYPE_SYN_STREAM, *flags, 10 + block.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(associated_to & 0x7fff_ffff);
                out.put_u8((priority & 0x7) << 5);
                out.put_u8(0);
                out.extend_from_slice(&block);
            }
            Frame::SynReply { stream_id, flags, headers } | Frame::Headers { stream_id, flags, headers } => {
                let frame_type = if matches!(self, Frame::SynReply { .. }) { TYPE_SYN_REPLY } else { TYPE_HEADERS };
                let block = codec.encode_block(headers)?;
                control_header(out, frame_type, *flags, 4 + block.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.extend_from_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                control_header(out, TYPE_RST_STREAM, 0, 8);
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::Settings { flags, entries } => {
                control_header(out, TYPE_SETTINGS, *flags, 4 + 8 * entries.len());
                out.put_u32(entries.len() as u32);
                for (flags, id, value) in entries {
                    out.put_u8(*flags);
                    out.put_uint(u64::from(*id), 3);
                    out.put_u32(*value);
                }
            }
            Frame::Ping { id } => {
                control_header(out, TYPE_PING, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway { last_good_stream_id, status } => {
                control_header(out, TYPE_GOAWAY, 0, 8);
                out.put_u32(last_good_stream_id & 0x7fff_ffff);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control_header(out, TYPE_WINDOW_UPDATE, 0, 8);
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(delta & 0x7fff_ffff);
            }
            Frame::Data { stream_id, flags, data } => {
                if data.len() > MAX_FRAME_PAYLOAD {
                    return Err(FrameError::TooLarge(data.len()));
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u8(*flags);
                out.put_uint(data.len() as u64, 3);
                out.extend_from_slice(data);
            }
            Frame::Unknown { .. } => return Err(FrameError::Malformed("unknown")),
        }
        Ok(())
    }

    /// Decodes one frame from the front of `buf` if it holds a whole one, consuming it.
    pub fn decode(codec: &mut HeaderCodec, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = ((buf[5] as usize) << 16) | ((buf[6] as usize) << 8) | buf[7] as usize;
        if buf.len() < 8 + len {
            buf.reserve(8 + len - buf.len());
            return Ok(None);
        }
        let head = buf.split_to(8);
        let mut payload = buf.split_to(len).freeze();
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            let stream_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data { stream_id, flags, data: payload }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != 3 {
            return Err(FrameError::Version(version));
        }
        let frame_type = u16::from_be_bytes([head[2], head[3]]);
        let need = |n: usize, name: &'static str| if len < n { Err(FrameError::Malformed(name)) } else { Ok(()) };
        let frame = match frame_type {
            TYPE_SYN_STREAM => {
                need(10, "SYN_STREAM")?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let associated_to = payload.get_u32() & 0x7fff_ffff;
                let priority = payload.get_u8() >> 5;
                payload.advance(1);
                let headers = codec.decode_block(&payload)?;
                Frame::SynStream { stream_id, associated_to, priority, flags, headers }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need(4, "SYN_REPLY")?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let headers = codec.decode_block(&payload)?;
                if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply { stream_id, flags, headers }
                } else {
                    Frame::Headers { stream_id, flags, headers }
                }
            }
            TYPE_RST_STREAM => {
                need(8, "RST_STREAM")?;
                Frame::RstStream { stream_id: payload.get_u32() & 0x7fff_ffff, status: payload.get_u32() }
            }
            TYPE_SETTINGS => {
                need(4, "SETTINGS")?;
                let count = payload.get_u32() as usize;
                if payload.remaining() < count.saturating_mul(8) {
                    return Err(FrameError::Malformed("SETTINGS"));
                }
                let entries = (0..count)
                    .map(|_| {
                        let word = payload.get_u32();
                        ((word >> 24) as u8, word & 0x00ff_ffff, payload.get_u32())
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            TYPE_PING => {
                need(4, "PING")?;
                Frame::Ping { id: payload.get_u32() }
            }
            TYPE_GOAWAY => {
                need(4, "GOAWAY")?;
                let last_good_stream_id = payload.get_u32() & 0x7fff_ffff;
                // SPDY/2 GOAWAY had no status; be lenient.
                let status = if payload.remaining() >= 4 { payload.get_u32() } else { 0 };
                Frame::GoAway { last_good_stream_id, status }
            }
            TYPE_WINDOW_UPDATE => {
                need(8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    delta: payload.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        };
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_spdy3_one() {
        // Length and Adler-32 (the zlib DICTID peers check) of the SPDY/3 dictionary.
        assert_eq!(HEADER_DICTIONARY.len(), 1423);
        let (mut a, mut b) = (1u32, 0u32);
        for byte in HEADER_DICTIONARY {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn frames_round_trip_through_one_connection_worth_of_zlib_state() {
        let mut tx = HeaderCodec::new();
        let mut rx = HeaderCodec::new();
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), "error".into())],
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 0,
                flags: FLAG_FIN,
                headers: vec![("streamtype".into(), "stdout".into()), ("port".into(), "8080".into())],
            },
            Frame::SynReply { stream_id: 3, flags: 0, headers: vec![] },
            Frame::Data { stream_id: 3, flags: FLAG_FIN, data: Bytes::from_static(b"hello") },
            Frame::WindowUpdate { stream_id: 3, delta: 65536 },
            Frame::Settings { flags: 0, entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 65536)] },
            Frame::Ping { id: 7 },
            Frame::RstStream { stream_id: 5, status: rst::CANCEL },
            Frame::GoAway { last_good_stream_id: 3, status: 0 },
        ];
        let mut wire = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut tx, &mut wire).unwrap();
        }
        // Feed the bytes one at a time: a decoder must wait for whole frames.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(frame) = Frame::decode(&mut rx, &mut buf).unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn a_header_block_that_is_not_zlib_is_an_error() {
        let mut rx = HeaderCodec::new();
        let mut buf = BytesMut::new();
        control_header(&mut buf, TYPE_SYN_REPLY, 0, 8);
        buf.put_u32(1);
        buf.put_u32(0xdead_beef);
        assert!(Frame::decode(&mut rx, &mut buf).is_err());
    }
}
