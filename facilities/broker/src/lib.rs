//! The broker between the shim and the facilities relay it confines
//! (docs/facilities.md, "Its partition").
//!
//! The relay runs with no network at all: an empty network namespace and no
//! `socket(AF_INET)`. What it cannot make for itself it asks the shim for,
//! over a unix socket bound into its partition, one request per connection:
//!
//! - [`Request::Listener`]: the app's listening socket, which the shim bound
//!   once, so a restarted relay serves the very socket the app's mount pins;
//! - [`Request::Backend`]: a TCP connection to the one backend address the
//!   shim read from the app's annotations. The relay never names an address,
//!   so it can reach that backend and nothing else.
//!
//! One more message goes the other way, a report rather than a request:
//! the relay's running count of messages it refused at the provider's rate
//! limit, which the shim's self-defense loop counts (docs/defense.md).
//!
//! Wire format: the request is one byte. The reply is one status byte: `0`
//! with the descriptor attached (`SCM_RIGHTS`), or `1` followed by a
//! big-endian `u16` length and that many bytes of UTF-8 error text. A report
//! is the byte `R` and a big-endian `u64`, answered by the status byte `0`.

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the relay waits for an answer (a backend dial takes up to 4 s).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the shim waits for the request byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests answered at once; a connection past them is closed unanswered,
/// so a relay cannot pin the shim's threads.
const MAX_ANSWERING: usize = 16;
/// The longest error text sent back.
const MAX_MESSAGE: usize = 1024;

const OK: u8 = 0;
const REFUSED: u8 = 1;
/// The byte that starts a rate-limit report.
const REPORT: u8 = b'R';

/// What the relay asks the shim for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Listener,
    Backend,
}

impl Request {
    fn byte(self) -> u8 {
        match self {
            Request::Listener => b'L',
            Request::Backend => b'B',
        }
    }

    fn from_byte(b: u8) -> Option<Request> {
        match b {
            b'L' => Some(Request::Listener),
            b'B' => Some(Request::Backend),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the broker at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The shim could not give what was asked, and said why.
    #[error("{0}")]
    Refused(String),
    #[error("the broker at {path} replied without a descriptor or with a malformed reply")]
    Malformed { path: PathBuf },
}

/// The relay's side.
#[derive(Clone, Debug)]
pub struct BrokerClient {
    path: PathBuf,
}

impl BrokerClient {
    pub fn new(path: impl Into<PathBuf>) -> BrokerClient {
        BrokerClient { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The app's listening socket.
    pub fn listener(&self) -> Result<UnixListener, BrokerError> {
        Ok(UnixListener::from(self.ask(Request::Listener)?))
    }

    /// A connected TCP stream to the backend (blocking mode).
    pub fn backend(&self) -> Result<TcpStream, BrokerError> {
        Ok(TcpStream::from(self.ask(Request::Backend)?))
    }

    /// Tells the shim how many messages this relay has refused at the rate
    /// limit since it started.
    pub fn report_rate_limited(&self, total: u64) -> Result<(), BrokerError> {
        let mut stream = self.connect()?;
        let mut message = vec![REPORT];
        message.extend_from_slice(&total.to_be_bytes());
        stream.write_all(&message).map_err(|e| self.io(e))?;
        let mut status = [0u8; 1];
        stream.read_exact(&mut status).map_err(|e| self.io(e))?;
        if status[0] != OK {
            return Err(BrokerError::Malformed {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn io(&self, source: std::io::Error) -> BrokerError {
        BrokerError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn connect(&self) -> Result<UnixStream, BrokerError> {
        let stream = UnixStream::connect(&self.path).map_err(|e| self.io(e))?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| self.io(e))?;
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| self.io(e))?;
        Ok(stream)
    }

    fn ask(&self, request: Request) -> Result<OwnedFd, BrokerError> {
        let io = |source| self.io(source);
        let mut stream = self.connect()?;
        stream.write_all(&[request.byte()]).map_err(io)?;
        let mut status = [0u8; 1];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let (bytes, fd) = {
            let mut iov = [IoSliceMut::new(&mut status)];
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(|e| io(e.into()))?;
            let mut fd = None;
            for cmsg in msg.cmsgs().map_err(|e| io(e.into()))? {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    for raw in fds {
                        // SAFETY: the kernel just installed `raw` in this
                        // process; nothing else owns it.
                        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                        fd.get_or_insert(owned);
                    }
                }
            }
            (msg.bytes, fd)
        };
        match (bytes, status[0], fd) {
            (1, OK, Some(fd)) => Ok(fd),
            (1, REFUSED, None) => {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).map_err(io)?;
                let len = usize::from(u16::from_be_bytes(len)).min(MAX_MESSAGE);
                let mut text = vec![0u8; len];
                stream.read_exact(&mut text).map_err(io)?;
                Err(BrokerError::Refused(
                    String::from_utf8_lossy(&text).into_owned(),
                ))
            }
            _ => Err(BrokerError::Malformed {
                path: self.path.clone(),
            }),
        }
    }
}

/// Answers one request: the descriptor to hand over, or why not.
pub trait Provider: Send + Sync + 'static {
    fn provide(&self, request: Request) -> Result<OwnedFd, String>;

    /// Takes the relay's report of its rate-limit refusals since it started.
    fn rate_limited(&self, _total: u64) {}
}

/// The shim's side: serves `listener` on a thread of its own until
/// [`BrokerServer::stop`] (or drop).
pub struct BrokerServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the accept loop looks at its stop flag.
const POLL_MS: u16 = 200;

impl BrokerServer {
    pub fn spawn(listener: UnixListener, provider: Arc<dyn Provider>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("fac-broker".into())
            .spawn(move || accept_loop(listener, provider, flag))?;
        Ok(BrokerServer {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BrokerServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One of [`MAX_ANSWERING`], given back on drop.
struct Answering(Arc<AtomicUsize>);

impl Answering {
    fn take(count: &Arc<AtomicUsize>) -> Option<Answering> {
        if count.fetch_add(1, Ordering::SeqCst) >= MAX_ANSWERING {
            count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Answering(Arc::clone(count)))
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: UnixListener, provider: Arc<dyn Provider>, stop: Arc<AtomicBool>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let answering = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(POLL_MS)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                log::error!("the facilities broker stops: poll: {e}");
                return;
            }
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("the facilities broker: accept: {e}");
                std::thread::sleep(Duration::from_millis(u64::from(POLL_MS)));
                continue;
            }
        };
        let Some(slot) = Answering::take(&answering) else {
            log::warn!(
                "the facilities broker: {MAX_ANSWERING} requests in progress; closing another"
            );
            continue;
        };
        let provider = Arc::clone(&provider);
        // One request per connection; a backend connect may take seconds,
        // so each is answered on its own thread.
        let spawned = std::thread::Builder::new()
            .name("fac-broker-req".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = answer(stream, provider.as_ref()) {
                    log::warn!("the facilities broker: {e}");
                }
            });
        if let Err(e) = spawned {
            log::warn!("the facilities broker: cannot start a thread: {e}");
        }
    }
}

fn answer(mut stream: UnixStream, provider: &dyn Provider) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    if byte[0] == REPORT {
        let mut total = [0u8; 8];
        stream.read_exact(&mut total)?;
        provider.rate_limited(u64::from_be_bytes(total));
        return stream.write_all(&[OK]);
    }
    let reply = match Request::from_byte(byte[0]) {
        Some(request) => provider.provide(request),
        None => Err(format!("unknown broker request {:#04x}", byte[0])),
    };
    match reply {
        Ok(fd) => {
            let fds = [fd.as_raw_fd()];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[IoSlice::new(&[OK])],
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )?;
            Ok(())
        }
        Err(text) => {
            let mut cut = text.len().min(MAX_MESSAGE);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let mut out = vec![REFUSED];
            out.extend_from_slice(&(cut as u16).to_be_bytes());
            out.extend_from_slice(&text.as_bytes()[..cut]);
            stream.write_all(&out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    struct Fixed {
        app: UnixListener,
        backend: String,
        reported: std::sync::Mutex<Vec<u64>>,
    }

    impl Provider for Fixed {
        fn provide(&self, request: Request) -> Result<OwnedFd, String> {
            match request {
                Request::Listener => self
                    .app
                    .try_clone()
                    .map(OwnedFd::from)
                    .map_err(|e| e.to_string()),
                Request::Backend => TcpStream::connect(&self.backend)
                    .map(OwnedFd::from)
                    .map_err(|e| format!("connecting to {}: {e}", self.backend)),
            }
        }

        fn rate_limited(&self, total: u64) {
            self.reported.lock().unwrap().push(total);
        }
    }

    fn serve(dir: &Path, backend: String) -> (BrokerServer, PathBuf, PathBuf) {
        let (server, app_path, broker_path, _) = serve_provider(dir, backend);
        (server, app_path, broker_path)
    }

    fn serve_provider(dir: &Path, backend: String) -> (BrokerServer, PathBuf, PathBuf, Arc<Fixed>) {
        let app_path = dir.join("fac.sock");
        let broker_path = dir.join("broker.sock");
        let provider = Arc::new(Fixed {
            app: UnixListener::bind(&app_path).unwrap(),
            backend,
            reported: Default::default(),
        });
        let server = BrokerServer::spawn(
            UnixListener::bind(&broker_path).unwrap(),
            Arc::clone(&provider) as Arc<dyn Provider>,
        )
        .unwrap();
        (server, app_path, broker_path, provider)
    }

    #[test]
    fn the_relays_reports_reach_the_provider_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (_server, _, broker, provider) = serve_provider(dir.path(), "127.0.0.1:1".into());
        let client = BrokerClient::new(&broker);
        client.report_rate_limited(3).unwrap();
        client.report_rate_limited(u64::MAX).unwrap();
        assert_eq!(*provider.reported.lock().unwrap(), [3, u64::MAX]);
        // A report cut short is dropped, and the broker serves on.
        let mut short = UnixStream::connect(&broker).unwrap();
        short.write_all(&[REPORT, 0, 0]).unwrap();
        drop(short);
        client.report_rate_limited(4).unwrap();
        assert_eq!(*provider.reported.lock().unwrap(), [3, u64::MAX, 4]);
    }

    #[test]
    fn hands_over_the_listener_and_a_backend_connection() {
        let dir = tempfile::tempdir().unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let (_server, app_path, broker) = serve(dir.path(), tcp.local_addr().unwrap().to_string());
        let client = BrokerClient::new(&broker);

        let listener = client.listener().unwrap();
        let mut app = UnixStream::connect(&app_path).unwrap();
        app.write_all(b"hi").unwrap();
        let (mut served, _) = listener.accept().unwrap();
        let mut got = [0u8; 2];
        served.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");

        let mut out = client.backend().unwrap();
        out.write_all(b"to backend").unwrap();
        let (mut at_backend, _) = tcp.accept().unwrap();
        let mut got = [0u8; 10];
        at_backend.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"to backend");
    }

    #[test]
    fn a_refusal_carries_the_shims_reason() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens on this port once the listener is dropped.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (_server, _, broker) = serve(dir.path(), format!("127.0.0.1:{port}"));
        match BrokerClient::new(&broker).backend() {
            Err(BrokerError::Refused(text)) => {
                assert!(text.contains("connecting to 127.0.0.1:"), "{text}");
                assert!(text.contains("refused"), "{text}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_request_is_refused_and_the_broker_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (_server, _, broker) = serve(dir.path(), "127.0.0.1:1".into());
        let mut raw = UnixStream::connect(&broker).unwrap();
        raw.write_all(b"X").unwrap();
        let mut reply = Vec::new();
        raw.read_to_end(&mut reply).unwrap();
        assert_eq!(reply[0], REFUSED);
        assert!(String::from_utf8_lossy(&reply[3..]).contains("unknown broker request 0x58"));
        assert!(BrokerClient::new(&broker).listener().is_ok());
    }

    #[test]
    fn silent_connections_cannot_pin_the_brokers_threads() {
        let dir = tempfile::tempdir().unwrap();
        let (_server, _, broker) = serve(dir.path(), "127.0.0.1:1".into());
        let silent: Vec<UnixStream> = (0..MAX_ANSWERING)
            .map(|_| UnixStream::connect(&broker).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            BrokerClient::new(&broker).listener().is_err(),
            "past the cap a connection is closed unanswered"
        );
        // The silent ones time out, and the broker answers again.
        std::thread::sleep(REQUEST_TIMEOUT + Duration::from_millis(300));
        assert!(BrokerClient::new(&broker).listener().is_ok());
        drop(silent);
    }

    #[test]
    fn stop_ends_the_accept_loop() {
        let dir = tempfile::tempdir().unwrap();
        let (mut server, _, broker) = serve(dir.path(), "127.0.0.1:1".into());
        server.stop();
        // The listener is closed with the thread: nobody answers any more.
        assert!(matches!(
            BrokerClient::new(&broker).listener(),
            Err(BrokerError::Io { .. })
        ));
    }
}
