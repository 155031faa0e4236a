//! The tenant's backend, reached through the facilities relay's socket
//! (docs/facilities.md), which the runtime mounts at `/run/furnace/fac.sock`
//! only when the container sets `furnace.dev/backend`.

use furnace_api::facilities::{self, Endpoint};
use furnace_api::{ErrorCode, Facilities};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct BackendArgs {
    /// The facilities socket for --to-backend (giving it implies
    /// --to-backend) [default: /run/furnace/fac.sock].
    #[arg(long, value_name = "PATH")]
    pub facilities: Option<PathBuf>,
    /// With --to-backend: the app's private key (`furnace keygen`).
    #[arg(long, value_name = "PATH", default_value = facilities::DEFAULT_APP_KEY)]
    pub app_key: PathBuf,
    /// With --to-backend: the backend's public key file [default:
    /// $FURNACE_BACKEND_KEY, the key itself, else /run/furnace/backend.pub].
    #[arg(long, value_name = "PATH")]
    pub backend_key: Option<PathBuf>,
    /// With --to-backend: seconds to wait for the relay to make room for a
    /// chunk, and at the end for the backend to take the dump.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub flush_timeout: u64,
}

impl BackendArgs {
    /// The facilities socket, when the dump goes to the backend.
    pub fn socket(&self, to_backend: bool) -> Option<PathBuf> {
        self.facilities
            .clone()
            .or_else(|| to_backend.then(|| PathBuf::from(facilities::DEFAULT_SOCKET)))
    }

    pub fn flush_timeout(&self) -> Duration {
        Duration::from_secs(self.flush_timeout)
    }

    /// A session through `socket`, with the keys the flags name (each,
    /// when not given, where the runtime mounts it).
    pub fn connect(&self, socket: &Path) -> Result<Facilities, String> {
        Facilities::connect_to(&Endpoint {
            socket: Some(socket.to_owned()),
            app_key: Some(self.app_key.clone()),
            backend_key: self.backend_key.clone(),
        })
        .map_err(|e| format!("{}: {e}", socket.display()))
    }
}

/// Sends `message`, waiting out the relay's limits: a LIMIT_EXCEEDED for
/// the rate or a full outbox is retried, after waiting for the backend to
/// take what is in flight, until `patience` passes without the relay taking
/// it. Never drops the message: it is sent or this fails. Returns how many
/// times the relay refused it first.
pub fn notify_patiently(
    fac: &Facilities,
    message: &[u8],
    patience: Duration,
) -> Result<u32, String> {
    let max = fac.relay_status().map_or(u64::MAX, |s| s.max_message_bytes);
    if message.len() as u64 > max {
        return Err(format!(
            "a message of {} bytes is over the relay's limit of {max}",
            message.len()
        ));
    }
    let deadline = Instant::now() + patience;
    let mut refused = 0;
    let mut pause = Duration::from_millis(2);
    loop {
        let e = match fac.notify(message) {
            Ok(()) => return Ok(refused),
            Err(e) if e.code == ErrorCode::LimitExceeded => e,
            Err(e) => return Err(e.to_string()),
        };
        refused += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the relay still refuses after {}s: {e}",
                patience.as_secs()
            ));
        }
        // A full outbox empties as the backend confirms; the rate refills on
        // its own, so a flush that returns at once is followed by a pause.
        match fac.flush(left.min(Duration::from_secs(1))) {
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::DeadlineExceeded => {}
            Err(e) => return Err(format!("waiting for the relay: {e}")),
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
