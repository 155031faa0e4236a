//! The worker ↔ helper protocol: one JSON message per `SOCK_SEQPACKET`
//! datagram, with at most one descriptor attached (`SCM_RIGHTS`).
//!
//! The helper decodes what the worker sends as hostile input: a datagram
//! over [`MAX_REQUEST`], or one that is not exactly one [`Request`], is
//! refused and logged, and the helper goes on serving.

use crate::driver::monitor::MonitorCommand;
use crate::error::VmiError;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The largest request the helper reads. Requests are a few dozen bytes.
pub const MAX_REQUEST: usize = 4096;
/// The largest reply: `info mtree -f` of a big guest is tens of KiB.
pub const MAX_REPLY: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// One of the driver's monitor commands; no other QMP reaches QEMU.
    Monitor {
        command: MonitorCommand,
    },
    /// A connection to the gdbstub, through the helper's packet filter.
    OpenDebugger,
    /// The debugger connection is about to close cleanly.
    ReleaseDebugger,
    /// Bind `apps/<id>.sock` for `uid:gid`; the reply carries the listener.
    BindApp {
        id: String,
        uid: u32,
        gid: u32,
    },
    RemoveApp {
        id: String,
    },
}

impl Request {
    /// Decodes exactly one request: the bytes must be what encoding the
    /// decoded request gives back, field for field. (serde's
    /// `deny_unknown_fields` lets extra fields through on the unit
    /// variants of a tagged enum.)
    pub fn decode_strict(bytes: &[u8]) -> Result<Request, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let request: Request = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        if serde_json::to_value(&request).ok() != Some(value) {
            return Err("fields beyond the request's own".into());
        }
        Ok(request)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Reply {
    /// QMP's `return` value.
    Value { value: Value },
    /// Done; a descriptor is attached where the request asks for one.
    Done,
    /// The helper does not do this, ever.
    Refused { reason: String },
    /// The helper tried and failed.
    Failed { kind: FailureKind, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    GuestGone,
    Qmp,
    Gdb,
    InvalidArgument,
    Io,
}

impl Reply {
    pub fn failed(error: &VmiError) -> Reply {
        let kind = match error {
            VmiError::GuestGone(_) => FailureKind::GuestGone,
            VmiError::Qmp(_) => FailureKind::Qmp,
            VmiError::Gdb(_) => FailureKind::Gdb,
            VmiError::InvalidArgument(_) => FailureKind::InvalidArgument,
            _ => FailureKind::Io,
        };
        let message = match error {
            VmiError::GuestGone(m)
            | VmiError::Qmp(m)
            | VmiError::Gdb(m)
            | VmiError::InvalidArgument(m) => m.clone(),
            other => other.to_string(),
        };
        Reply::Failed { kind, message }
    }

    /// The error this reply stands for, if it is one.
    pub fn into_error(self) -> Option<VmiError> {
        match self {
            Reply::Value { .. } | Reply::Done => None,
            Reply::Refused { reason } => Some(VmiError::Refused(reason)),
            Reply::Failed { kind, message } => Some(match kind {
                FailureKind::GuestGone => VmiError::GuestGone(message),
                FailureKind::Qmp => VmiError::Qmp(message),
                FailureKind::Gdb => VmiError::Gdb(message),
                FailureKind::InvalidArgument => VmiError::InvalidArgument(message),
                FailureKind::Io => VmiError::io("the sidecar's helper", io::Error::other(message)),
            }),
        }
    }
}

/// One end of a `SOCK_SEQPACKET` socketpair.
pub struct Channel(OwnedFd);

impl Channel {
    /// A connected pair, both ends close-on-exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel(a), Channel(b)))
    }

    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel(fd)
    }

    pub fn into_fd(self) -> OwnedFd {
        self.0
    }

    pub fn send(&self, message: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let raw: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
        sendmsg::<()>(
            self.0.as_raw_fd(),
            &[IoSlice::new(message)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        Ok(())
    }

    /// One datagram into `buf`: its length (0 when the peer has closed) and
    /// its descriptor. A datagram longer than `buf` is an error, not a
    /// truncated message; extra descriptors are closed.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            self.0.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fd = None;
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: the kernel just installed `raw` in this process;
                    // nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    fd.get_or_insert(owned);
                }
            }
        }
        if msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a message longer than {} bytes", buf.len()),
            ));
        }
        Ok((msg.bytes, fd))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_and_strangers_do_not_decode() {
        let text = serde_json::to_string(&Request::BindApp {
            id: "a".into(),
            uid: 1,
            gid: 2,
        })
        .unwrap();
        assert_eq!(text, r#"{"op":"bind-app","id":"a","uid":1,"gid":2}"#);
        assert_eq!(
            Request::decode_strict(text.as_bytes()).unwrap(),
            Request::BindApp {
                id: "a".into(),
                uid: 1,
                gid: 2
            }
        );
        for hostile in [
            r#"{"op":"monitor","command":{"command":"human-monitor-command","command-line":"info mtree"}}"#,
            r#"{"op":"monitor","command":{"command":"registers","vcpu":1,"command-line":"quit"}}"#,
            r#"{"op":"monitor","command":{"command":"memory-map","extra":1}}"#,
            r#"{"op":"monitor","command":{"command":"stop"},"and":"quit"}"#,
            r#"{"op":"open-file","path":"/etc/shadow"}"#,
            r#"{"op":"open-debugger","then":"qRcmd"}"#,
            r#"{"op":"bind-app","id":"a","uid":1}"#,
            r#"{"op":"release-debugger"} {"op":"release-debugger"}"#,
            "not json",
        ] {
            assert!(
                Request::decode_strict(hostile.as_bytes()).is_err(),
                "{hostile}"
            );
        }
    }

    #[test]
    fn a_reply_keeps_the_kind_of_its_error() {
        let gone = Reply::failed(&VmiError::GuestGone("qemu exited".into()));
        let text = serde_json::to_vec(&gone).unwrap();
        let back: Reply = serde_json::from_slice(&text).unwrap();
        assert!(matches!(back.into_error(), Some(VmiError::GuestGone(m)) if m == "qemu exited"));
        let refused = Reply::Refused {
            reason: "no".into(),
        };
        assert_eq!(
            refused.into_error().unwrap().code(),
            furnace_api::ErrorCode::NotPermitted
        );
    }

    #[test]
    fn datagrams_carry_one_descriptor_and_oversized_ones_are_errors() {
        let (a, b) = Channel::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        a.send(b"hello", Some(file.as_fd())).unwrap();
        let mut buf = [0u8; 16];
        let (n, fd) = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert!(fd.is_some());
        a.send(&[7u8; 64], None).unwrap();
        let err = b.recv(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        drop(a);
        assert_eq!(b.recv(&mut buf).unwrap().0, 0, "the peer closed");
    }
}
