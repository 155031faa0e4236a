//! The tenant's side (docs/facilities.md, "Backend library"): accepts relay
//! connections, admits only the app keys it allows, hands each message to a
//! callback and answers requests with what the callback returns; sends to
//! one app or to all of them; runs timers. `furnace backend` is built on it.
//!
//! A directed message goes to the sessions authenticated with that app's key
//! and to nothing else: there is no routing id a relay could get wrong.

use crate::{lock, wire};
use furnace_api::fac::v1::{self as fac, frame::Body, Kind};
use furnace_api::facilities::frame::FRAME_OVERHEAD;
use furnace_api::facilities::seal::{sealed_len, BackendHandshake, Channel};
use furnace_api::facilities::{PrivateKey, PublicKey};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppMessageKind {
    Notify,
    /// The callback's return value is the reply.
    Request,
}

/// What the backend's callback is told about one message.
#[derive(Clone, Debug)]
pub struct AppMessage {
    /// The app's name on the allow list.
    pub app: String,
    pub kind: AppMessageKind,
    pub data: Vec<u8>,
}

pub type OnMessage = Arc<dyn Fn(&AppMessage) -> Vec<u8> + Send + Sync>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("app {0} is not on the allow list")]
    UnknownApp(String),
    #[error("app {0} has no open session")]
    NotConnected(String),
    #[error("the message could not be sealed: {0}")]
    Seal(String),
}

struct Live {
    app: String,
    down: Arc<Channel>,
    next_seq: Arc<AtomicU64>,
    tx: mpsc::UnboundedSender<Body>,
}

pub struct Backend {
    key: PrivateKey,
    allow: HashMap<[u8; 32], String>,
    on_message: OnMessage,
    sessions: Mutex<HashMap<u64, Live>>,
    next_session: AtomicU64,
    /// Per Hello (upstream handshake hash): the last sequence delivered,
    /// so a relay resending after a reconnect delivers nothing twice.
    delivered: Mutex<HashMap<Vec<u8>, u64>>,
    max_message_bytes: usize,
}

impl Backend {
    /// `allow`: each app's name and public key.
    pub fn new(
        key: PrivateKey,
        allow: Vec<(String, PublicKey)>,
        on_message: OnMessage,
    ) -> Arc<Backend> {
        Arc::new(Backend {
            key,
            allow: allow.into_iter().map(|(name, k)| (k.0, name)).collect(),
            on_message,
            sessions: Mutex::default(),
            next_session: AtomicU64::new(1),
            delivered: Mutex::default(),
            max_message_bytes: 64 << 20,
        })
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let backend = self.clone();
            tokio::spawn(async move {
                if let Err(e) = backend.connection(stream).await {
                    tracing::warn!("relay {peer}: {e}");
                }
            });
        }
    }

    /// Sends `data` to every open session of `app`; returns how many.
    pub fn notify(&self, app: &str, data: &[u8]) -> Result<usize, SendError> {
        if !self.allow.values().any(|a| a == app) {
            return Err(SendError::UnknownApp(app.into()));
        }
        match self.send(Kind::Directed, data, |a| a == app)? {
            0 => Err(SendError::NotConnected(app.into())),
            n => Ok(n),
        }
    }

    /// Sends `data` to every open session; returns how many.
    pub fn broadcast(&self, data: &[u8]) -> Result<usize, SendError> {
        self.send(Kind::Broadcast, data, |_| true)
    }

    /// Names of the apps with an open session.
    pub fn connected(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.sessions)
            .values()
            .map(|l| l.app.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Calls `tick` every `period` until the runtime ends.
    pub fn every(self: &Arc<Self>, period: Duration, tick: impl Fn(&Backend) + Send + 'static) {
        let backend = self.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.tick().await;
            loop {
                interval.tick().await;
                tick(&backend);
            }
        });
    }

    fn send(&self, kind: Kind, data: &[u8], to: impl Fn(&str) -> bool) -> Result<usize, SendError> {
        let sessions = lock(&self.sessions);
        let mut sent = 0;
        for live in sessions.values().filter(|l| to(&l.app)) {
            let seq = live.next_seq.fetch_add(1, Ordering::Relaxed);
            let ciphertext = live
                .down
                .seal(seq, kind, 0, data)
                .map_err(|e| SendError::Seal(e.to_string()))?;
            let sealed = fac::Sealed {
                seq,
                kind: kind as i32,
                request_id: 0,
                ciphertext: ciphertext.into(),
                deadline_ms: 0,
            };
            if live.tx.send(Body::Sealed(sealed)).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    }

    async fn connection(self: Arc<Self>, stream: TcpStream) -> Result<(), String> {
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (read, mut write) = stream.into_split();
        let mut rx = wire::spawn_reader(read, sealed_len(self.max_message_bytes) + FRAME_OVERHEAD);
        let hello = match rx.recv().await {
            Some(Ok(Body::Hello(h))) => h,
            Some(other) => return Err(format!("the first frame was not a Hello: {other:?}")),
            None => return Ok(()),
        };
        let admitted = BackendHandshake::read_hello(&self.key, &hello.noise)
            .map_err(|e| format!("{e} (is furnace.dev/backend-key this backend's public key?)"))
            .and_then(|(handshake, up)| match self.allow.get(&handshake.app.0) {
                Some(app) => Ok((app.clone(), handshake, up)),
                None => Err(format!(
                    "app key {} is not on the allow list",
                    handshake.app
                )),
            });
        let (app, handshake, up) = match admitted {
            Ok(admitted) => admitted,
            Err(reason) => {
                let refused = Body::Refused(fac::Refused {
                    reason: reason.clone(),
                });
                let _ = wire::write(&mut write, refused).await;
                return Err(format!("refused a session: {reason}"));
            }
        };
        let (welcome, down) = handshake.welcome(&self.key).map_err(|e| e.to_string())?;
        wire::write(&mut write, Body::Welcome(fac::Welcome { noise: welcome }))
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!("app {app}: session opened");
        let hello_id = hello.noise;
        let down = Arc::new(down);
        let next_seq = Arc::new(AtomicU64::new(1));
        let (tx, mut out) = mpsc::unbounded_channel();
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        lock(&self.sessions).insert(
            id,
            Live {
                app: app.clone(),
                down: down.clone(),
                next_seq: next_seq.clone(),
                tx: tx.clone(),
            },
        );
        let writer = tokio::spawn(async move {
            while let Some(body) = out.recv().await {
                if wire::write(&mut write, body).await.is_err() {
                    break;
                }
            }
        });
        let result = self
            .receive(&app, &hello_id, &up, &down, &next_seq, &tx, &mut rx)
            .await;
        lock(&self.sessions).remove(&id);
        drop(tx);
        let _ = writer.await;
        tracing::info!("app {app}: session closed");
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn receive(
        &self,
        app: &str,
        hello_id: &[u8],
        up: &Channel,
        down: &Channel,
        next_seq: &AtomicU64,
        tx: &mpsc::UnboundedSender<Body>,
        rx: &mut mpsc::Receiver<Result<Body, furnace_api::facilities::frame::FrameError>>,
    ) -> Result<(), String> {
        while let Some(frame) = rx.recv().await {
            let sealed = match frame {
                Ok(Body::Sealed(s)) => s,
                Ok(_) => continue,
                Err(e) => return Err(format!("app {app}: {e}")),
            };
            let kind = Kind::try_from(sealed.kind).unwrap_or(Kind::Unspecified);
            let done = lock(&self.delivered).get(hello_id).copied().unwrap_or(0);
            if sealed.seq <= done {
                let _ = tx.send(Body::Delivered(fac::Delivered { seq: done }));
                continue;
            }
            let data = up
                .open(sealed.seq, kind, sealed.request_id, &sealed.ciphertext)
                .map_err(|e| format!("app {app}: {e}; closing the session"))?;
            let kind = match kind {
                Kind::Notify => AppMessageKind::Notify,
                Kind::Request => AppMessageKind::Request,
                _ => return Err(format!("app {app} sent a {kind:?}")),
            };
            let message = AppMessage {
                app: app.into(),
                kind,
                data,
            };
            // The callback may block (`furnace backend --on-request` runs a
            // command): off the async workers, so other sessions go on.
            let on_message = self.on_message.clone();
            let reply = tokio::task::spawn_blocking(move || on_message(&message))
                .await
                .map_err(|e| format!("app {app}: the message callback failed: {e}"))?;
            lock(&self.delivered).insert(hello_id.to_vec(), sealed.seq);
            if kind == AppMessageKind::Request {
                let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                let ciphertext = down
                    .seal(seq, Kind::Reply, sealed.seq, &reply)
                    .map_err(|e| e.to_string())?;
                let _ = tx.send(Body::Sealed(fac::Sealed {
                    seq,
                    kind: Kind::Reply as i32,
                    request_id: sealed.seq,
                    ciphertext: ciphertext.into(),
                    deadline_ms: 0,
                }));
            }
            let _ = tx.send(Body::Delivered(fac::Delivered { seq: sealed.seq }));
        }
        Ok(())
    }
}
