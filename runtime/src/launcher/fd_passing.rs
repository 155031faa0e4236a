//! Descriptors over a unix stream (SCM_RIGHTS), as the OCI seccomp-agent
//! protocol passes a filter's notify fd: the launch helper sends, the
//! shim's agent receives.

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Sends `bytes` with `fds` (none when empty) in one message.
pub fn send(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(drop)
}

/// What one message brought.
pub struct Received {
    pub bytes: usize,
    /// Close-on-exec, ours to close.
    pub fds: Vec<OwnedFd>,
    /// The sender passed more descriptors than there was room for (up to
    /// four fit); those were closed by the kernel.
    pub truncated: bool,
}

/// One message into `buf`, with the descriptors it carried.
pub fn receive(stream: &UnixStream, buf: &mut [u8]) -> nix::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel just installed each of them here.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok(Received {
        bytes: msg.bytes,
        fds,
        truncated: msg.flags.contains(MsgFlags::MSG_CTRUNC),
    })
}
