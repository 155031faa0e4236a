//! GDB Remote Serial Protocol framing: `$payload#cs`, where `cs` is the
//! two-hex-digit sum of the payload bytes as sent. `#`, `$`, `}` and `*` in a
//! payload are escaped as `}` followed by the byte XOR 0x20; a stub may
//! run-length encode its replies as `X*n`, meaning X repeated `n - 29` more
//! times (gdb docs, "Overview" of the remote protocol).
//!
//! The `gdb-protocol` crate implements this for the stub side only and is
//! unmaintained; the framing is small, so it lives here, with its tests.

/// Escapes `payload` and frames it.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(payload.len() + 4);
    for &b in payload {
        if matches!(b, b'#' | b'$' | b'}' | b'*') {
            body.extend_from_slice(&[b'}', b ^ 0x20]);
        } else {
            body.push(b);
        }
    }
    let sum = checksum(&body);
    let mut framed = Vec::with_capacity(body.len() + 4);
    framed.push(b'$');
    framed.extend_from_slice(&body);
    framed.extend_from_slice(format!("#{sum:02x}").as_bytes());
    framed
}

fn checksum(body: &[u8]) -> u8 {
    body.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

/// What a read of the stream yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A packet's payload, unescaped and expanded.
    Packet(Vec<u8>),
    /// A packet whose checksum did not match (the stub resends on `-`).
    Corrupt,
    /// An acknowledgement between packets: `+` (true) or `-` (false).
    Ack(bool),
    /// The out-of-band `^C` (0x03) a debugger sends to stop the target.
    Interrupt,
}

/// Longest payload accepted from a stub: QEMU's `PacketSize` is 0x1000 and
/// run-length expansion stays within a few times that.
pub const MAX_PACKET: usize = 1 << 20;

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    TooLong,
    /// A run-length marker with nothing to repeat, or a bad count.
    BadRunLength,
    /// `}` at the very end of a payload.
    DanglingEscape,
}

/// Incremental decoder: feed it bytes as they arrive, take frames out.
/// Anything outside a packet other than an ack or an interrupt is skipped.
#[derive(Default)]
pub struct Decoder {
    state: State,
    body: Vec<u8>,
    sum_digits: Vec<u8>,
}

#[derive(Default, PartialEq, Eq)]
enum State {
    #[default]
    Between,
    Body,
    Checksum,
}

impl Decoder {
    /// Consumes bytes up to and including the end of one frame; returns the
    /// frame and how many bytes were used, or `None` and `data.len()` when the
    /// frame is not complete yet.
    pub fn feed(&mut self, data: &[u8]) -> Result<(Option<Frame>, usize), DecodeError> {
        for (i, &b) in data.iter().enumerate() {
            match self.state {
                State::Between => match b {
                    b'$' => {
                        self.state = State::Body;
                        self.body.clear();
                    }
                    b'+' | b'-' => return Ok((Some(Frame::Ack(b == b'+')), i + 1)),
                    0x03 => return Ok((Some(Frame::Interrupt), i + 1)),
                    _ => {}
                },
                State::Body => {
                    if b == b'#' {
                        self.state = State::Checksum;
                        self.sum_digits.clear();
                    } else if self.body.len() == MAX_PACKET {
                        self.state = State::Between;
                        return Err(DecodeError::TooLong);
                    } else {
                        self.body.push(b);
                    }
                }
                State::Checksum => {
                    self.sum_digits.push(b);
                    if self.sum_digits.len() == 2 {
                        self.state = State::Between;
                        let sent = std::str::from_utf8(&self.sum_digits)
                            .ok()
                            .and_then(|s| u8::from_str_radix(s, 16).ok());
                        let frame = if sent == Some(checksum(&self.body)) {
                            Frame::Packet(expand(&self.body)?)
                        } else {
                            Frame::Corrupt
                        };
                        return Ok((Some(frame), i + 1));
                    }
                }
            }
        }
        Ok((None, data.len()))
    }
}

/// Undoes escaping and run-length encoding.
fn expand(body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(body.len());
    let mut bytes = body.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'}' => out.push(bytes.next().ok_or(DecodeError::DanglingEscape)? ^ 0x20),
            b'*' => {
                let count = bytes.next().ok_or(DecodeError::BadRunLength)?;
                let last = *out.last().ok_or(DecodeError::BadRunLength)?;
                let repeat = usize::from(count.checked_sub(29).ok_or(DecodeError::BadRunLength)?);
                if out.len() + repeat > MAX_PACKET {
                    return Err(DecodeError::TooLong);
                }
                out.extend(std::iter::repeat_n(last, repeat));
            }
            _ => out.push(b),
        }
    }
    Ok(out)
}

/// Bytes from hex digits; `None` on an odd length or a non-hex digit.
/// Lowercase hex of `bytes`, as register values travel in `g` and `P`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(stream: &[u8]) -> Vec<Frame> {
        let mut decoder = Decoder::default();
        let mut frames = Vec::new();
        let mut rest = stream;
        while !rest.is_empty() {
            let (frame, used) = decoder.feed(rest).unwrap();
            frames.extend(frame);
            rest = &rest[used..];
        }
        frames
    }

    #[test]
    fn a_packet_is_framed_with_its_checksum() {
        assert_eq!(encode(b"OK"), b"$OK#9a");
        assert_eq!(encode(b"?"), b"$?#3f");
        assert_eq!(encode(b""), b"$#00");
    }

    #[test]
    fn special_bytes_are_escaped_and_come_back_unchanged() {
        let payload = b"X1000,4:#$}*";
        let framed = encode(payload);
        assert_eq!(&framed[..8], b"$X1000,4");
        assert_eq!(&framed[9..17], b"}\x03}\x04}]}\x0a");
        assert_eq!(decode_all(&framed), [Frame::Packet(payload.to_vec())]);
    }

    #[test]
    fn acks_are_frames_of_their_own_noise_is_skipped_and_split_reads_join() {
        let stream = [b"+$OK#9a-garbage".as_slice(), &encode(b"T05thread:01;")].concat();
        let mut decoder = Decoder::default();
        let mut frames = Vec::new();
        for byte in stream.chunks(1) {
            if let (Some(frame), _) = decoder.feed(byte).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(
            frames,
            [
                Frame::Ack(true),
                Frame::Packet(b"OK".to_vec()),
                Frame::Ack(false),
                Frame::Packet(b"T05thread:01;".to_vec())
            ]
        );
    }

    #[test]
    fn a_bad_checksum_is_reported_as_corrupt_not_accepted() {
        assert_eq!(decode_all(b"$OK#00"), [Frame::Corrupt]);
        assert_eq!(decode_all(b"$OK#zz"), [Frame::Corrupt]);
    }

    #[test]
    fn run_length_encoding_expands() {
        // "0* " is '0' repeated 32 - 29 = 3 more times.
        let body = b"0* ";
        let framed = [
            b"$".as_slice(),
            body,
            format!("#{:02x}", checksum(body)).as_bytes(),
        ]
        .concat();
        assert_eq!(decode_all(&framed), [Frame::Packet(b"0000".to_vec())]);
    }

    #[test]
    fn malformed_payloads_are_typed_errors() {
        assert_eq!(expand(b"*a"), Err(DecodeError::BadRunLength));
        assert_eq!(expand(b"0*\x01"), Err(DecodeError::BadRunLength));
        assert_eq!(expand(b"ab}"), Err(DecodeError::DanglingEscape));
        let mut decoder = Decoder::default();
        let huge = [b"$".as_slice(), &vec![b'a'; MAX_PACKET + 1]].concat();
        assert_eq!(decoder.feed(&huge).err(), Some(DecodeError::TooLong));
    }

    #[test]
    fn hex_decodes_and_rejects_garbage() {
        assert_eq!(unhex(b"0fa0"), Some(vec![0x0f, 0xa0]));
        assert_eq!(unhex(b"0fa"), None);
        assert_eq!(unhex(b"zz"), None);
    }
}
