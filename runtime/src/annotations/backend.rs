//! `furnace.dev/backend`, `backend-key` and `app-key`: where the facilities
//! relay connects, the key the app pins, and the app's own key.

use super::{APP_KEY, BACKEND, BACKEND_KEY};
use crate::error::PolicyError;
use furnace_api::facilities::PublicKey;
use std::path::PathBuf;

/// The tenant backend the facilities relay talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// `host:port` (IPv6 hosts in brackets).
    pub address: String,
    /// The backend's public key, which the app pins.
    pub key: PublicKey,
    /// Host path of the app's private key file, mounted read-only into the
    /// app's own partition.
    pub app_key: PathBuf,
}

/// `for_app` is false for a CRI sandbox, which carries the pod's
/// annotations but runs no relay: its backend annotations are checked, and
/// no key is asked of it (on Kubernetes the key is a Secret only the app's
/// container mounts).
pub(super) fn parse_backend(
    address: Option<&str>,
    key: Option<&str>,
    app_key: Option<&str>,
    for_app: bool,
) -> Result<Option<Backend>, PolicyError> {
    let (address, key) = match (address, key) {
        (None, None) if app_key.is_some() => {
            return Err(PolicyError::annotation(
                APP_KEY,
                format!("is set but {BACKEND} is not; the key only serves the facilities relay"),
                format!("add {BACKEND}=host:port and {BACKEND_KEY}, or remove {APP_KEY}"),
            ))
        }
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(PolicyError::annotation(
                BACKEND_KEY,
                format!(
                "is missing but {BACKEND} is set; the relay only talks to an authenticated backend"
            ),
                format!("add {BACKEND_KEY}=<the key printed by `furnace keygen`>"),
            ))
        }
        (None, Some(_)) => {
            return Err(PolicyError::annotation(
                BACKEND,
                format!("is missing but {BACKEND_KEY} is set"),
                format!("add {BACKEND}=host:port or remove {BACKEND_KEY}"),
            ))
        }
        (Some(a), Some(k)) => (a.trim(), k.trim()),
    };
    let bad_address = || {
        PolicyError::annotation(
            BACKEND,
            format!("`{address}` is not host:port"),
            "write it as host:port, e.g. backend.example.org:7443 or [2001:db8::1]:7443",
        )
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad_address)?;
    let port_ok = matches!(port.parse::<u16>(), Ok(p) if p != 0);
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        })
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
    };
    if !port_ok || !host_ok {
        return Err(bad_address());
    }
    let key = key.parse::<PublicKey>().map_err(|e| {
        PolicyError::annotation(
            BACKEND_KEY,
            format!("is not a backend key: {e}"),
            "paste the one line of the backend's NAME.pub that `furnace keygen` wrote",
        )
    })?;
    if !for_app && app_key.is_none() {
        return Ok(None);
    }
    let app_key = parse_app_key(app_key)?;
    Ok(Some(Backend {
        address: address.to_string(),
        key,
        app_key,
    }))
}

/// The app's private key: an absolute host path with no `..`, which the
/// shim opens itself (as root, no symlinks followed) and mounts read-only.
fn parse_app_key(value: Option<&str>) -> Result<PathBuf, PolicyError> {
    let value = value.ok_or_else(|| {
        PolicyError::annotation(
            APP_KEY,
            format!("is missing but {BACKEND} is set; the app seals its messages with its own key"),
            format!("run `furnace keygen app` and add {APP_KEY}=/path/to/app.key"),
        )
    })?;
    let value = value.trim();
    let clean = value.starts_with('/')
        && value
            .split('/')
            .skip(1)
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !clean {
        return Err(PolicyError::annotation(
            APP_KEY,
            format!("`{value}` is not an absolute path without `..`"),
            "give the host path of the app's .key file, e.g. /etc/furnace/keys/app.key",
        ));
    }
    Ok(PathBuf::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(r: Result<impl std::fmt::Debug, PolicyError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn backend_needs_a_valid_address_and_keys() {
        let key = furnace_api::facilities::Keypair::generate()
            .public
            .to_string();
        let k = Some(key.as_str());
        let app = Some("/etc/furnace/keys/app.key");
        let b = parse_backend(Some("backend.example.org:7443"), k, app, true)
            .unwrap()
            .unwrap();
        assert_eq!(b.address, "backend.example.org:7443");
        assert_eq!(b.key.to_string(), key);
        assert_eq!(b.app_key, std::path::Path::new("/etc/furnace/keys/app.key"));
        for good in ["[2001:db8::1]:7443", "10.0.0.1:1"] {
            parse_backend(Some(good), k, app, true).unwrap().unwrap();
        }
        for bad in [
            "host",
            "host:0",
            "host:70000",
            ":80",
            "ho st:80",
            "[::1:80",
            "a/b:80",
        ] {
            let e = err_of(parse_backend(Some(bad), k, app, true));
            assert!(e.contains(BACKEND), "{bad:?}: {e}");
        }
        let e = err_of(parse_backend(Some("h:1"), None, app, true));
        assert!(e.contains(BACKEND_KEY), "{e}");
        let e = err_of(parse_backend(None, k, app, true));
        assert!(e.contains(BACKEND), "{e}");
        for bad_key in ["a b", "k3y", "AAAA"] {
            let e = err_of(parse_backend(Some("h:1"), Some(bad_key), app, true));
            assert!(
                e.contains(BACKEND_KEY) && e.contains("furnace keygen"),
                "{e}"
            );
        }
        let e = err_of(parse_backend(Some("h:1"), k, None, true));
        assert!(e.contains(APP_KEY), "{e}");
        for bad_path in ["app.key", "/etc/../root/app.key", "/etc/./x", ""] {
            let e = err_of(parse_backend(Some("h:1"), k, Some(bad_path), true));
            assert!(e.contains(APP_KEY), "{bad_path:?}: {e}");
        }
        let e = err_of(parse_backend(None, None, app, true));
        assert!(e.contains(APP_KEY), "{e}");
    }

    #[test]
    fn a_sandbox_checks_the_backend_but_needs_no_key() {
        let key = furnace_api::facilities::Keypair::generate()
            .public
            .to_string();
        let k = Some(key.as_str());
        assert_eq!(parse_backend(Some("h:1"), k, None, false).unwrap(), None);
        let e = err_of(parse_backend(Some("h"), k, None, false));
        assert!(e.contains(BACKEND), "{e}");
        let e = err_of(parse_backend(Some("h:1"), k, None, true));
        assert!(e.contains(APP_KEY), "{e}");
    }
}
