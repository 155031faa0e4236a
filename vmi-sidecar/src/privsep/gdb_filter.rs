//! The helper's filter between the worker and QEMU's gdbstub.
//!
//! The gdb protocol reaches further than breakpoints: `qRcmd` runs monitor
//! commands, `k` kills QEMU, `M`/`X` write memory behind the RAM file's
//! back, `vFile` opens host files in some stubs. The worker may send exactly
//! the packets `GdbClient` sends ([`allowed`]); the first other packet is
//! logged and ends the session. Packets are decoded and sent on re-encoded,
//! so what QEMU parses is what was checked. Replies pass unchanged: they
//! come from QEMU, and the worker parses them.

use crate::driver::gdb::packet::{self, Decoder, Frame};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

/// Whether the worker may send `payload` to the stub.
pub fn allowed(payload: &[u8]) -> bool {
    let starts = |prefix: &[u8]| payload.starts_with(prefix);
    matches!(payload, b"?" | b"g" | b"c" | b"QStartNoAckMode")
        || starts(b"qSupported")
        || starts(b"qXfer:features:read:target.xml:")
        || starts(b"vCont;s:")
        || starts(b"Hg")
        || starts(b"P")
        || [b"Z0,", b"z0,", b"Z1,", b"z1,"].iter().any(|p| starts(*p))
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The worker closed its end.
    WorkerClosed,
    /// QEMU closed the stub's connection.
    StubClosed,
    /// The worker sent a packet outside [`allowed`], or undecodable bytes.
    Refused(String),
    Io(String),
}

/// Forwards between `worker` and `stub` until either side closes or the
/// worker sends something refused; returns why it stopped. Both
/// connections are shut down when it returns.
pub fn run(worker: UnixStream, stub: UnixStream) -> SessionEnd {
    let (Ok(worker_out), Ok(stub_in)) = (worker.try_clone(), stub.try_clone()) else {
        return SessionEnd::Io("cloning the debugger sockets".into());
    };
    let replies = std::thread::Builder::new()
        .name("gdb-replies".into())
        .spawn(move || copy_replies(stub_in, worker_out));
    let end = filter_requests(&worker, &stub);
    let _ = worker.shutdown(Shutdown::Both);
    let _ = stub.shutdown(Shutdown::Both);
    match replies {
        Ok(thread) => {
            let stub_closed = thread.join().unwrap_or(false);
            if stub_closed && end == SessionEnd::WorkerClosed {
                return SessionEnd::StubClosed;
            }
            end
        }
        Err(e) => SessionEnd::Io(format!("starting the reply thread: {e}")),
    }
}

/// QEMU → worker, unchanged; true if QEMU closed first.
fn copy_replies(mut stub: UnixStream, mut worker: UnixStream) -> bool {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stub.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = worker.shutdown(Shutdown::Both);
                return true;
            }
            Ok(n) => {
                if worker.write_all(&buf[..n]).is_err() {
                    return false;
                }
            }
        }
    }
}

fn filter_requests(mut worker: &UnixStream, mut stub: &UnixStream) -> SessionEnd {
    let mut decoder = Decoder::default();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match worker.read(&mut buf) {
            Ok(0) => return SessionEnd::WorkerClosed,
            Ok(n) => n,
            Err(e) => return SessionEnd::Io(e.to_string()),
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            let (frame, used) = match decoder.feed(data) {
                Ok(step) => step,
                Err(e) => return SessionEnd::Refused(format!("an undecodable packet ({e:?})")),
            };
            data = &data[used..];
            let out = match frame {
                None => continue,
                Some(Frame::Packet(payload)) if allowed(&payload) => packet::encode(&payload),
                Some(Frame::Packet(payload)) => {
                    let shown: String =
                        String::from_utf8_lossy(&payload).chars().take(64).collect();
                    return SessionEnd::Refused(format!("the gdb packet {shown:?}"));
                }
                Some(Frame::Ack(true)) => b"+".to_vec(),
                Some(Frame::Ack(false)) => b"-".to_vec(),
                Some(Frame::Interrupt) => vec![0x03],
                Some(Frame::Corrupt) => b"-".to_vec(),
            };
            if let Err(e) = stub.write_all(&out) {
                return SessionEnd::Io(e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_gdb_client_sends_is_allowed() {
        for p in [
            &b"qSupported:swbreak+;hwbreak+"[..],
            b"qXfer:features:read:target.xml:0,1000",
            b"QStartNoAckMode",
            b"?",
            b"g",
            b"c",
            b"vCont;s:p1.2",
            b"Hgp1.1",
            b"P10=00d0ffffffffffff",
            b"Z0,ffffffff81000000,1",
            b"z1,ffffffff81000000,1",
        ] {
            assert!(allowed(p), "{}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn monitor_kill_memory_and_file_packets_are_not() {
        for p in [
            &b"qRcmd,7175697"[..],
            b"k",
            b"vKill;1",
            b"D",
            b"M1000,4:deadbeef",
            b"X1000,4:abcd",
            b"vFile:open:2f6574632f736861646f77,0,0",
            b"qXfer:exec-file:read::0,1000",
            b"Z2,1000,4",
            b"G00",
            b"vRun;",
            b"",
        ] {
            assert!(!allowed(p), "{}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn a_refused_packet_ends_the_session_and_reaches_nobody() {
        let (worker, worker_peer) = UnixStream::pair().unwrap();
        let (stub_peer, stub) = UnixStream::pair().unwrap();
        let session = std::thread::spawn(move || run(worker_peer, stub_peer));
        let mut w = &worker;
        w.write_all(&packet::encode(b"?")).unwrap();
        w.write_all(&[0x03]).unwrap();
        w.write_all(&packet::encode(b"qRcmd,71756974")).unwrap();
        let end = session.join().unwrap();
        assert!(
            matches!(end, SessionEnd::Refused(ref m) if m.contains("qRcmd")),
            "{end:?}"
        );
        let mut seen = Vec::new();
        (&stub).read_to_end(&mut seen).unwrap();
        let mut expected = packet::encode(b"?");
        expected.push(0x03);
        assert_eq!(seen, expected, "the stub saw the allowed packets only");
    }
}
