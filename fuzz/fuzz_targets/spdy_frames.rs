//! SPDY/3.1 frames and zlib header blocks as a streaming client sends them, decoded the way a connection
//! reads its socket (one header zlib stream for the connection's life). Every frame that decodes must
//! encode again and decode back to itself through a second codec pair, as the other end of a connection.
#![no_main]

use berth_streaming::spdy::frame::{Frame, FrameError, HeaderCodec};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut incoming = HeaderCodec::new();
    let (mut encoder, mut decoder) = (HeaderCodec::new(), HeaderCodec::new());
    let mut buf = BytesMut::from(data);
    loop {
        let frame = match Frame::decode(&mut incoming, &mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return,
        };
        let mut wire = BytesMut::new();
        match frame.encode(&mut encoder, &mut wire) {
            Ok(()) => {}
            Err(FrameError::Malformed("unknown") | FrameError::TooLarge(_)) => continue,
            Err(err) => panic!("{frame:?} decoded but does not encode: {err}"),
        }
        let again = Frame::decode(&mut decoder, &mut wire)
            .unwrap_or_else(|e| panic!("{frame:?} encoded to bytes that do not decode: {e}"))
            .unwrap_or_else(|| panic!("{frame:?} encoded to an incomplete frame"));
        assert_eq!(again, frame, "a frame changed on its way through encode and decode");
        assert!(wire.is_empty(), "{frame:?} encoded to more than one frame");
    }
});
