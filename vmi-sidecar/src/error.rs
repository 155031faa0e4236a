//! The one error type of the VMI library. Every variant maps onto an
//! [`furnace_api::ErrorCode`], so a failure keeps its kind across the wire.

use furnace_api::ErrorCode;
use std::path::PathBuf;

pub type Result<T, E = VmiError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum VmiError {
    #[error("guest-physical address {address:#x} (+{len} bytes) is outside guest memory")]
    BadPhysicalAddress { address: u64, len: usize },

    #[error("bad guest address {address:#x}: {why}")]
    BadVirtualAddress { address: u64, why: &'static str },

    #[error("virtual address {address:#x} is not mapped (page-table entry at level {level} not present, dtb {dtb:#x})")]
    NotMapped { address: u64, dtb: u64, level: u8 },

    #[error("{what} not found: {name}")]
    NotFound { what: &'static str, name: String },

    #[error("limit exceeded: {0}")]
    LimitExceeded(String),

    #[error("guest is gone: {0}")]
    GuestGone(String),

    #[error("profile does not match the guest kernel: profile is for {expected:?}, guest runs {found:?}; build a profile from this guest's vmlinux with `furnace profile build`")]
    ProfileMismatch { expected: String, found: String },

    #[error("profile {path}: {reason}")]
    BadProfile { path: PathBuf, reason: String },

    #[error("snapshot {path}: {reason}")]
    BadSnapshot { path: PathBuf, reason: String },

    #[error("guest directory {path}: {reason}")]
    BadGuestDir { path: PathBuf, reason: String },

    #[error("the running kernel could not be located in guest memory: {0}")]
    KernelNotFound(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("not supported by this driver: {0}")]
    Unsupported(&'static str),

    #[error("QMP: {0}")]
    Qmp(String),

    #[error("gdbstub: {0}")]
    Gdb(String),

    /// The sidecar's privileged helper does not do this (`crate::privsep`).
    #[error("refused by the sidecar's helper: {0}")]
    Refused(String),

    // The cause is part of the message rather than a `#[source]`, so callers
    // that print the whole chain do not repeat it.
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
}

impl VmiError {
    pub fn io(context: impl Into<String>, cause: std::io::Error) -> Self {
        VmiError::Io {
            context: context.into(),
            cause,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            VmiError::BadPhysicalAddress { .. }
            | VmiError::BadVirtualAddress { .. }
            | VmiError::NotMapped { .. } => ErrorCode::BadAddress,
            VmiError::NotFound { .. } | VmiError::KernelNotFound(_) => ErrorCode::NotFound,
            VmiError::LimitExceeded(_) => ErrorCode::LimitExceeded,
            VmiError::GuestGone(_) => ErrorCode::GuestGone,
            VmiError::ProfileMismatch { .. } => ErrorCode::ProfileMismatch,
            VmiError::InvalidArgument(_)
            | VmiError::BadProfile { .. }
            | VmiError::BadSnapshot { .. }
            | VmiError::BadGuestDir { .. } => ErrorCode::InvalidArgument,
            VmiError::Unsupported(_) => ErrorCode::Unsupported,
            VmiError::Refused(_) => ErrorCode::NotPermitted,
            VmiError::Io { cause, .. } if cause.kind() == std::io::ErrorKind::NotFound => {
                ErrorCode::NotFound
            }
            VmiError::Io { cause, .. } if cause.kind() == std::io::ErrorKind::PermissionDenied => {
                ErrorCode::NotPermitted
            }
            VmiError::Qmp(_) | VmiError::Gdb(_) | VmiError::Io { .. } => ErrorCode::Internal,
        }
    }
}
