//! A connection's reply buffer. Replies are encoded in place behind a little
//! headroom, where the frame header and the `ttrpc.Response` prefix go last, so
//! a read of guest memory is copied once, from guest RAM into the frame, and
//! the buffer is reused (never re-zeroed) from call to call.

use furnace_api::wire::{Header, HEADER_LEN, TYPE_RESPONSE};
use prost::encoding::{encode_varint, encoded_len_varint};

/// Frame header, the `payload` field's tag, and its length as a varint.
const HEADROOM: usize = HEADER_LEN + 1 + 10;
/// `ttrpc.Response.payload` is field 2, length-delimited.
const RESPONSE_PAYLOAD_TAG: u8 = 0x12;
/// A `bytes` message's `data` (`furnace.vmi.v1.Bytes`) is field 1, length-delimited.
const BYTES_DATA_TAG: u8 = 0x0a;

pub struct Reply {
    buf: Vec<u8>,
    end: usize,
}

impl Default for Reply {
    fn default() -> Self {
        Reply {
            buf: vec![0; HEADROOM],
            end: HEADROOM,
        }
    }
}

impl Reply {
    fn reserve(&mut self, n: usize) -> &mut [u8] {
        let start = HEADROOM;
        if self.buf.len() < start + n {
            self.buf.resize(start + n, 0);
        }
        self.end = start + n;
        &mut self.buf[start..start + n]
    }

    /// The reply is an already encoded message.
    pub fn encoded(&mut self, message: &[u8]) {
        self.reserve(message.len()).copy_from_slice(message);
    }

    /// The reply is a `Bytes{data}` of `size` bytes that `fill` writes in place.
    pub fn bytes_with<E>(
        &mut self,
        size: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let prefix = 1 + encoded_len_varint(size as u64);
        let out = self.reserve(prefix + size);
        out[0] = BYTES_DATA_TAG;
        let mut varint = &mut out[1..prefix];
        encode_varint(size as u64, &mut varint);
        fill(&mut out[prefix..])
    }

    /// The length of the reply's message, without the frame around it.
    pub fn payload_len(&self) -> usize {
        self.end - HEADROOM
    }

    /// The complete response frame for `stream_id`.
    pub fn frame(&mut self, stream_id: u32) -> &[u8] {
        let payload_len = self.end - HEADROOM;
        let mut prefix = [0u8; HEADROOM];
        let mut at = HEADER_LEN;
        if payload_len > 0 {
            prefix[at] = RESPONSE_PAYLOAD_TAG;
            at += 1;
            let mut varint = &mut prefix[at..];
            encode_varint(payload_len as u64, &mut varint);
            at += encoded_len_varint(payload_len as u64);
        }
        let length = (at - HEADER_LEN + payload_len) as u32;
        prefix[..HEADER_LEN].copy_from_slice(
            &Header {
                length,
                stream_id,
                kind: TYPE_RESPONSE,
                flags: 0,
            }
            .encode(),
        );
        let start = HEADROOM - at;
        self.buf[start..HEADROOM].copy_from_slice(&prefix[..at]);
        &self.buf[start..self.end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use furnace_api::ttrpc::Response;
    use furnace_api::v1;
    use prost::Message;

    fn decode(frame: &[u8]) -> Response {
        let header = Header::decode(frame[..HEADER_LEN].try_into().unwrap());
        assert_eq!(header.length as usize, frame.len() - HEADER_LEN);
        assert_eq!((header.stream_id, header.kind), (7, TYPE_RESPONSE));
        Response::decode(&frame[HEADER_LEN..]).unwrap()
    }

    #[test]
    fn in_place_frames_decode_as_ordinary_responses() {
        let mut reply = Reply::default();
        for size in [0usize, 1, 127, 128, 300_000, 5] {
            reply
                .bytes_with(size, |out| -> Result<(), ()> {
                    out.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
                    Ok(())
                })
                .unwrap();
            let response = decode(reply.frame(7));
            assert!(response.status.is_none());
            let bytes = v1::Bytes::decode(response.payload.as_slice()).unwrap();
            assert_eq!(bytes.data.len(), size);
            assert!(bytes.data.iter().enumerate().all(|(i, b)| *b == i as u8));
        }
        reply.encoded(&v1::Integer { value: 42 }.encode_to_vec());
        let response = decode(reply.frame(7));
        assert_eq!(
            v1::Integer::decode(response.payload.as_slice())
                .unwrap()
                .value,
            42
        );
        reply.encoded(&[]);
        assert!(decode(reply.frame(7)).payload.is_empty());
    }
}
