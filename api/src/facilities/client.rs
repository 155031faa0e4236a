//! The app's facilities client: `notify`, `request`, `receive` and
//! `storage`, over the relay's socket, sealed end to end to the backend.
//!
//! ```no_run
//! let fac = furnace_api::Facilities::connect_default()?;
//! fac.notify(b"scan finished")?;
//! let answer = fac.request(b"which pids to watch?", std::time::Duration::from_secs(5))?;
//! fac.storage().put("last-scan", &answer)?;
//! # Ok::<(), furnace_api::ApiError>(())
//! ```

use super::frame::{self, FrameError, FRAME_OVERHEAD};
use super::keys::{self, PrivateKey, PublicKey};
use super::seal::{AppHandshake, Channel};
use crate::fac::v1::{self as fac_v1, frame::Body, storage_call, storage_result, Kind, Sealed};
use crate::{ApiError, ErrorCode};
use std::collections::{HashMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, ApiError>;

/// How long a call waits for the relay to take or answer it.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(30);
/// Backend messages kept for [`Facilities::receive`] before the oldest go.
const INBOX_LIMIT: usize = 1024;
/// The largest frame the client reads: a sealed message of the largest size
/// the relay forwards.
fn read_limit() -> usize {
    super::seal::sealed_len(64 << 20) + FRAME_OVERHEAD
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Sent by the backend to this app alone.
    Directed,
    /// Sent by the backend to all of its apps.
    Broadcast,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: MessageKind,
    pub data: Vec<u8>,
}

#[derive(Default)]
struct Inbox {
    downstream: Option<Channel>,
    refused: Option<ApiError>,
    accepted: HashMap<u64, Result<()>>,
    replies: HashMap<u64, Result<Vec<u8>>>,
    /// Requests sent and not yet answered.
    pending_requests: std::collections::HashSet<u64>,
    storage: HashMap<u64, storage_result::Result>,
    messages: VecDeque<Message>,
    dropped_messages: u64,
    delivered: u64,
    /// The newest notify the relay took.
    last_accepted: u64,
    status: Option<fac_v1::RelayStatus>,
    closed: Option<ApiError>,
}

struct Shared {
    inbox: Mutex<Inbox>,
    changed: Condvar,
}

struct Sender {
    stream: UnixStream,
    next_seq: u64,
    next_storage_id: u64,
    upstream: Channel,
}

/// Where [`Facilities::connect_to`] finds the relay and the keys; `None`
/// is the path the runtime mounts.
#[derive(Clone, Debug, Default)]
pub struct Endpoint {
    pub socket: Option<PathBuf>,
    pub app_key: Option<PathBuf>,
    /// The backend's public key file (before `$FURNACE_BACKEND_KEY`).
    pub backend_key: Option<PathBuf>,
}

impl Endpoint {
    /// Whether the runtime gave this app a backend: it mounts the
    /// facilities socket only when `furnace.dev/backend` is set.
    pub fn runtime_has_backend() -> bool {
        Path::new(super::DEFAULT_SOCKET).exists()
    }
}

/// A session with the tenant backend through the app's facilities relay.
pub struct Facilities {
    sender: Mutex<Sender>,
    shared: Arc<Shared>,
    stream: UnixStream,
}

fn unavailable(context: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, context.to_string())
}

impl Facilities {
    /// Connects with the paths the runtime sets up in an app partition.
    pub fn connect_default() -> Result<Facilities> {
        Facilities::connect_to(&Endpoint::default())
    }

    /// Connects through `endpoint`: each path it leaves out is the
    /// runtime's, and the backend's key is `$FURNACE_BACKEND_KEY` before the
    /// runtime's file.
    pub fn connect_to(endpoint: &Endpoint) -> Result<Facilities> {
        let or = |path: &Option<PathBuf>, default: &str| {
            path.clone().unwrap_or_else(|| PathBuf::from(default))
        };
        let app_key =
            keys::read_private(&or(&endpoint.app_key, super::DEFAULT_APP_KEY)).map_err(|e| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("the app's key: {e}; is furnace.dev/app-key set?"),
                )
            })?;
        let backend = match (&endpoint.backend_key, std::env::var(super::BACKEND_KEY_ENV)) {
            (Some(path), _) => keys::read_public(path),
            (None, Ok(text)) => text.parse::<PublicKey>(),
            (None, Err(_)) => keys::read_public(Path::new(super::DEFAULT_BACKEND_KEY)),
        }
        .map_err(|e| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("the backend's key: {e}; is furnace.dev/backend-key set?"),
            )
        })?;
        Facilities::connect(
            &or(&endpoint.socket, super::DEFAULT_SOCKET),
            &app_key,
            &backend,
        )
    }

    /// Opens a session: sends the Hello and waits for the relay's status.
    /// The backend need not be reachable yet: notifies wait in the relay.
    pub fn connect(socket: &Path, app_key: &PrivateKey, backend: &PublicKey) -> Result<Facilities> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            unavailable(format!(
                "connecting to the facilities relay at {}: {e}",
                socket.display()
            ))
        })?;
        stream
            .set_write_timeout(Some(RELAY_TIMEOUT))
            .map_err(|e| unavailable(format!("setting a timeout: {e}")))?;
        let (handshake, upstream) = AppHandshake::start(app_key, backend)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let mut writer = stream.try_clone().map_err(unavailable)?;
        frame::write(
            &mut writer,
            Body::Hello(fac_v1::Hello {
                noise: handshake.hello.clone(),
            }),
        )
        .map_err(|e| unavailable(format!("sending the Hello: {e}")))?;
        let shared = Arc::new(Shared {
            inbox: Mutex::default(),
            changed: Condvar::new(),
        });
        let reader = stream.try_clone().map_err(unavailable)?;
        let for_reader = shared.clone();
        std::thread::Builder::new()
            .name("furnace-fac-reader".into())
            .spawn(move || read_loop(reader, handshake, &for_reader))
            .map_err(|e| unavailable(format!("starting the reader: {e}")))?;
        let fac = Facilities {
            sender: Mutex::new(Sender {
                stream: writer,
                next_seq: 1,
                next_storage_id: 1,
                upstream,
            }),
            shared,
            stream,
        };
        fac.wait(RELAY_TIMEOUT, |inbox| {
            inbox.status.is_some().then_some(Ok(()))
        })?;
        Ok(fac)
    }

    /// The relay's limits and whether it reaches the backend now.
    pub fn relay_status(&self) -> Option<fac_v1::RelayStatus> {
        self.inbox().status
    }

    /// Sends `data` to the backend. Returns once the relay has taken it: it
    /// is then delivered once the backend is reachable (docs/facilities.md,
    /// "Delivery"). A message the relay refuses (size, rate, room) fails
    /// here with LIMIT_EXCEEDED and is not sent.
    pub fn notify(&self, data: &[u8]) -> Result<()> {
        let seq = self.send(Kind::Notify, data, 0)?;
        self.wait(RELAY_TIMEOUT, |inbox| inbox.accepted.remove(&seq))
    }

    /// Sends `data` and waits up to `timeout` for the backend's reply.
    pub fn request(&self, data: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let deadline_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let seq = self.send(Kind::Request, data, deadline_ms)?;
        let answer = self.wait(timeout, |inbox| inbox.replies.remove(&seq));
        // Nothing that comes after the deadline is kept.
        let mut inbox = self.inbox();
        inbox.pending_requests.remove(&seq);
        inbox.replies.remove(&seq);
        answer
    }

    /// The next message the backend sent this app (directed or broadcast),
    /// waiting up to `timeout`; `None` if none came.
    pub fn receive(&self, timeout: Duration) -> Result<Option<Message>> {
        match self.wait(timeout, |inbox| inbox.messages.pop_front().map(Ok)) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.code == ErrorCode::DeadlineExceeded => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits until the backend has taken every notify sent so far.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.wait(timeout, |inbox| {
            (inbox.delivered >= inbox.last_accepted).then_some(Ok(()))
        })
    }

    pub fn storage(&self) -> Storage<'_> {
        Storage { fac: self }
    }

    fn lock_sender(&self) -> MutexGuard<'_, Sender> {
        self.sender.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.shared.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, kind: Kind, data: &[u8], deadline_ms: u32) -> Result<u64> {
        {
            let inbox = self.inbox();
            if let Some(e) = inbox.refused.clone() {
                return Err(e);
            }
            let max = inbox
                .status
                .as_ref()
                .map_or(u64::MAX, |s| s.max_message_bytes);
            if data.len() as u64 > max {
                return Err(ApiError::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "a message of {} bytes is over the provider's limit of {max}",
                        data.len()
                    ),
                ));
            }
        }
        let mut sender = self.lock_sender();
        let seq = sender.next_seq;
        let ciphertext = sender
            .upstream
            .seal(seq, kind, if kind == Kind::Request { seq } else { 0 }, data)
            .map_err(|e| ApiError::new(ErrorCode::LimitExceeded, e.to_string()))?;
        let sealed = Sealed {
            seq,
            kind: kind as i32,
            request_id: if kind == Kind::Request { seq } else { 0 },
            ciphertext: ciphertext.into(),
            deadline_ms,
        };
        if kind == Kind::Request {
            self.inbox().pending_requests.insert(seq);
        }
        frame::write(&mut sender.stream, Body::Sealed(sealed))
            .map_err(|e| unavailable(format!("sending to the facilities relay: {e}")))?;
        sender.next_seq += 1;
        Ok(seq)
    }

    fn storage_call(&self, op: storage_call::Op) -> Result<storage_result::Result> {
        let id = {
            let mut sender = self.lock_sender();
            let id = sender.next_storage_id;
            sender.next_storage_id += 1;
            let call = fac_v1::StorageCall { id, op: Some(op) };
            frame::write(&mut sender.stream, Body::StorageCall(call))
                .map_err(|e| unavailable(format!("sending to the facilities relay: {e}")))?;
            id
        };
        self.wait(RELAY_TIMEOUT, |inbox| inbox.storage.remove(&id).map(Ok))
            .and_then(|r| match r {
                storage_result::Result::Error(e) => {
                    let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
                    Err(ApiError::new(code, e.message))
                }
                other => Ok(other),
            })
    }

    /// Waits for `ready` to take something out of the inbox, until `timeout`
    /// (DEADLINE_EXCEEDED) or the connection ends (UNAVAILABLE).
    fn wait<T>(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&mut Inbox) -> Option<Result<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut inbox = self.inbox();
        loop {
            if let Some(r) = ready(&mut inbox) {
                return r;
            }
            if let Some(e) = &inbox.closed {
                return Err(e.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiError::new(
                    ErrorCode::DeadlineExceeded,
                    format!("no answer within {timeout:?}"),
                ));
            }
            inbox = self
                .shared
                .changed
                .wait_timeout(inbox, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for Facilities {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The app's storage, kept by the relay on the host under the provider's
/// quota (docs/facilities.md, "Storage").
pub struct Storage<'f> {
    fac: &'f Facilities,
}

impl Storage<'_> {
    /// Stores `value` under `key`, atomically; over the quota it fails with
    /// LIMIT_EXCEEDED and the old value stays.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let put = storage_call::Put {
            key: key.into(),
            value: value.into(),
        };
        self.fac.storage_call(storage_call::Op::Put(put)).map(drop)
    }

    /// The value under `key`; NOT_FOUND if there is none.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        match self.fac.storage_call(storage_call::Op::Get(key.into()))? {
            storage_result::Result::Value(v) => Ok(v),
            _ => Err(ApiError::new(
                ErrorCode::Internal,
                "the relay answered get with no value",
            )),
        }
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.fac
            .storage_call(storage_call::Op::Delete(key.into()))
            .map(drop)
    }

    pub fn keys(&self) -> Result<Vec<String>> {
        match self
            .fac
            .storage_call(storage_call::Op::Keys(storage_call::Keys {}))?
        {
            storage_result::Result::Keys(k) => Ok(k.keys),
            _ => Err(ApiError::new(
                ErrorCode::Internal,
                "the relay answered keys with no list",
            )),
        }
    }
}

fn read_loop(mut stream: UnixStream, handshake: AppHandshake, shared: &Shared) {
    let end = loop {
        let body = match frame::read(&mut stream, read_limit()) {
            Ok(Some(body)) => body,
            Ok(None) => break unavailable("the facilities relay closed the connection"),
            Err(FrameError::Io(e)) => {
                break unavailable(format!("reading from the facilities relay: {e}"))
            }
            Err(e) => {
                break ApiError::new(
                    ErrorCode::Internal,
                    format!("the facilities relay sent {e}"),
                )
            }
        };
        let mut inbox = shared.inbox.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = take(&mut inbox, &handshake, body) {
            eprintln!("furnace facilities: {e}");
            inbox.refused = Some(e.clone());
            inbox.closed = Some(e);
            shared.changed.notify_all();
            return;
        }
        shared.changed.notify_all();
    };
    let mut inbox = shared.inbox.lock().unwrap_or_else(|p| p.into_inner());
    inbox.closed.get_or_insert(end);
    shared.changed.notify_all();
}

/// Files one frame from the relay. An error ends the session.
fn take(inbox: &mut Inbox, handshake: &AppHandshake, body: Body) -> Result<()> {
    match body {
        Body::RelayStatus(s) => inbox.status = Some(s),
        Body::Welcome(w) => {
            let channel = handshake.finish(&w.noise).map_err(|e| {
                ApiError::new(
                    ErrorCode::NotPermitted,
                    format!("refusing the backend: {e}"),
                )
            })?;
            inbox.downstream = Some(channel);
        }
        Body::Refused(r) => {
            return Err(ApiError::new(
                ErrorCode::NotPermitted,
                format!("the backend refused this app: {}", r.reason),
            ));
        }
        Body::Accepted(a) => {
            inbox.last_accepted = inbox.last_accepted.max(a.seq);
            inbox.accepted.insert(a.seq, Ok(()));
        }
        Body::Delivered(d) => inbox.delivered = inbox.delivered.max(d.seq),
        Body::Failed(f) => {
            let code = ErrorCode::try_from(f.code).unwrap_or(ErrorCode::Internal);
            let e = ApiError::new(code, f.message);
            // Filed under the one call that sent `seq`: a notify waits for
            // its acceptance, a request for its reply.
            if inbox.pending_requests.remove(&f.seq) {
                inbox.replies.insert(f.seq, Err(e));
            } else {
                inbox.accepted.insert(f.seq, Err(e));
            }
        }
        Body::Sealed(s) => {
            let Some(down) = &inbox.downstream else {
                return Err(ApiError::new(
                    ErrorCode::NotPermitted,
                    "a message came before the backend's Welcome",
                ));
            };
            let kind = Kind::try_from(s.kind).unwrap_or(Kind::Unspecified);
            let data = down
                .open(s.seq, kind, s.request_id, &s.ciphertext)
                .map_err(|e| {
                    ApiError::new(ErrorCode::NotPermitted, format!("a backend message: {e}"))
                })?;
            match kind {
                Kind::Reply => {
                    inbox.replies.insert(s.request_id, Ok(data));
                }
                Kind::Directed | Kind::Broadcast => {
                    if inbox.messages.len() == INBOX_LIMIT {
                        inbox.messages.pop_front();
                        inbox.dropped_messages += 1;
                    }
                    let kind = if kind == Kind::Directed {
                        MessageKind::Directed
                    } else {
                        MessageKind::Broadcast
                    };
                    inbox.messages.push_back(Message { kind, data });
                }
                _ => {}
            }
        }
        Body::StorageResult(r) => {
            if let Some(result) = r.result {
                inbox.storage.insert(r.id, result);
            }
        }
        Body::Hello(_) | Body::StorageCall(_) => {}
    }
    Ok(())
}
