//! The tenant's backend, when the container has one: reached through the
//! facilities relay's socket (docs/facilities.md), which the runtime mounts
//! at `/run/furnace/fac.sock` only when `furnace.dev/backend` is set.

use furnace_api::facilities::{self, Endpoint};
use furnace_api::{ErrorCode, Facilities};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct BackendArgs {
    /// Also report to the tenant's backend through this facilities socket.
    /// Without the flag the report goes to the backend when
    /// /run/furnace/fac.sock exists (the runtime mounts it only when the
    /// container sets furnace.dev/backend).
    #[arg(long, value_name = "PATH")]
    pub facilities: Option<PathBuf>,
    /// The app's private key (`furnace keygen`).
    #[arg(long, value_name = "PATH", default_value = facilities::DEFAULT_APP_KEY)]
    pub app_key: PathBuf,
    /// The backend's public key file [default: $FURNACE_BACKEND_KEY, the
    /// key itself, else /run/furnace/backend.pub].
    #[arg(long, value_name = "PATH")]
    pub backend_key: Option<PathBuf>,
    /// Seconds to wait for the backend to take the report before giving up.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub flush_timeout: u64,
}

impl BackendArgs {
    /// The facilities socket to report through, if there is a backend.
    pub fn socket(&self) -> Option<PathBuf> {
        match &self.facilities {
            Some(path) => Some(path.clone()),
            None => {
                let default = Path::new(facilities::DEFAULT_SOCKET);
                default.exists().then(|| default.to_owned())
            }
        }
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

    /// Sends `message` to the backend and waits until the backend has it.
    pub fn send(&self, socket: &Path, message: &[u8]) -> Result<(), String> {
        let fac = self.connect(socket)?;
        fac.notify(message)
            .map_err(|e| format!("sending the report: {e}"))?;
        fac.flush(self.flush_timeout()).map_err(|e| match e.code {
            ErrorCode::DeadlineExceeded => format!(
                "the backend did not confirm the report within {}s: {e}",
                self.flush_timeout
            ),
            _ => format!("waiting for the backend to confirm the report: {e}"),
        })
    }
}
