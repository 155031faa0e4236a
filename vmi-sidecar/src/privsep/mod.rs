//! Privilege separation of the sidecar (docs/sidecar.md).
//!
//! `furnace-vmi-sidecar` starts as root, the **supervisor**. It opens what
//! needs privilege (the guest's RAM file, the profile, the guest directory),
//! binds `admin.sock`, and starts the **worker**: the same binary, with those
//! descriptors, in fresh network, IPC and UTS namespaces, as an unprivileged
//! uid with no capabilities and `no_new_privs` ([`confine`]). The worker
//! confines itself further (Landlock, seccomp) before it reads a byte of
//! guest memory, and then does everything that parses it: locating the
//! kernel, walking its lists, decoding events, serving the apps.
//!
//! The supervisor stays as the **helper** ([`helper`]): it holds QEMU's QMP
//! and gdbstub sockets and the socket directory, and serves the worker a
//! fixed, typed set of requests ([`wire::Request`]) over a socketpair.

pub mod check;
pub mod client;
pub mod confine;
pub mod gdb_filter;
pub mod helper;
pub mod supervisor;
pub mod wire;
pub mod worker;

/// What the sidecar serves, and how: the supervisor's arguments, which it
/// passes on to the worker.
pub struct Plan {
    pub guest: String,
    pub guest_dir: std::path::PathBuf,
    pub profile: std::path::PathBuf,
    /// `<socket_root>/guests/<guest>`: `admin.sock` and `apps/`.
    pub socket_dir: std::path::PathBuf,
    pub limits: crate::server::SidecarConfig,
    /// Run the confinement check instead of serving.
    pub confinement_check: bool,
}

/// Where the worker finds the descriptors the supervisor hands it.
pub mod fds {
    use std::os::fd::RawFd;
    pub const CHANNEL: RawFd = 3;
    pub const RAM: RawFd = 4;
    pub const ADMIN: RawFd = 5;
    pub const PROFILE: RawFd = 6;
    pub const GUEST_DIR: RawFd = 7;
    /// This binary, which the worker is exec'd from (`/proc/self/fd/8`)
    /// so that the worker's uid need not reach it by path.
    pub const EXE: RawFd = 8;
}
