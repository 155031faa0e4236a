//! One connection: frames in, dispatch, frames out. A thread per connection
//! keeps per-connection state (which app, which leases) trivially correct.

use super::apps::App;
use super::reply::Reply;
use super::Sidecar;
use furnace_api::ttrpc::{Request, Response};
use furnace_api::wire::{self, TYPE_REQUEST, TYPE_RESPONSE};
use furnace_api::{ApiError, ErrorCode, ADMIN_SERVICE, VMI_SERVICE};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use prost::Message;
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

pub fn spawn(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new()
        .name("connection".into())
        .spawn(f)
    {
        tracing::error!(error = %e, "could not start a connection thread");
    }
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    getsockopt(stream, PeerCredentials).ok().map(|c| c.uid())
}

pub fn serve_admin(sidecar: &Arc<Sidecar>, stream: UnixStream) {
    // The socket is 0600 root; this also refuses a root-owned descriptor
    // handed to someone else.
    if peer_uid(&stream) != Some(0) {
        tracing::warn!("refused an admin connection from a non-root peer");
        return;
    }
    serve(stream, |service, method, payload, reply| {
        if service != ADMIN_SERVICE {
            return Err(unknown(service, method));
        }
        reply.encoded(&sidecar.handle_admin(method, payload)?);
        Ok(())
    });
}

/// Serves one connection of `app` until it closes, then ends the leases it took.
pub fn serve_app(sidecar: &Arc<Sidecar>, app: &Arc<App>, stream: UnixStream) {
    let uid = peer_uid(&stream);
    if uid != Some(app.uid) && uid != Some(0) {
        tracing::warn!(app = %app.id, peer_uid = ?uid, "refused a connection from a uid the app was not registered for");
        return;
    }
    let id = sidecar.connection_id();
    {
        let mut connections = app.connections();
        if app.is_closed() || connections.len() >= sidecar.limits.max_connections as usize {
            tracing::warn!(app = %app.id, "refused a connection: app closed or at its connection limit");
            return;
        }
        match stream.try_clone() {
            Ok(clone) => connections.insert(id, clone),
            Err(_) => return,
        };
    }
    let _held = ConnectionHolds { sidecar, app, id };
    serve(stream, |service, method, payload, reply| {
        if service != VMI_SERVICE {
            return Err(unknown(service, method));
        }
        // Throttled calls wait their turn before they count as in flight.
        app.restrictions.pace()?;
        let call = InFlight::enter(&app.in_flight);
        let served = if call.count > sidecar.limits.max_in_flight {
            Err(ApiError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "more than {} calls in flight for this app",
                    sidecar.limits.max_in_flight
                ),
            ))
        } else {
            sidecar.handle_vmi(app, id, method, payload, reply)
        };
        if let Err(refused) = &served {
            app.restrictions.count(refused.code);
        }
        served
    });
}

/// What one app connection holds: its slot, pause leases and event
/// subscriptions (and through them, breakpoints and held events). Dropped
/// on every way out of [`serve_app`], an unwinding panic included.
struct ConnectionHolds<'a> {
    sidecar: &'a Sidecar,
    app: &'a App,
    id: u64,
}

impl Drop for ConnectionHolds<'_> {
    fn drop(&mut self) {
        let (sidecar, app, id) = (self.sidecar, self.app, self.id);
        app.connections().remove(&id);
        let released = sidecar.leases.release_where(|h| h.connection == id);
        if released > 0 {
            tracing::info!(app = %app.id, released, "connection closed; its pause leases ended");
        }
        let ended = sidecar.events.remove_where(|o| o.connection == id);
        if ended > 0 {
            tracing::info!(app = %app.id, ended, "connection closed; its event subscriptions ended");
        }
    }
}

/// One call counted in an app's `in_flight` for as long as this lives.
struct InFlight<'a> {
    counter: &'a AtomicU32,
    /// The calls in flight, this one included.
    count: u32,
}

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicU32) -> Self {
        let count = counter.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        InFlight { counter, count }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

fn unknown(service: &str, method: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Unsupported,
        format!("no method /{service}/{method}"),
    )
}

/// The most a reply's message may take: the frame limit, less the
/// `ttrpc.Response` prefix around it (a tag and a varint).
pub const MAX_REPLY_PAYLOAD: usize = wire::MAX_PAYLOAD as usize - 16;

/// The frame loop over a connected socket: see [`serve_frames`].
fn serve(
    stream: UnixStream,
    handle: impl FnMut(&str, &str, &[u8], &mut Reply) -> Result<(), ApiError>,
) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    serve_frames(BufReader::with_capacity(64 << 10, stream), writer, handle);
}

/// Reads request frames from `reader` until it ends or fails, hands each
/// decoded request to `handle` and writes the reply frame to `writer`.
/// Oversized frames are answered and end the connection (their bytes cannot
/// be skipped safely); undecodable ones are answered and the connection goes on.
/// A handler that panics has its call answered INTERNAL and ends the
/// connection, whose state it may have left half-changed.
pub fn serve_frames(
    mut reader: impl Read,
    mut writer: impl Write,
    mut handle: impl FnMut(&str, &str, &[u8], &mut Reply) -> Result<(), ApiError>,
) {
    let mut payload = Vec::new();
    let mut reply = Reply::default();
    loop {
        let header = match wire::read_header(&mut reader) {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => return,
        };
        let fail = |mut writer: &mut dyn Write, error: &ApiError| {
            let response = Response {
                status: Some(error.to_status()),
                payload: Vec::new(),
            };
            wire::write_frame(
                &mut writer,
                header.stream_id,
                TYPE_RESPONSE,
                &response.encode_to_vec(),
            )
        };
        if header.length > wire::MAX_PAYLOAD {
            let error = ApiError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "a frame of {} bytes exceeds the {} byte limit",
                    header.length,
                    wire::MAX_PAYLOAD
                ),
            );
            let _ = fail(&mut writer, &error);
            return;
        }
        let Ok(request) = wire::read_payload(&mut reader, header.length, &mut payload) else {
            return;
        };
        let outcome = if header.kind != TYPE_REQUEST {
            Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("frame type {} is not a request", header.kind),
            ))
        } else {
            match Request::decode(request) {
                Ok(request) => {
                    let call = AssertUnwindSafe(|| {
                        handle(
                            &request.service,
                            &request.method,
                            &request.payload,
                            &mut reply,
                        )
                    });
                    match std::panic::catch_unwind(call) {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            tracing::error!(method = %request.method, "a call panicked; its connection is closed");
                            let error = ApiError::new(
                                ErrorCode::Internal,
                                format!(
                                    "the sidecar failed while handling {}; this connection is closed",
                                    request.method
                                ),
                            );
                            let _ = fail(&mut writer, &error);
                            return;
                        }
                    }
                }
                Err(e) => Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("not a ttrpc request: {e}"),
                )),
            }
        };
        let sent = match outcome {
            Ok(()) if reply.payload_len() > MAX_REPLY_PAYLOAD => {
                let error = ApiError::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "the reply of {} bytes would exceed the {} byte frame limit; ask for less per call",
                        reply.payload_len(),
                        wire::MAX_PAYLOAD
                    ),
                );
                fail(&mut writer, &error)
            }
            Ok(()) => writer.write_all(reply.frame(header.stream_id)),
            Err(error) => fail(&mut writer, &error),
        };
        if sent.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(client: &mut UnixStream, stream_id: u32) -> Response {
        let request = Request {
            service: "s".into(),
            method: "m".into(),
            ..Default::default()
        };
        wire::write_frame(client, stream_id, TYPE_REQUEST, &request.encode_to_vec()).unwrap();
        let header = wire::read_header(client).unwrap().unwrap();
        assert_eq!(header.stream_id, stream_id);
        assert!(header.length <= wire::MAX_PAYLOAD, "{header:?}");
        let mut buf = Vec::new();
        Response::decode(wire::read_payload(client, header.length, &mut buf).unwrap()).unwrap()
    }

    #[test]
    fn a_reply_too_big_for_a_frame_is_an_error_and_the_connection_goes_on() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut sizes = vec![MAX_REPLY_PAYLOAD + 1, 10].into_iter();
        let server = std::thread::spawn(move || {
            serve(server, |_, _, _, reply| {
                let size = sizes.next().unwrap();
                reply.bytes_with(size, |out| -> Result<(), ApiError> {
                    out.fill(7);
                    Ok(())
                })
            })
        });
        let status = ask(&mut client, 1).status.expect("an error status");
        assert_eq!(
            ApiError::from_status(&status).code,
            ErrorCode::LimitExceeded
        );
        let fine = ask(&mut client, 3);
        assert!(fine.status.is_none());
        assert_eq!(fine.payload.len(), 12, "a Bytes message of 10 bytes");
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn a_call_that_panics_is_answered_internal_and_ends_the_connection() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            serve(server, |_, _, _, _| -> Result<(), ApiError> {
                panic!("a bug in a handler")
            })
        });
        let status = ask(&mut client, 1).status.expect("an error status");
        let error = ApiError::from_status(&status);
        assert_eq!(error.code, ErrorCode::Internal, "{error}");
        assert!(error.message.contains("connection is closed"), "{error}");
        server.join().expect("the panic stays inside the call");
        assert!(
            wire::read_header(&mut client).unwrap().is_none(),
            "the sidecar hung up"
        );
    }

    #[test]
    fn an_in_flight_call_is_uncounted_even_when_it_unwinds() {
        let counter = AtomicU32::new(0);
        let unwound = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let call = InFlight::enter(&counter);
            assert_eq!(call.count, 1);
            panic!("a bug mid-call");
        }));
        assert!(unwound.is_err());
        assert_eq!(counter.load(Ordering::Acquire), 0);
    }
}
