//! The app's registration with its guest's VMI sidecar: the sidecar binds
//! `apps/<app-id>.sock` for the app's host uid, the shim bind-mounts it at
//! `/run/furnace/vmi.sock`, and unregisters it when the task is deleted.

use furnace_api::v1::{Permission, RegisterRequest};
use furnace_api::{Admin, ErrorCode};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where a guest's sidecar listens for the runtime.
pub fn admin_socket(socket_root: &Path, guest: &str) -> PathBuf {
    socket_root.join("guests").join(guest).join("admin.sock")
}

/// The socket the sidecar binds for `app_id` (it chooses this path; the
/// shim needs it before registering, to harden the spec).
pub fn app_socket(socket_root: &Path, guest: &str, app_id: &str) -> PathBuf {
    socket_root
        .join("guests")
        .join(guest)
        .join("apps")
        .join(format!("{app_id}.sock"))
}

/// The sidecar's app id for a container: unique per containerd namespace,
/// within the sidecar's 64-character `[A-Za-z0-9_.-]` limit.
pub fn app_id(namespace: &str, container_id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let id = format!("{}.{}", clean(namespace), clean(container_id));
    let id = id.trim_start_matches('.').to_owned();
    if id.len() <= 64 {
        return id;
    }
    // Long CRI ids: keep the tail (the random part) and a hash of the whole.
    let hash = fnv1a(format!("{namespace}/{container_id}").as_bytes());
    let tail = &id[id.len() - 47..];
    format!("{hash:016x}.{tail}")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("annotation `furnace.dev/guest`: no VMI sidecar serves guest `{guest}` (nothing answers on {socket}: {reason}); start `furnace-vmi-sidecar --guest {guest}` on this node or fix the annotation")]
    NoSidecar {
        guest: String,
        socket: PathBuf,
        reason: String,
    },
    #[error("annotation `furnace.dev/guest`: the sidecar of guest `{guest}` refused to register app `{app_id}`: {reason}")]
    Refused {
        guest: String,
        app_id: String,
        reason: String,
    },
}

/// A live registration; [`Registration::unregister`] ends it.
#[derive(Clone, Debug)]
pub struct Registration {
    pub guest: String,
    pub app_id: String,
    pub admin_socket: PathBuf,
    pub app_socket: PathBuf,
}

pub fn register(
    socket_root: &Path,
    guest: &str,
    app_id: &str,
    permissions: &BTreeSet<Permission>,
    host_uid: u32,
    host_gid: u32,
) -> Result<Registration, RegistrationError> {
    let admin_socket = admin_socket(socket_root, guest);
    let admin = Admin::connect(&admin_socket).map_err(|e| RegistrationError::NoSidecar {
        guest: guest.into(),
        socket: admin_socket.clone(),
        reason: e.to_string(),
    })?;
    let request = RegisterRequest {
        app_id: app_id.into(),
        permissions: permissions.iter().map(|p| *p as i32).collect(),
        uid: host_uid,
        gid: host_gid,
    };
    let reply = admin
        .register(&request)
        .map_err(|e| RegistrationError::Refused {
            guest: guest.into(),
            app_id: app_id.into(),
            reason: e.to_string(),
        })?;
    Ok(Registration {
        guest: guest.into(),
        app_id: app_id.into(),
        admin_socket,
        app_socket: PathBuf::from(reply.socket_path),
    })
}

impl Registration {
    /// Removes the app's socket. A sidecar that is gone has nothing left to remove.
    pub fn unregister(&self) -> Result<(), String> {
        match Admin::connect(&self.admin_socket) {
            Err(_) => Ok(()),
            Ok(admin) => match admin.unregister(&self.app_id) {
                Ok(_) => Ok(()),
                Err(e) if e.code == ErrorCode::NotFound => Ok(()),
                Err(e) => Err(format!(
                    "unregistering app {} from guest {}: {e}",
                    self.app_id, self.guest
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_fit_the_sidecar_alphabet_and_length() {
        assert_eq!(app_id("default", "probe-1"), "default.probe-1");
        assert_eq!(app_id("k8s.io", "a/b c"), "k8s.io.a_b_c");
        let long = app_id("k8s.io", &"f".repeat(64));
        assert!(long.len() <= 64, "{long}");
        assert_ne!(long, app_id("k8s.io", &format!("e{}", "f".repeat(63))));
        assert!(!app_id(".", "x").starts_with('.'));
    }
}
