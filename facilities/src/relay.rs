//! The per-app facilities relay (docs/facilities.md, "The relay"). It holds
//! no key and sees no plaintext: it forwards the app's sealed messages to the
//! tenant backend and the backend's back, keeps notifies in a bounded outbox
//! until the backend has taken them, enforces the provider's limits, and
//! serves the app's storage.

use crate::storage::{StorageError, Store};
use crate::{lock, wire};
use furnace_api::fac::v1::{self as fac, frame::Body, storage_call, storage_result, Kind};
use furnace_api::facilities::frame::{FrameError, FRAME_OVERHEAD};
use furnace_api::facilities::seal::sealed_len;
use furnace_api::{ApiError, ErrorCode};
use furnace_fac_broker::BrokerClient;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;

/// The provider's limits on one app's traffic.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_message_bytes: u64,
    pub messages_per_second: u32,
    pub max_bytes_in_flight: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 << 20,
            messages_per_second: 1000,
            max_bytes_in_flight: 64 << 20,
        }
    }
}

/// Sessions whose app has left that may wait for the backend at once.
pub const MAX_LINGERING: usize = 16;
/// How long such a session waits for the backend to take its outbox.
const LINGER_LIMIT: Duration = Duration::from_secs(600);
/// How long a new connection may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
static LINGERING: AtomicUsize = AtomicUsize::new(0);

static OPEN_SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// Counts a session in [`OPEN_SESSIONS`] while it lives.
struct OpenSession;

impl OpenSession {
    fn new() -> Self {
        OPEN_SESSIONS.fetch_add(1, Ordering::SeqCst);
        OpenSession
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        OPEN_SESSIONS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One of the [`MAX_LINGERING`], given back on drop.
struct Lingering;

impl Drop for Lingering {
    fn drop(&mut self) {
        LINGERING.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Relay {
    /// `host:port` of the tenant backend.
    pub backend: String,
    /// Where backend connections come from when the relay may not dial
    /// (its partition has no network): the shim connects to `backend` and
    /// hands the stream over. `None`: the relay dials `backend` itself.
    pub broker: Option<BrokerClient>,
    pub limits: Limits,
    pub storage: Option<Arc<Mutex<Store>>>,
    /// The first and the longest wait between reconnects.
    pub backoff: (Duration, Duration),
    /// Messages refused at the rate limit, across sessions; reported to the
    /// shim (docs/defense.md).
    pub rate_limited: Arc<AtomicU64>,
}

impl Relay {
    /// Serves every app connection on `listener`, each in a session of its own.
    pub async fn serve(self: Arc<Self>, listener: UnixListener) -> std::io::Result<()> {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: the app's own doing; the
                    // sessions it has go on.
                    tracing::warn!("accepting an app connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let relay = self.clone();
            tokio::spawn(async move {
                let _open = OpenSession::new();
                if let Err(e) = relay.session(stream).await {
                    tracing::warn!("app session ended: {e}");
                }
            });
        }
    }

    /// Waits until every session has ended, or `limit` passed, and returns
    /// how many are left. Once the app has gone, a session ends at once
    /// unless it holds notifies the backend has not taken (then when it
    /// has), or it never sent its Hello (then after [`HELLO_TIMEOUT`]).
    pub async fn drain(limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        while OPEN_SESSIONS.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        OPEN_SESSIONS.load(Ordering::SeqCst)
    }

    /// Lets a session whose app left keep its outbox until the backend has
    /// taken it, so an accepted notify is delivered though its sender has
    /// exited. At most [`MAX_LINGERING`] sessions at once: their outboxes
    /// are the relay's memory.
    fn linger(&self) -> Option<Lingering> {
        if LINGERING.fetch_add(1, Ordering::SeqCst) >= MAX_LINGERING {
            LINGERING.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Lingering)
    }

    fn frame_limit(&self) -> usize {
        sealed_len(self.limits.max_message_bytes as usize) + FRAME_OVERHEAD
    }

    fn status(&self, connected: bool) -> Body {
        Body::RelayStatus(fac::RelayStatus {
            backend_connected: connected,
            max_message_bytes: self.limits.max_message_bytes,
            messages_per_second: self.limits.messages_per_second,
            max_bytes_in_flight: self.limits.max_bytes_in_flight,
            storage_quota_bytes: self.storage.as_ref().map_or(0, |s| lock(s).quota()),
        })
    }

    async fn session(&self, stream: UnixStream) -> Result<(), String> {
        let (app_read, mut app) = stream.into_split();
        let mut from_app = wire::spawn_reader(app_read, self.frame_limit());
        let first = tokio::time::timeout(HELLO_TIMEOUT, from_app.recv())
            .await
            .map_err(|_| format!("no Hello within {HELLO_TIMEOUT:?}"))?;
        let hello = match first {
            Some(Ok(Body::Hello(h))) => h,
            Some(Ok(_)) | Some(Err(_)) => {
                let _ = wire::write(
                    &mut app,
                    failed(
                        0,
                        ErrorCode::InvalidArgument,
                        "a session starts with a Hello",
                    ),
                )
                .await;
                return Err("the app's first frame was not a Hello".into());
            }
            None => return Ok(()),
        };
        let _ = wire::write(&mut app, self.status(false)).await;
        let mut app = Some(app);
        // Set once the app has gone (closed, or its socket broke).
        let mut lingering: Option<(Lingering, Instant)> = None;
        let mut s = Session::new(&self.limits);
        let mut link: Option<Link> = None;
        let mut retry_at = Instant::now();
        let mut backoff = self.backoff.0;
        loop {
            if app.is_none() {
                if s.outbox.is_empty() {
                    return Ok(());
                }
                match &lingering {
                    None => {
                        let slot = self.linger().ok_or_else(|| format!("the app left with {} notifies the backend has not taken, and {MAX_LINGERING} sessions already wait for the backend: dropped", s.outbox.len()))?;
                        tracing::info!("the app left with {} notifies the backend has not taken; keeping them until it does", s.outbox.len());
                        lingering = Some((slot, Instant::now() + LINGER_LIMIT));
                    }
                    Some((_, until)) if Instant::now() >= *until => {
                        return Err(format!("the backend did not take the {} notifies of an app that left within {LINGER_LIMIT:?}: dropped", s.outbox.len()));
                    }
                    Some(_) => {}
                }
            }
            if link.is_none() && Instant::now() >= retry_at {
                match self.connect(&hello, &s).await {
                    Ok(l) => {
                        link = Some(l);
                        backoff = self.backoff.0;
                        tracing::info!("connected to the backend at {}", self.backend);
                        send(&mut app, self.status(true)).await?;
                    }
                    Err(e) => {
                        tracing::warn!(
                            "the backend at {} is unreachable: {e}; retrying in {backoff:?}",
                            self.backend
                        );
                        retry_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(self.backoff.1);
                    }
                }
            }
            let wake = tokio::time::sleep_until(
                retry_at
                    .max(Instant::now() + Duration::from_millis(1))
                    .into(),
            );
            tokio::select! {
                frame = from_app.recv(), if app.is_some() => match frame {
                    None => app = None,
                    Some(Err(e)) => {
                        let code = match e {
                            FrameError::TooLarge { .. } => ErrorCode::LimitExceeded,
                            _ => ErrorCode::InvalidArgument,
                        };
                        send(&mut app, failed(0, code, &format!("the relay could not take a frame: {e}"))).await?;
                        if !wire::recoverable(&e) {
                            return Err(format!("the app's stream is out of step: {e}"));
                        }
                    }
                    Some(Ok(body)) => {
                        let reply = self.take_from_app(&mut s, &mut link, body).await;
                        for r in reply {
                            send(&mut app, r).await?;
                        }
                    }
                },
                frame = recv_link(&mut link) => {
                    let lost = match frame {
                        Some(Ok(body)) => match s.take_from_backend(body) {
                            Ok(out) => { for b in out { send(&mut app, b).await?; } false }
                            Err(refused) => {
                                let reason = match &refused {
                                    Body::Refused(r) => r.reason.clone(),
                                    _ => String::new(),
                                };
                                send(&mut app, refused).await?;
                                return Err(format!("the backend refused the app: {reason}"));
                            }
                        },
                        Some(Err(e)) => { tracing::warn!("the backend sent a bad frame: {e}"); true }
                        None => true,
                    };
                    if lost {
                        link = None;
                        retry_at = Instant::now() + backoff;
                        tracing::warn!("lost the backend at {}", self.backend);
                        for seq in s.requests.drain().map(|(seq, _)| seq) {
                            send(&mut app, failed(seq, ErrorCode::Unavailable, "the connection to the backend broke before it replied")).await?;
                        }
                        send(&mut app, self.status(false)).await?;
                    }
                },
                _ = wake, if link.is_none() => {}
                _ = tokio::time::sleep_until(s.next_deadline().into()), if !s.requests.is_empty() => {
                    for seq in s.expired_requests() {
                        send(&mut app, failed(seq, ErrorCode::DeadlineExceeded, "the backend did not reply before the request's deadline")).await?;
                    }
                }
            }
        }
    }

    /// Connects, opens the session and resends what the backend has not taken.
    async fn connect(&self, hello: &fac::Hello, s: &Session) -> std::io::Result<Link> {
        let stream = tokio::time::timeout(Duration::from_secs(5), self.dial())
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        // Unbounded, but what goes in is: the outbox by max_bytes_in_flight,
        // requests by the rate limit.
        let write = wire::spawn_writer(write);
        let closed = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        write
            .send(Body::Hello(hello.clone()))
            .map_err(|_| closed())?;
        for sealed in &s.outbox {
            write
                .send(Body::Sealed(sealed.clone()))
                .map_err(|_| closed())?;
        }
        let rx = wire::spawn_reader(read, sealed_len(64 << 20) + FRAME_OVERHEAD);
        Ok(Link { write, rx })
    }

    async fn dial(&self) -> std::io::Result<TcpStream> {
        let Some(broker) = self.broker.clone() else {
            return TcpStream::connect(&self.backend).await;
        };
        let stream = tokio::task::spawn_blocking(move || broker.backend())
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)?;
        stream.set_nonblocking(true)?;
        TcpStream::from_std(stream)
    }

    async fn take_from_app(
        &self,
        s: &mut Session,
        link: &mut Option<Link>,
        body: Body,
    ) -> Vec<Body> {
        match body {
            Body::Sealed(sealed) => {
                let seq = sealed.seq;
                if let Err(e) = s.admit(&sealed, &self.limits, link.is_some(), &self.rate_limited) {
                    return vec![failed(seq, e.code, &e.message)];
                }
                let notify = sealed.kind == Kind::Notify as i32;
                if let Some(l) = link.as_mut() {
                    if l.write.send(Body::Sealed(sealed.clone())).is_err() {
                        tracing::warn!("the connection to the backend is closed");
                        *link = None;
                        if !notify {
                            s.requests.remove(&seq);
                            return vec![failed(
                                seq,
                                ErrorCode::Unavailable,
                                "the connection to the backend broke",
                            )];
                        }
                    }
                }
                if notify {
                    s.in_flight += sealed.ciphertext.len() as u64;
                    s.outbox.push_back(sealed);
                    vec![Body::Accepted(fac::Accepted { seq })]
                } else {
                    vec![]
                }
            }
            Body::StorageCall(call) => vec![Body::StorageResult(self.storage_call(call))],
            Body::Hello(_) => vec![failed(
                0,
                ErrorCode::InvalidArgument,
                "this session already has its Hello",
            )],
            _ => vec![failed(
                0,
                ErrorCode::InvalidArgument,
                "the app sent a frame only the relay or the backend sends",
            )],
        }
    }

    fn storage_call(&self, call: fac::StorageCall) -> fac::StorageResult {
        let error = |code: ErrorCode, message: String| {
            storage_result::Result::Error(ApiError::new(code, message).to_proto())
        };
        let Some(store) = &self.storage else {
            return fac::StorageResult {
                id: call.id,
                result: Some(error(
                    ErrorCode::Unsupported,
                    "this app has no storage".into(),
                )),
            };
        };
        let mut store = lock(store);
        let result = match call.op {
            Some(storage_call::Op::Put(p)) => store
                .put(&p.key, &p.value)
                .map(|()| storage_result::Result::Done(true)),
            Some(storage_call::Op::Get(k)) => store.get(&k).map(storage_result::Result::Value),
            Some(storage_call::Op::Delete(k)) => store
                .delete(&k)
                .map(|()| storage_result::Result::Done(true)),
            Some(storage_call::Op::Keys(_)) => store
                .keys()
                .map(|keys| storage_result::Result::Keys(storage_result::KeyList { keys })),
            None => Ok(error(
                ErrorCode::InvalidArgument,
                "a storage call with no operation".into(),
            )),
        };
        fac::StorageResult {
            id: call.id,
            result: Some(result.unwrap_or_else(|e| error(storage_code(&e), e.to_string()))),
        }
    }
}

fn storage_code(e: &StorageError) -> ErrorCode {
    match e {
        StorageError::InvalidKey { .. } => ErrorCode::InvalidArgument,
        StorageError::ValueTooLarge { .. } | StorageError::QuotaExceeded { .. } => {
            ErrorCode::LimitExceeded
        }
        StorageError::NotFound { .. } => ErrorCode::NotFound,
        StorageError::Io { .. } => ErrorCode::Internal,
    }
}

fn failed(seq: u64, code: ErrorCode, message: &str) -> Body {
    Body::Failed(fac::Failed {
        seq,
        code: code as i32,
        message: message.into(),
    })
}

/// Tells the app, while it is there. Once it has gone, the session lives on
/// only to hand the backend what the relay accepted ([`Relay::linger`]).
async fn send(
    app: &mut Option<tokio::net::unix::OwnedWriteHalf>,
    body: Body,
) -> Result<(), String> {
    let Some(writer) = app.as_mut() else {
        return Ok(());
    };
    if let Err(e) = wire::write(writer, body).await {
        tracing::info!("the app's connection closed: {e}");
        *app = None;
    }
    Ok(())
}

struct Link {
    write: mpsc::UnboundedSender<Body>,
    rx: mpsc::Receiver<Result<Body, FrameError>>,
}

async fn recv_link(link: &mut Option<Link>) -> Option<Result<Body, FrameError>> {
    match link {
        Some(l) => l.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// One app session's relay state.
struct Session {
    /// Notifies the backend has not confirmed, oldest first.
    outbox: VecDeque<fac::Sealed>,
    in_flight: u64,
    /// Requests sent and not answered, with their deadlines.
    requests: HashMap<u64, Instant>,
    last_seq: u64,
    /// A token bucket of messages.
    tokens: f64,
    refilled: Instant,
    rate: f64,
}

impl Session {
    fn new(limits: &Limits) -> Session {
        let rate = f64::from(limits.messages_per_second.max(1));
        Session {
            outbox: VecDeque::new(),
            in_flight: 0,
            requests: HashMap::new(),
            last_seq: 0,
            tokens: rate,
            refilled: Instant::now(),
            rate,
        }
    }

    /// Checks one sealed message from the app against the limits.
    fn admit(
        &mut self,
        m: &fac::Sealed,
        limits: &Limits,
        connected: bool,
        rate_limited: &AtomicU64,
    ) -> Result<(), ApiError> {
        let limit = |msg: String| Err(ApiError::new(ErrorCode::LimitExceeded, msg));
        if m.seq != self.last_seq + 1 {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("message {} out of sequence after {}", m.seq, self.last_seq),
            ));
        }
        // A refused message still uses its number up.
        self.last_seq = m.seq;
        let kind = Kind::try_from(m.kind).unwrap_or(Kind::Unspecified);
        if !matches!(kind, Kind::Notify | Kind::Request)
            || (kind == Kind::Request) != (m.request_id == m.seq)
        {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "an app sends only notifies and requests",
            ));
        }
        let size = m.ciphertext.len() as u64;
        if size > sealed_len(limits.max_message_bytes as usize) as u64 {
            return limit(format!(
                "a message of {size} sealed bytes is over the provider's limit of {} bytes",
                limits.max_message_bytes
            ));
        }
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.rate)
            .min(self.rate);
        self.refilled = now;
        if self.tokens < 1.0 {
            rate_limited.fetch_add(1, Ordering::Relaxed);
            return limit(format!(
                "over the provider's rate of {} messages a second",
                limits.messages_per_second
            ));
        }
        if kind == Kind::Notify && self.in_flight + size > limits.max_bytes_in_flight {
            return limit(format!(
                "the outbox holds {} bytes the backend has not taken; the limit is {}",
                self.in_flight, limits.max_bytes_in_flight
            ));
        }
        if kind == Kind::Request && !connected {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "the backend is not reachable now; requests are not queued",
            ));
        }
        self.tokens -= 1.0;
        if kind == Kind::Request {
            let deadline = Duration::from_millis(u64::from(m.deadline_ms.max(1)));
            self.requests.insert(m.seq, now + deadline);
        }
        Ok(())
    }

    /// Handles one frame from the backend: what to pass to the app, or the
    /// refusal that ends the session.
    fn take_from_backend(&mut self, body: Body) -> Result<Vec<Body>, Body> {
        match body {
            Body::Welcome(_) => Ok(vec![body]),
            Body::Refused(_) => Err(body),
            Body::Delivered(d) => {
                while self.outbox.front().is_some_and(|m| m.seq <= d.seq) {
                    let m = self.outbox.pop_front().expect("checked");
                    self.in_flight -= m.ciphertext.len() as u64;
                }
                Ok(vec![body])
            }
            Body::Sealed(ref m) => {
                if m.kind == Kind::Reply as i32 && self.requests.remove(&m.request_id).is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![body])
            }
            _ => Ok(vec![]),
        }
    }

    fn next_deadline(&self) -> Instant {
        let later = Instant::now() + Duration::from_secs(3600);
        self.requests.values().min().copied().unwrap_or(later)
    }

    fn expired_requests(&mut self) -> Vec<u64> {
        let now = Instant::now();
        let gone: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in &gone {
            self.requests.remove(seq);
        }
        gone
    }
}
