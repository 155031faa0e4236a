//! The shim's side of the broker: the app's listener, and connections to
//! the one backend address the app's annotations name, resolved once at
//! create and held to the provider's `refused_backend_networks`.

use crate::instance::CreateError;
use furnace_fac_broker::{Provider, Request};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// All of one dial, over every address; the relay gives up after 5 s.
const DIAL_DEADLINE: Duration = Duration::from_secs(4);
/// Backend dials one relay may have in progress at once.
const MAX_DIALS: usize = 8;

/// The addresses `address` resolves to that the provider lets the shim
/// dial. The shim dials from the host's network, so an address in a refused
/// network (the host itself, link-local metadata services by default) is an
/// error naming it, and so is an address that resolves to nothing else.
/// Resolved once: a name that later resolves elsewhere is not followed.
pub fn resolve(
    address: &str,
    refused: &[furnace_runtime::config::IpNet],
) -> Result<Vec<SocketAddr>, CreateError> {
    let annotation = furnace_runtime::annotations::BACKEND;
    let all: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| CreateError::Invalid(format!("{annotation}={address}: resolving it: {e}")))?
        .collect();
    let is_refused = |ip: IpAddr| refused.iter().any(|n| n.contains(&ip.to_canonical()));
    let allowed: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|a| !is_refused(a.ip()))
        .collect();
    if allowed.is_empty() {
        let shown: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
        return Err(CreateError::Invalid(format!(
            "{annotation}={address} resolves to {}, in a network this provider does not let apps reach (facilities.refused_backend_networks in /etc/furnace/furnace.toml); name a backend outside it",
            if shown.is_empty() { "no address".to_string() } else { shown.join(", ") }
        )));
    }
    Ok(allowed)
}

/// Answers the relay's broker requests.
pub struct Dialer {
    pub app: UnixListener,
    /// For messages: what the annotation said.
    pub address: String,
    pub addresses: Vec<SocketAddr>,
    pub dialing: AtomicUsize,
    pub rate_limited: Arc<RateLimitTotal>,
}

/// The messages the task's relays refused at the rate limit, as they report
/// them. Each relay counts from 0, so a report lower than the last one comes
/// from a restarted relay, and the last one's count is kept.
#[derive(Default)]
pub struct RateLimitTotal(Mutex<(u64, u64)>);

impl RateLimitTotal {
    fn update(&self, total: u64) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (earlier, current) = &mut *counts;
        if total < *current {
            *earlier = earlier.saturating_add(*current);
        }
        *current = total;
    }

    pub fn get(&self) -> u64 {
        let counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        counts.0.saturating_add(counts.1)
    }
}

impl Provider for Dialer {
    fn provide(&self, request: Request) -> Result<OwnedFd, String> {
        match request {
            Request::Listener => self
                .app
                .try_clone()
                .map(OwnedFd::from)
                .map_err(|e| format!("sharing the app's listener: {e}")),
            Request::Backend => {
                if self.dialing.fetch_add(1, Ordering::SeqCst) >= MAX_DIALS {
                    self.dialing.fetch_sub(1, Ordering::SeqCst);
                    return Err(format!(
                        "{MAX_DIALS} connections to the backend are being made already"
                    ));
                }
                let result = self.dial();
                self.dialing.fetch_sub(1, Ordering::SeqCst);
                result
            }
        }
    }

    fn rate_limited(&self, total: u64) {
        self.rate_limited.update(total);
    }
}

impl Dialer {
    /// Each address in turn, with what is left of [`DIAL_DEADLINE`] shared
    /// among those not yet tried.
    fn dial(&self) -> Result<OwnedFd, String> {
        let deadline = Instant::now() + DIAL_DEADLINE;
        let mut last = String::new();
        for (i, a) in self.addresses.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            let share = left / (self.addresses.len() - i) as u32;
            if share.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(a, share) {
                Ok(stream) => return Ok(stream.into()),
                Err(e) => last = format!("connecting to the backend {} ({a}): {e}", self.address),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Vec<furnace_runtime::config::IpNet> {
        furnace_runtime::ProviderConfig::default()
            .facilities
            .refused_backend_networks
    }

    #[test]
    fn the_host_and_metadata_services_are_refused_by_default() {
        for address in [
            "127.0.0.1:7000",
            "localhost:7000",
            "[::1]:7000",
            "[::ffff:127.0.0.1]:7000",
            "169.254.169.254:80",
            "0.0.0.0:7000",
        ] {
            let e = resolve(address, &refused()).unwrap_err().to_string();
            assert!(e.contains("refused_backend_networks"), "{address}: {e}");
            assert!(e.contains(address), "{address}: {e}");
        }
    }

    #[test]
    fn other_addresses_are_kept_as_resolved() {
        let got = resolve("10.213.0.2:7000", &refused()).unwrap();
        assert_eq!(got, ["10.213.0.2:7000".parse().unwrap()]);
        // A provider that refuses nothing lets the host be dialled.
        assert_eq!(resolve("127.0.0.1:9", &[]).unwrap().len(), 1);
    }
}
