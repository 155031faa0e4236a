//! `-v` and `-info`, answered before the shim kit sees the arguments
//! (containerd-shim 0.11 parses both but acts on neither).
//!
//! `-info` is containerd 2's runtime introspection: it reads the runtime
//! options on stdin and prints a `containerd.types.RuntimeInfo` message
//! whose `features` are the OCI runtime features document (JSON).

use crate::RUNTIME_ID;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use std::io::{Read, Write};

const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

pub enum Flag {
    Version,
    Info,
}

/// Which informational flag, if any, the shim was started with.
pub fn requested() -> Option<Flag> {
    std::env::args()
        .skip(1)
        .find_map(|a| match a.trim_start_matches('-') {
            "v" | "version" if a.starts_with('-') => Some(Flag::Version),
            "info" if a.starts_with('-') => Some(Flag::Info),
            _ => None,
        })
}

pub fn print_version() {
    println!(
        "{}:\n  Runtime: {RUNTIME_ID}\n  Version: {}\n  libcontainer: 0.7",
        env!("CARGO_BIN_NAME"),
        env!("CARGO_PKG_VERSION")
    );
}

/// The OCI runtime features document: what a Furnace partition supports.
pub fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": [],
        "mountOptions": ["ro", "rw", "nosuid", "nodev", "noexec", "bind", "rbind", "rprivate", "size", "mode"],
        "linux": {
            "namespaces": ["pid", "ipc", "uts", "mount", "network", "user", "cgroup"],
            "capabilities": [],
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true, "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_NOTIFY"]},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.furnace.roles": "app,fac,sandbox",
            "io.furnace.annotations": "furnace.dev/guest,furnace.dev/permissions,furnace.dev/limits,furnace.dev/backend,furnace.dev/backend-key,furnace.dev/app-key"
        }
    })
}

pub fn print_info() -> std::io::Result<()> {
    let mut options = Vec::new();
    std::io::stdin().read_to_end(&mut options)?;
    let mut info = RuntimeInfo::new();
    info.name = RUNTIME_ID.into();
    let mut version = RuntimeVersion::new();
    version.version = env!("CARGO_PKG_VERSION").into();
    info.version = MessageField::some(version);
    if !options.is_empty() {
        if let Ok(any) = Any::parse_from_bytes(&options) {
            info.options = MessageField::some(any);
        }
    }
    let mut any = Any::new();
    any.type_url = FEATURES_TYPE_URL.into();
    any.value = features().to_string().into_bytes();
    info.features = MessageField::some(any);
    let bytes = info.write_to_bytes().map_err(std::io::Error::other)?;
    std::io::stdout().lock().write_all(&bytes)
}
