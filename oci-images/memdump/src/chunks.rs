//! The messages a dump to the backend is made of, and their reassembly.
//!
//! Every message starts with a one-line JSON header (compact, so it holds no
//! newline) whose `furnace_memdump` is the format's version, 1. A `chunk`
//! header is followed by `\n` and exactly `length` bytes of raw guest
//! memory; the others are the header alone, so `furnace backend` prints
//! them as text:
//!
//! ```text
//! {"furnace_memdump":1,"type":"begin","dump":ID,"start":S,"length":L,"chunk":C,"chunks":N}
//! {"furnace_memdump":1,"type":"chunk","dump":ID,"seq":I,"chunks":N,"offset":O,"address":A,"length":n}\n<n bytes>
//! {"furnace_memdump":1,"type":"end","dump":ID,"chunks":N,"length":L,"sha256":HEX}
//! {"furnace_memdump":1,"type":"abort","dump":ID,"error":TEXT}
//! ```
//!
//! Chunk `I` (0 ≤ I < N) holds the region's bytes [O, O+n), O = I·C, at
//! guest-physical address A = S+O; every chunk is C bytes but the last. The
//! relay delivers in order; a backend that restarted may see a message
//! again, which its `seq` tells. `sha256` is of the whole region, L bytes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Header {
    Begin {
        dump: String,
        /// The region's first guest-physical address and its size.
        start: u64,
        length: u64,
        /// Bytes per chunk (the last may be shorter) and how many chunks.
        chunk: u64,
        chunks: u64,
    },
    Chunk {
        dump: String,
        /// 0-based; `chunks` is the total, as in `begin`.
        seq: u64,
        chunks: u64,
        /// Where the bytes go in the region, and where they were in the guest.
        offset: u64,
        address: u64,
        length: u64,
    },
    End {
        dump: String,
        chunks: u64,
        length: u64,
        /// Lower-case hex SHA-256 of the region's `length` bytes.
        sha256: String,
    },
    /// The app gave up; no `end` follows.
    Abort { dump: String, error: String },
}

impl Header {
    pub fn dump(&self) -> &str {
        match self {
            Header::Begin { dump, .. }
            | Header::Chunk { dump, .. }
            | Header::End { dump, .. }
            | Header::Abort { dump, .. } => dump,
        }
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    furnace_memdump: u32,
    #[serde(flatten)]
    header: &'a Header,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    furnace_memdump: u32,
    #[serde(flatten)]
    header: Header,
}

/// The header line a chunk's bytes follow (with its `\n`), or a whole
/// begin, end or abort message.
pub fn encode_header(header: &Header) -> Vec<u8> {
    let mut out = serde_json::to_vec(&EnvelopeOut {
        furnace_memdump: VERSION,
        header,
    })
    .expect("a header serializes");
    if matches!(header, Header::Chunk { .. }) {
        out.push(b'\n');
    }
    out
}

/// One message: the header, and for a chunk its bytes.
pub fn encode(header: &Header, payload: &[u8]) -> Vec<u8> {
    let mut out = encode_header(header);
    out.extend_from_slice(payload);
    out
}

/// A message's header and a chunk's bytes; `Ok(None)` for a message that is
/// not part of a memdump (a backend hears other things too).
pub fn decode(message: &[u8]) -> Result<Option<(Header, &[u8])>, String> {
    let (json, payload) = match message.iter().position(|&b| b == b'\n') {
        Some(i) => (&message[..i], Some(&message[i + 1..])),
        None => (message, None),
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else {
        return Ok(None);
    };
    if value.get("furnace_memdump").is_none() {
        return Ok(None);
    }
    let envelope: EnvelopeIn =
        serde_json::from_value(value).map_err(|e| format!("a malformed memdump header: {e}"))?;
    if envelope.furnace_memdump != VERSION {
        return Err(format!(
            "memdump format version {} (this reads {VERSION})",
            envelope.furnace_memdump
        ));
    }
    let header = envelope.header;
    match (&header, payload) {
        (Header::Chunk { length, .. }, Some(bytes)) if bytes.len() as u64 == *length => {
            Ok(Some((header, bytes)))
        }
        (Header::Chunk { length, seq, .. }, bytes) => Err(format!(
            "chunk {seq} says {length} bytes and carries {}",
            bytes.map_or(0, <[u8]>::len)
        )),
        (_, None) => Ok(Some((header, &[]))),
        (_, Some(_)) => Err("bytes after a header that takes none".into()),
    }
}

/// How many chunks of `chunk` bytes a region of `length` bytes takes.
pub fn chunk_count(length: u64, chunk: u64) -> u64 {
    length.div_ceil(chunk)
}

/// What [`Reassembler::take`] did with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Not part of the dump being reassembled.
    Ignored,
    Begun,
    /// A chunk written; its length.
    Wrote(u64),
    /// A message seen before (a backend restart replays): skipped.
    Duplicate,
    /// The end, its digest checked.
    Done(Finished),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Finished {
    pub dump: String,
    pub start: u64,
    pub length: u64,
    pub chunks: u64,
    pub sha256: String,
}

struct Progress {
    dump: String,
    start: u64,
    length: u64,
    chunk: u64,
    chunks: u64,
    next_seq: u64,
    written: u64,
    hash: Sha256,
}

/// Rebuilds one dump, in order, from the messages a backend received: the
/// one named, or else the first that begins. Stop at [`Step::Done`].
pub struct Reassembler {
    want: Option<String>,
    current: Option<Progress>,
}

impl Reassembler {
    pub fn new(want: Option<String>) -> Reassembler {
        Reassembler {
            want,
            current: None,
        }
    }

    /// The chunks written so far and the total, once begun.
    pub fn progress(&self) -> Option<(u64, u64)> {
        self.current.as_ref().map(|p| (p.next_seq, p.chunks))
    }

    /// Takes one message; a chunk's bytes go to `out`. An error means the
    /// dump cannot be completed (a gap, a mismatch, an abort).
    pub fn take(&mut self, message: &[u8], out: &mut dyn Write) -> Result<Step, String> {
        let Some((header, payload)) = decode(message)? else {
            return Ok(Step::Ignored);
        };
        if self.want.as_deref().is_some_and(|w| w != header.dump()) {
            return Ok(Step::Ignored);
        }
        let Some(p) = &mut self.current else {
            return match header {
                Header::Begin {
                    dump,
                    start,
                    length,
                    chunk,
                    chunks,
                } => {
                    if chunk == 0 || chunks != chunk_count(length, chunk) {
                        return Err(format!(
                            "dump {dump}: {chunks} chunks of {chunk} bytes cannot hold {length}"
                        ));
                    }
                    self.current = Some(Progress {
                        dump,
                        start,
                        length,
                        chunk,
                        chunks,
                        next_seq: 0,
                        written: 0,
                        hash: Sha256::new(),
                    });
                    Ok(Step::Begun)
                }
                // The middle of a dump whose beginning this did not see.
                _ => Ok(Step::Ignored),
            };
        };
        if header.dump() != p.dump {
            return Ok(Step::Ignored);
        }
        let dump = p.dump.clone();
        match header {
            Header::Begin {
                start,
                length,
                chunk,
                chunks,
                ..
            } => {
                if (start, length, chunk, chunks) == (p.start, p.length, p.chunk, p.chunks) {
                    Ok(Step::Duplicate)
                } else {
                    Err(format!("dump {dump} began twice, differently"))
                }
            }
            Header::Chunk {
                seq,
                chunks,
                offset,
                address,
                length,
                ..
            } => {
                if seq < p.next_seq {
                    return Ok(Step::Duplicate);
                }
                if seq > p.next_seq {
                    return Err(format!(
                        "dump {dump}: chunk {} of {} is missing (chunk {seq} came)",
                        p.next_seq, p.chunks
                    ));
                }
                let expected = p.chunk.min(p.length - p.written);
                if chunks != p.chunks
                    || offset != p.written
                    || address != p.start + offset
                    || length != expected
                {
                    return Err(format!(
                        "dump {dump}: chunk {seq} is {length} bytes at offset {offset:#x} \
                         (address {address:#x}, {chunks} chunks); expected {expected} at {:#x} \
                         (address {:#x}, {} chunks)",
                        p.written,
                        p.start + p.written,
                        p.chunks
                    ));
                }
                out.write_all(payload)
                    .map_err(|e| format!("writing the dump: {e}"))?;
                p.hash.update(payload);
                p.written += length;
                p.next_seq += 1;
                Ok(Step::Wrote(length))
            }
            Header::End {
                chunks,
                length,
                sha256,
                ..
            } => {
                if chunks != p.chunks || length != p.length {
                    return Err(format!(
                        "dump {dump} ends with {chunks} chunks, {length} bytes; it began with {}, {}",
                        p.chunks, p.length
                    ));
                }
                if p.next_seq != p.chunks {
                    return Err(format!(
                        "dump {dump} ended after {} of {} chunks",
                        p.next_seq, p.chunks
                    ));
                }
                let ours = hex::encode(std::mem::take(&mut p.hash).finalize());
                if ours != sha256 {
                    return Err(format!(
                        "dump {dump}: the bytes hash to {ours}, the app sent {sha256}"
                    ));
                }
                let start = p.start;
                self.current = None;
                Ok(Step::Done(Finished {
                    dump,
                    start,
                    length,
                    chunks,
                    sha256,
                }))
            }
            Header::Abort { error, .. } => Err(format!("the app aborted dump {dump}: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: u64, offset: u64, length: u64) -> Header {
        Header::Chunk {
            dump: "d1".into(),
            seq,
            chunks: 3,
            offset,
            address: 0x10_0000 + offset,
            length,
        }
    }

    #[test]
    fn a_chunk_header_encodes_to_one_json_line_and_decodes_back_with_its_bytes() {
        let header = chunk(1, 4096, 5);
        let message = encode(&header, b"\n\0\xffab");
        let line_end = message.iter().position(|&b| b == b'\n').unwrap();
        assert_eq!(
            std::str::from_utf8(&message[..line_end]).unwrap(),
            r#"{"furnace_memdump":1,"type":"chunk","dump":"d1","seq":1,"chunks":3,"offset":4096,"address":1052672,"length":5}"#
        );
        // The bytes may hold newlines: only the first one ends the header.
        let (back, bytes) = decode(&message).unwrap().unwrap();
        assert_eq!((back, bytes), (header, &b"\n\0\xffab"[..]));
    }

    #[test]
    fn begin_end_and_abort_are_plain_json_and_round_trip() {
        let all = [
            Header::Begin {
                dump: "d1".into(),
                start: 0,
                length: 10,
                chunk: 4,
                chunks: 3,
            },
            Header::End {
                dump: "d1".into(),
                chunks: 3,
                length: 10,
                sha256: "00".into(),
            },
            Header::Abort {
                dump: "d1".into(),
                error: "line one\nline two".into(),
            },
        ];
        for header in all {
            let message = encode(&header, &[]);
            assert!(!message.contains(&b'\n'), "{message:?}");
            let value: serde_json::Value = serde_json::from_slice(&message).unwrap();
            assert_eq!(value["furnace_memdump"], 1);
            assert_eq!(decode(&message).unwrap(), Some((header, &[][..])));
        }
    }

    #[test]
    fn decoding_refuses_a_wrong_length_and_ignores_other_messages() {
        let mut message = encode(&chunk(0, 0, 4), b"abcd");
        message.pop();
        assert!(decode(&message).unwrap_err().contains("carries 3"));
        let mut no_bytes = encode_header(&chunk(0, 0, 4));
        no_bytes.pop(); // no newline: a chunk without its bytes
        assert!(decode(&no_bytes).is_err());
        assert_eq!(decode(b"scan finished").unwrap(), None);
        assert_eq!(
            decode(br#"{"report":"furnace-hidden-procs"}"#).unwrap(),
            None
        );
        let v2 = br#"{"furnace_memdump":2,"type":"abort","dump":"x","error":"y"}"#;
        assert!(decode(v2).unwrap_err().contains("version 2"));
    }

    /// The messages furnace-memdump sends for `region`, at address 0x100000.
    fn messages(dump: &str, region: &[u8], chunk: u64) -> Vec<Vec<u8>> {
        let length = region.len() as u64;
        let chunks = chunk_count(length, chunk);
        let mut out = vec![encode(
            &Header::Begin {
                dump: dump.into(),
                start: 0x10_0000,
                length,
                chunk,
                chunks,
            },
            &[],
        )];
        for (seq, bytes) in region.chunks(chunk as usize).enumerate() {
            let offset = seq as u64 * chunk;
            let header = Header::Chunk {
                dump: dump.into(),
                seq: seq as u64,
                chunks,
                offset,
                address: 0x10_0000 + offset,
                length: bytes.len() as u64,
            };
            out.push(encode(&header, bytes));
        }
        out.push(encode(
            &Header::End {
                dump: dump.into(),
                chunks,
                length,
                sha256: hex::encode(Sha256::digest(region)),
            },
            &[],
        ));
        out
    }

    fn region() -> Vec<u8> {
        (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn the_reassembler_rebuilds_the_region_and_skips_replays_and_other_dumps() {
        let region = region();
        let ours = messages("d1", &region, 4096);
        let other = messages("d2", b"something else", 4);
        let mut stream = vec![b"hello from another app".to_vec()];
        // Another dump interleaved, and a backend restart replaying two messages.
        stream.extend(ours[..3].iter().cloned());
        stream.extend(other.iter().cloned());
        stream.extend(ours[1..3].iter().cloned());
        stream.extend(ours[3..].iter().cloned());
        let mut r = Reassembler::new(None);
        let mut out = Vec::new();
        let steps: Vec<Step> = stream
            .iter()
            .map(|m| r.take(m, &mut out).unwrap())
            .collect();
        assert_eq!(out, region);
        assert_eq!(steps[1], Step::Begun);
        assert_eq!(steps[2..4], [Step::Wrote(4096), Step::Wrote(4096)]);
        assert!(steps[4..4 + other.len()]
            .iter()
            .all(|s| *s == Step::Ignored));
        let finished = steps.last().unwrap();
        assert!(
            matches!(finished, Step::Done(f) if f.length == 10_000 && f.chunks == 3 && f.start == 0x10_0000),
            "{finished:?}"
        );
        // A named dump is picked out of the same stream.
        let (mut r, mut out) = (Reassembler::new(Some("d2".into())), Vec::new());
        for m in &stream {
            r.take(m, &mut out).unwrap();
        }
        assert_eq!(out, b"something else");
    }

    #[test]
    fn a_gap_a_bad_digest_or_an_abort_fails_the_reassembly() {
        let region = region();
        let ours = messages("d1", &region, 4096);
        let fails = |stream: Vec<&Vec<u8>>| {
            let mut r = Reassembler::new(None);
            let mut out = Vec::new();
            stream
                .into_iter()
                .map(|m| r.take(m, &mut out))
                .find_map(Result::err)
                .expect("the reassembly fails")
        };
        let gap = fails(vec![&ours[0], &ours[1], &ours[3]]);
        assert!(gap.contains("chunk 1 of 3 is missing"), "{gap}");
        let early_end = fails(vec![&ours[0], &ours[1], &ours[4]]);
        assert!(early_end.contains("after 1 of 3 chunks"), "{early_end}");
        let mut flipped = ours[2].clone();
        *flipped.last_mut().unwrap() ^= 1;
        let digest = fails(vec![&ours[0], &ours[1], &flipped, &ours[3], &ours[4]]);
        assert!(digest.contains("hash to"), "{digest}");
        let abort = encode(
            &Header::Abort {
                dump: "d1".into(),
                error: "reading 4096 bytes at 0x2000: GUEST_GONE".into(),
            },
            &[],
        );
        let aborted = fails(vec![&ours[0], &abort]);
        assert!(aborted.contains("GUEST_GONE"), "{aborted}");
    }
}
