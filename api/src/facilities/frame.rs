//! Facilities frames: a 4-byte big-endian length, then one protobuf
//! [`Frame`]. The same framing runs on the app's socket and on the relay's
//! connection to the backend.

use crate::fac::v1::{frame::Body, Frame};
use prost::Message;
use std::io::{self, Read, Write};

/// Framing and protobuf overhead on top of a sealed message's ciphertext.
pub const FRAME_OVERHEAD: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {len} bytes is over the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("an undecodable frame: {0}")]
    Undecodable(#[from] prost::DecodeError),
    #[error("a frame with no body")]
    Empty,
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub fn encode(body: Body) -> Vec<u8> {
    let frame = Frame { body: Some(body) };
    let len = frame.encoded_len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    frame.encode(&mut out).expect("a Vec grows");
    out
}

/// Decodes a frame's payload; its ciphertext, if any, stays in `payload`'s
/// buffer.
pub fn decode(payload: Vec<u8>) -> Result<Body, FrameError> {
    Frame::decode(bytes::Bytes::from(payload))?
        .body
        .ok_or(FrameError::Empty)
}

/// Checks a frame length read off the wire.
pub fn check_len(header: [u8; 4], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(len)
}

pub fn write(writer: &mut impl Write, body: Body) -> io::Result<()> {
    writer.write_all(&encode(body))?;
    writer.flush()
}

/// Reads one frame; `None` at a clean end of stream. An undecodable frame
/// is an error but leaves the stream at the next frame.
pub fn read(reader: &mut impl Read, limit: usize) -> Result<Option<Body>, FrameError> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < 4 {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = check_len(header, limit)?;
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload)?;
    decode(payload).map(Some)
}
