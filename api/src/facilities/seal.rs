//! End-to-end encryption between an app and its tenant backend
//! (docs/facilities.md, "Encryption"). Two one-way Noise handshakes, one per
//! direction, so that neither side's ciphertext depends on state the other
//! side could lose in a restart:
//! - upstream, `Noise_X`: the app's first message carries its static key,
//!   encrypted to the backend's pinned key; the backend checks it against
//!   its allow list;
//! - downstream, `Noise_K`: the backend answers to the app's key, binding
//!   the upstream handshake hash, which proves to the app that the pinned
//!   backend read its Hello.
//!
//! Each direction then seals messages statelessly, with the nonce derived
//! from the message's sequence number, so a relay can retransmit a message
//! after a reconnect and the receiver decrypts it the same way.

use super::keys::{PrivateKey, PublicKey};
use crate::fac::v1::Kind;

const UPSTREAM: &str = "Noise_X_25519_ChaChaPoly_BLAKE2s";
const DOWNSTREAM: &str = "Noise_K_25519_ChaChaPoly_BLAKE2s";
const UPSTREAM_PROLOGUE: &[u8] = b"furnace-fac/1 app->backend";
const DOWNSTREAM_PROLOGUE: &[u8] = b"furnace-fac/1 backend->app";
/// The largest Noise message, and the AEAD tag each one carries.
const NOISE_MAX: usize = 65535;
const TAG: usize = 16;
pub const CHUNK_PLAINTEXT: usize = NOISE_MAX - TAG;
/// kind (1), request id (8), total plaintext length (8).
const INNER_HEADER: usize = 17;
/// Chunks per message: the nonce is `seq * 65536 + chunk`.
const MAX_CHUNKS: usize = 65536;
/// Sequence numbers from here on would wrap the nonce.
const MAX_SEQ: u64 = 1 << 48;

pub(crate) fn upstream_params() -> snow::params::NoiseParams {
    UPSTREAM.parse().expect("a valid Noise pattern")
}

fn downstream_params() -> snow::params::NoiseParams {
    DOWNSTREAM.parse().expect("a valid Noise pattern")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the handshake failed: {0}")]
    Handshake(String),
    #[error("message {seq} does not decrypt: {why}")]
    Corrupt { seq: u64, why: &'static str },
    #[error("a message of {0} bytes is larger than one sealed message can carry")]
    TooLarge(usize),
    #[error("this session has used up its sequence numbers; open a new one")]
    Exhausted,
}

fn handshake_error(e: snow::Error) -> SealError {
    SealError::Handshake(e.to_string())
}

/// One direction of a session: seals or opens by sequence number.
pub struct Channel {
    transport: snow::StatelessTransportState,
}

/// The sealed size of `len` bytes of data.
pub fn sealed_len(len: usize) -> usize {
    let plain = len + INNER_HEADER;
    plain + plain.div_ceil(CHUNK_PLAINTEXT).max(1) * TAG
}

impl Channel {
    pub fn seal(
        &self,
        seq: u64,
        kind: Kind,
        request_id: u64,
        data: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        if seq >= MAX_SEQ {
            return Err(SealError::Exhausted);
        }
        let total = sealed_len(data.len());
        if total.div_ceil(NOISE_MAX) > MAX_CHUNKS {
            return Err(SealError::TooLarge(data.len()));
        }
        let mut first = Vec::with_capacity(CHUNK_PLAINTEXT.min(INNER_HEADER + data.len()));
        first.push(kind as u8);
        first.extend_from_slice(&request_id.to_be_bytes());
        first.extend_from_slice(&(data.len() as u64).to_be_bytes());
        let head = (CHUNK_PLAINTEXT - INNER_HEADER).min(data.len());
        first.extend_from_slice(&data[..head]);
        let mut out = vec![0u8; total];
        let mut written = 0;
        let chunks = std::iter::once(first.as_slice()).chain(data[head..].chunks(CHUNK_PLAINTEXT));
        for (i, chunk) in chunks.enumerate() {
            let n = self
                .transport
                .write_message(nonce(seq, i), chunk, &mut out[written..])
                .map_err(|_| SealError::TooLarge(data.len()))?;
            written += n;
        }
        debug_assert_eq!(written, total);
        out.truncate(written);
        Ok(out)
    }

    /// Opens a message sealed with [`Channel::seal`], checking that its
    /// clear fields are the ones it was sealed under.
    pub fn open(
        &self,
        seq: u64,
        kind: Kind,
        request_id: u64,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let corrupt = |why| SealError::Corrupt { seq, why };
        let mut chunks = ciphertext.chunks(NOISE_MAX);
        let first = chunks.next().ok_or(corrupt("it is empty"))?;
        let mut buf = vec![0u8; NOISE_MAX];
        let n = self
            .transport
            .read_message(nonce(seq, 0), first, &mut buf)
            .map_err(|_| corrupt("its first chunk fails authentication"))?;
        if n < INNER_HEADER {
            return Err(corrupt("its header is short"));
        }
        if buf[0] != kind as u8 || buf[1..9] != request_id.to_be_bytes() {
            return Err(corrupt("its clear fields were altered"));
        }
        let len = u64::from_be_bytes(buf[9..17].try_into().expect("8 bytes"));
        if sealed_len(usize::try_from(len).unwrap_or(usize::MAX)) != ciphertext.len() {
            return Err(corrupt("its length does not match its header"));
        }
        let mut data = Vec::with_capacity(len as usize);
        data.extend_from_slice(&buf[INNER_HEADER..n]);
        for (i, chunk) in chunks.enumerate() {
            let n = self
                .transport
                .read_message(nonce(seq, i + 1), chunk, &mut buf)
                .map_err(|_| corrupt("a chunk fails authentication"))?;
            data.extend_from_slice(&buf[..n]);
        }
        Ok(data)
    }
}

fn nonce(seq: u64, chunk: usize) -> u64 {
    (seq << 16) | chunk as u64
}

/// The app's side of opening a session: the Hello to send and the upstream
/// channel. Keep [`AppHandshake`] to check the backend's Welcome.
pub struct AppHandshake {
    pub hello: Vec<u8>,
    hash: Vec<u8>,
    app_key: PrivateKey,
    backend: PublicKey,
}

impl AppHandshake {
    pub fn start(
        app_key: &PrivateKey,
        backend: &PublicKey,
    ) -> Result<(AppHandshake, Channel), SealError> {
        let mut state = snow::Builder::new(upstream_params())
            .prologue(UPSTREAM_PROLOGUE)
            .and_then(|b| b.local_private_key(&app_key.0))
            .and_then(|b| b.remote_public_key(&backend.0))
            .and_then(|b| b.build_initiator())
            .map_err(handshake_error)?;
        let mut hello = vec![0u8; 256];
        let n = state
            .write_message(&[], &mut hello)
            .map_err(handshake_error)?;
        hello.truncate(n);
        let hash = state.get_handshake_hash().to_vec();
        let transport = state
            .into_stateless_transport_mode()
            .map_err(handshake_error)?;
        Ok((
            AppHandshake {
                hello,
                hash,
                app_key: app_key.clone(),
                backend: *backend,
            },
            Channel { transport },
        ))
    }

    /// Checks the backend's Welcome; a Welcome from any key but the pinned
    /// one, or for another Hello, fails.
    pub fn finish(&self, welcome: &[u8]) -> Result<Channel, SealError> {
        let mut state = snow::Builder::new(downstream_params())
            .prologue(DOWNSTREAM_PROLOGUE)
            .and_then(|b| b.local_private_key(&self.app_key.0))
            .and_then(|b| b.remote_public_key(&self.backend.0))
            .and_then(|b| b.build_responder())
            .map_err(handshake_error)?;
        let mut payload = vec![0u8; 256];
        let n = state.read_message(welcome, &mut payload).map_err(|_| {
            SealError::Handshake("the Welcome is not from the pinned backend key".into())
        })?;
        if payload[..n] != self.hash[..] {
            return Err(SealError::Handshake(
                "the Welcome answers another session's Hello".into(),
            ));
        }
        let transport = state
            .into_stateless_transport_mode()
            .map_err(handshake_error)?;
        Ok(Channel { transport })
    }
}

/// The backend's side: reads a Hello, learning the app's key.
pub struct BackendHandshake {
    pub app: PublicKey,
    hash: Vec<u8>,
}

impl BackendHandshake {
    /// Reads a Hello. A Hello sealed to another backend key fails here.
    pub fn read_hello(
        backend_key: &PrivateKey,
        hello: &[u8],
    ) -> Result<(BackendHandshake, Channel), SealError> {
        let mut state = snow::Builder::new(upstream_params())
            .prologue(UPSTREAM_PROLOGUE)
            .and_then(|b| b.local_private_key(&backend_key.0))
            .and_then(|b| b.build_responder())
            .map_err(handshake_error)?;
        state.read_message(hello, &mut []).map_err(|_| {
            SealError::Handshake("the Hello is not sealed to this backend's key".into())
        })?;
        let app = state
            .get_remote_static()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .map(PublicKey)
            .ok_or_else(|| SealError::Handshake("the Hello carries no app key".into()))?;
        let hash = state.get_handshake_hash().to_vec();
        let transport = state
            .into_stateless_transport_mode()
            .map_err(handshake_error)?;
        Ok((BackendHandshake { app, hash }, Channel { transport }))
    }

    /// The Welcome for this app, and the downstream channel to it.
    pub fn welcome(&self, backend_key: &PrivateKey) -> Result<(Vec<u8>, Channel), SealError> {
        let mut state = snow::Builder::new(downstream_params())
            .prologue(DOWNSTREAM_PROLOGUE)
            .and_then(|b| b.local_private_key(&backend_key.0))
            .and_then(|b| b.remote_public_key(&self.app.0))
            .and_then(|b| b.build_initiator())
            .map_err(handshake_error)?;
        let mut welcome = vec![0u8; 256];
        let n = state
            .write_message(&self.hash, &mut welcome)
            .map_err(handshake_error)?;
        welcome.truncate(n);
        let transport = state
            .into_stateless_transport_mode()
            .map_err(handshake_error)?;
        Ok((welcome, Channel { transport }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::Keypair;
    use super::*;

    fn session() -> (Keypair, Keypair, Channel, Channel, Channel, Channel) {
        let app = Keypair::generate();
        let backend = Keypair::generate();
        let (hs, app_up) = AppHandshake::start(&app.private, &backend.public).unwrap();
        let (be, be_up) = BackendHandshake::read_hello(&backend.private, &hs.hello).unwrap();
        assert_eq!(be.app, app.public);
        let (welcome, be_down) = be.welcome(&backend.private).unwrap();
        let app_down = hs.finish(&welcome).unwrap();
        (app, backend, app_up, be_up, be_down, app_down)
    }

    #[test]
    fn both_directions_round_trip_any_size() {
        let (_, _, app_up, be_up, be_down, app_down) = session();
        for len in [
            0,
            1,
            CHUNK_PLAINTEXT - INNER_HEADER,
            CHUNK_PLAINTEXT,
            3 * NOISE_MAX + 7,
            1 << 20,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let c = app_up.seal(9, Kind::Request, 4, &data).unwrap();
            assert_eq!(c.len(), sealed_len(len));
            assert_eq!(be_up.open(9, Kind::Request, 4, &c).unwrap(), data, "{len}");
            let c = be_down.seal(2, Kind::Reply, 9, &data).unwrap();
            assert_eq!(app_down.open(2, Kind::Reply, 9, &c).unwrap(), data);
        }
    }

    #[test]
    fn relabelled_reordered_or_truncated_messages_fail() {
        let (_, _, app_up, be_up, _, _) = session();
        let data = vec![5u8; 100_000];
        let c = app_up.seal(3, Kind::Notify, 0, &data).unwrap();
        assert!(be_up.open(4, Kind::Notify, 0, &c).is_err(), "another seq");
        assert!(be_up.open(3, Kind::Request, 0, &c).is_err(), "another kind");
        assert!(
            be_up.open(3, Kind::Notify, 1, &c).is_err(),
            "another request id"
        );
        assert!(
            be_up.open(3, Kind::Notify, 0, &c[..NOISE_MAX]).is_err(),
            "truncated"
        );
        let mut flipped = c.clone();
        flipped[NOISE_MAX + 10] ^= 1;
        assert!(
            be_up.open(3, Kind::Notify, 0, &flipped).is_err(),
            "tampered"
        );
        assert!(be_up.open(3, Kind::Notify, 0, &[]).is_err(), "empty");
    }

    #[test]
    fn a_hello_to_another_backend_and_a_welcome_from_one_fail() {
        let app = Keypair::generate();
        let backend = Keypair::generate();
        let impostor = Keypair::generate();
        let (hs, _) = AppHandshake::start(&app.private, &backend.public).unwrap();
        assert!(BackendHandshake::read_hello(&impostor.private, &hs.hello).is_err());
        // An impostor that learnt the app's key still cannot forge a Welcome.
        let (hs2, _) = AppHandshake::start(&app.private, &impostor.public).unwrap();
        let (be, _) = BackendHandshake::read_hello(&impostor.private, &hs2.hello).unwrap();
        let (welcome, _) = be.welcome(&impostor.private).unwrap();
        assert!(hs.finish(&welcome).is_err());
        // A Welcome for another Hello of the same app is refused.
        let (other, _) = AppHandshake::start(&app.private, &backend.public).unwrap();
        let (be, _) = BackendHandshake::read_hello(&backend.private, &other.hello).unwrap();
        let (welcome, _) = be.welcome(&backend.private).unwrap();
        assert!(hs.finish(&welcome).is_err());
        assert!(other.finish(&welcome).is_ok());
    }
}
