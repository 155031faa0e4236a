//! The ttrpc wire protocol: each message is a 10-byte big-endian header
//! (payload length u32, stream id u32, type u8, flags u8) and a protobuf
//! payload, a `ttrpc.Request` from the client or a `ttrpc.Response` back.
//! Clients number their streams with odd ids. See docs/protocol.md.

use std::io::{self, IoSlice, Read, Write};

pub const HEADER_LEN: usize = 10;
/// The largest payload either side accepts, as in ttrpc.
pub const MAX_PAYLOAD: u32 = 4 << 20;

pub const TYPE_REQUEST: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub length: u32,
    pub stream_id: u32,
    pub kind: u8,
    pub flags: u8,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(&self.length.to_be_bytes());
        out[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        out[8] = self.kind;
        out[9] = self.flags;
        out
    }

    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Self {
        Header {
            length: u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")),
            stream_id: u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")),
            kind: bytes[8],
            flags: bytes[9],
        }
    }
}

/// Reads the next header; `None` at a clean end of stream.
pub fn read_header(reader: &mut impl Read) -> io::Result<Option<Header>> {
    let mut bytes = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match reader.read(&mut bytes[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(Header::decode(&bytes)))
}

/// Reads a payload of `length` bytes into the front of `buf` and returns it.
/// `buf` is reused between frames and only grows, so it is not re-zeroed for
/// every frame. The caller has checked `length` against [`MAX_PAYLOAD`].
pub fn read_payload<'b>(
    reader: &mut impl Read,
    length: u32,
    buf: &'b mut Vec<u8>,
) -> io::Result<&'b [u8]> {
    let length = length as usize;
    if buf.len() < length {
        buf.resize(length, 0);
    }
    reader.read_exact(&mut buf[..length])?;
    Ok(&buf[..length])
}

/// Writes one frame with a single vectored write where the socket takes it,
/// so header and payload need not be copied together.
pub fn write_frame(
    writer: &mut impl Write,
    stream_id: u32,
    kind: u8,
    payload: &[u8],
) -> io::Result<()> {
    let length = u32::try_from(payload.len())
        .ok()
        .filter(|&n| n <= MAX_PAYLOAD)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "payload exceeds the frame limit",
            )
        })?;
    let header = Header {
        length,
        stream_id,
        kind,
        flags: 0,
    }
    .encode();
    let mut slices = [IoSlice::new(&header), IoSlice::new(payload)];
    let mut slices: &mut [IoSlice] = &mut slices;
    while !slices.is_empty() {
        match writer.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    writer.flush()
}

/// gRPC status codes, as ttrpc uses them.
pub mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
}

/// The `type_url` under which a failed call's [`crate::v1::Error`] travels in
/// the status details.
pub const ERROR_TYPE_URL: &str = "type.googleapis.com/furnace.vmi.v1.Error";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_big_endian() {
        let h = Header {
            length: 0x0102_0304,
            stream_id: 7,
            kind: TYPE_REQUEST,
            flags: 0,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[..4], &[1, 2, 3, 4]);
        assert_eq!(Header::decode(&bytes), h);
    }

    #[test]
    fn frames_read_back_and_a_short_header_is_an_error() {
        let mut out = Vec::new();
        write_frame(&mut out, 3, TYPE_RESPONSE, b"hello").unwrap();
        let mut cursor = io::Cursor::new(out);
        let h = read_header(&mut cursor).unwrap().unwrap();
        assert_eq!((h.length, h.stream_id, h.kind), (5, 3, TYPE_RESPONSE));
        let mut buf = vec![0u8; 64];
        assert_eq!(
            read_payload(&mut cursor, h.length, &mut buf).unwrap(),
            b"hello"
        );
        assert!(read_header(&mut cursor).unwrap().is_none());
        let err = read_header(&mut io::Cursor::new(vec![0u8; 4])).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
