//! The facilities relay's partition (role `fac`), which the shim builds from
//! nothing: an empty read-only root, the relay program, the broker socket
//! and the app's storage directory bound in, and the provider's limits as
//! the relay's arguments. [`crate::harden_as`] then applies the fac policy.

use super::{BROKER_SOCKET, RELAY_PROGRAM, STORAGE_DIR};
use crate::config::FacilitiesConfig;
use crate::units::ByteSize;
use oci_spec::runtime::{ProcessBuilder, RootBuilder, Spec, UserBuilder};
use std::path::Path;

/// The relay's command line: the backend it serves (dialled by the shim),
/// the broker, the storage and every limit from `[facilities]`.
pub fn relay_args(
    backend: &str,
    config: &FacilitiesConfig,
    storage_quota: ByteSize,
) -> Vec<String> {
    [
        RELAY_PROGRAM,
        "--broker",
        BROKER_SOCKET,
        "--backend",
        backend,
        "--storage",
        STORAGE_DIR,
    ]
    .into_iter()
    .map(String::from)
    .chain([
        format!("--storage-quota={}", storage_quota.bytes()),
        format!("--max-message-bytes={}", config.max_message_bytes.bytes()),
        format!("--messages-per-second={}", config.messages_per_second),
        format!(
            "--max-bytes-in-flight={}",
            config.max_bytes_in_flight.bytes()
        ),
    ])
    .collect()
}

/// A spec that runs `args` as container root (unprivileged on the host, the
/// user namespace maps it) on the empty directory `rootfs`.
pub fn relay_spec(rootfs: &Path, args: Vec<String>) -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some("furnace-fac".into()));
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(true)
            .build()
            .expect("every Root field is set"),
    ));
    spec.set_process(Some(
        ProcessBuilder::default()
            .args(args)
            .env(vec![
                format!("PATH={}", super::SOCKET_DIR),
                "FURNACE_LOG=info".to_string(),
            ])
            .cwd("/")
            .user(
                UserBuilder::default()
                    .uid(0u32)
                    .gid(0u32)
                    .build()
                    .expect("uid and gid are set"),
            )
            .build()
            .expect("every Process field is set"),
    ));
    spec.set_mounts(Some(vec![]));
    spec
}
