//! A synchronous client of QEMU's gdbstub (the GDB Remote Serial Protocol
//! over the guest's `gdb.sock`): breakpoints, continue, interrupt, single
//! step and registers. This is the event path: under TCG the stub's
//! breakpoints live in the translator, so there are as many as wanted and the
//! guest cannot see them; under KVM they are `int3` bytes in guest memory
//! (software) or the 4 debug registers (hardware).
//!
//! The stub runs all-stop: when one vCPU stops, all do, and `c` resumes all.
//! One client owns the connection (QEMU accepts one), so the sidecar's event
//! loop holds it.

mod packet;
mod stop;

pub use stop::{StopReason, StopReply};

use crate::error::{Result, VmiError};
use packet::{Decoder, Frame};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest any request waits for its reply; a stop after `c` has no bound
/// but the caller's.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Resends of a packet the stub reported corrupt, before giving up.
const MAX_RESENDS: u32 = 3;
/// x86 breakpoint "kind": the length of `int3`.
const X86_BREAKPOINT_KIND: u8 = 1;

/// Which breakpoint mechanism to use (`Z0` or `Z1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakpointKind {
    Software,
    Hardware,
}

impl BreakpointKind {
    fn z_type(self) -> u8 {
        match self {
            BreakpointKind::Software => 0,
            BreakpointKind::Hardware => 1,
        }
    }
}

pub struct GdbClient {
    stream: UnixStream,
    decoder: Decoder,
    /// Bytes read past the end of the last frame.
    unread: Vec<u8>,
    acks: bool,
}

impl GdbClient {
    /// Connects to the stub at `path` and turns acknowledgements off where
    /// the stub allows it. Nothing listening is [`VmiError::GuestGone`].
    pub fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                VmiError::GuestGone(format!(
                    "nothing answers on the gdb socket {} ({e}); is QEMU still running?",
                    path.display()
                ))
            }
            _ => VmiError::io(
                format!("connecting to the gdbstub at {}", path.display()),
                e,
            ),
        })?;
        stream
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| VmiError::io("setting gdb socket timeouts", e))?;
        let mut client = GdbClient {
            stream,
            decoder: Decoder::default(),
            unread: Vec::new(),
            acks: true,
        };
        let features = client.request(b"qSupported:swbreak+;hwbreak+")?;
        if features
            .split(|&b| b == b';')
            .any(|f| f == b"QStartNoAckMode+")
            && client.request(b"QStartNoAckMode")? == b"OK"
        {
            client.acks = false;
        }
        Ok(client)
    }

    /// Sends `payload` and returns the stub's reply, skipping console output
    /// (`O…`) packets.
    pub fn request(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        self.send(payload)?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let reply = self.receive_until(deadline)?.ok_or_else(|| {
                VmiError::Gdb(format!(
                    "no reply to {:?} within {REPLY_TIMEOUT:?}",
                    String::from_utf8_lossy(payload)
                ))
            })?;
            if !is_console_output(&reply) {
                return Ok(reply);
            }
        }
    }

    fn send(&mut self, payload: &[u8]) -> Result<()> {
        let framed = packet::encode(payload);
        for _ in 0..=MAX_RESENDS {
            self.write_all(&framed)?;
            if !self.acks || self.read_ack()? {
                return Ok(());
            }
        }
        Err(VmiError::Gdb(format!(
            "the stub refused {:?} {MAX_RESENDS} times",
            String::from_utf8_lossy(payload)
        )))
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).map_err(gone)
    }

    /// `+` (true) or `-` (false), in ack mode.
    fn read_ack(&mut self) -> Result<bool> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Some(pos) = self.unread.iter().position(|&b| b == b'+' || b == b'-') {
                let ack = self.unread[pos] == b'+';
                self.unread.drain(..=pos);
                return Ok(ack);
            }
            if !self.fill(deadline)? {
                return Err(VmiError::Gdb("no acknowledgement from the stub".into()));
            }
        }
    }

    /// The next packet, or `None` when `deadline` passes first.
    fn receive_until(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>> {
        loop {
            while !self.unread.is_empty() {
                let (frame, used) = self
                    .decoder
                    .feed(&self.unread)
                    .map_err(|e| VmiError::Gdb(format!("malformed packet from the stub: {e:?}")))?;
                self.unread.drain(..used);
                match frame {
                    Some(Frame::Packet(payload)) => {
                        if self.acks {
                            self.write_all(b"+")?;
                        }
                        return Ok(Some(payload));
                    }
                    Some(Frame::Corrupt) => {
                        if self.acks {
                            self.write_all(b"-")?;
                        } else {
                            return Err(VmiError::Gdb("a packet with a bad checksum".into()));
                        }
                    }
                    None => {}
                }
            }
            if !self.fill(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Reads what is available before `deadline`; false on timeout.
    fn fill(&mut self, deadline: Instant) -> Result<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        self.stream
            .set_read_timeout(Some(left))
            .map_err(|e| VmiError::io("setting the gdb read timeout", e))?;
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => Err(VmiError::GuestGone("the gdbstub closed its socket".into())),
            Ok(n) => {
                self.unread.extend_from_slice(&buf[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(gone(e)),
        }
    }

    /// Why the guest is stopped (`?`).
    pub fn stop_reason(&mut self) -> Result<StopReply> {
        let reply = self.request(b"?")?;
        StopReply::parse(&reply)
    }

    /// Inserts a breakpoint at guest-virtual `address`. A stub that lacks
    /// the kind answers empty: [`VmiError::Unsupported`].
    pub fn insert_breakpoint(&mut self, kind: BreakpointKind, address: u64) -> Result<()> {
        self.breakpoint(b'Z', kind, address)
    }

    pub fn remove_breakpoint(&mut self, kind: BreakpointKind, address: u64) -> Result<()> {
        self.breakpoint(b'z', kind, address)
    }

    fn breakpoint(&mut self, verb: u8, kind: BreakpointKind, address: u64) -> Result<()> {
        let command = format!(
            "{}{},{address:x},{X86_BREAKPOINT_KIND}",
            verb as char,
            kind.z_type()
        );
        match self.request(command.as_bytes())?.as_slice() {
            b"OK" => Ok(()),
            b"" => Err(VmiError::Unsupported(match kind {
                BreakpointKind::Software => "software breakpoints (the gdbstub has no Z0)",
                BreakpointKind::Hardware => "hardware breakpoints (the gdbstub has no Z1)",
            })),
            other => Err(VmiError::Gdb(format!(
                "{command} at {address:#x}: {}",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    /// Resumes every vCPU (`c`); the next stop arrives through [`GdbClient::wait_stop`].
    pub fn resume(&mut self) -> Result<()> {
        self.send(b"c")
    }

    /// The stop reply that follows a resume, or `None` if `timeout` passes first.
    pub fn wait_stop(&mut self, timeout: Duration) -> Result<Option<StopReply>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.receive_until(deadline)? {
                None => return Ok(None),
                Some(reply) if is_console_output(&reply) => continue,
                Some(reply) => return StopReply::parse(&reply).map(Some),
            }
        }
    }

    /// Stops a running guest (the protocol's out-of-band `^C`) and returns its stop reply.
    pub fn interrupt(&mut self) -> Result<StopReply> {
        self.write_all(&[0x03])?;
        self.wait_stop(REPLY_TIMEOUT)?
            .ok_or_else(|| VmiError::Gdb("the guest did not stop on interrupt".into()))
    }

    /// Executes one instruction on vCPU `thread` (as the stop reply named it)
    /// with the others held, and returns the stop that follows.
    pub fn step(&mut self, thread: &str) -> Result<StopReply> {
        self.send(format!("vCont;s:{thread}").as_bytes())?;
        self.wait_stop(REPLY_TIMEOUT)?
            .ok_or_else(|| VmiError::Gdb(format!("thread {thread} did not stop after one step")))
    }

    /// The raw `g` register block of vCPU `thread`.
    pub fn register_block(&mut self, thread: &str) -> Result<Vec<u8>> {
        let selected = self.request(format!("Hg{thread}").as_bytes())?;
        if selected != b"OK" {
            return Err(VmiError::Gdb(format!(
                "selecting thread {thread}: {}",
                String::from_utf8_lossy(&selected)
            )));
        }
        let block = self.request(b"g")?;
        packet::unhex(&block).ok_or_else(|| {
            VmiError::Gdb(format!(
                "the register block is not hex: {}",
                String::from_utf8_lossy(&block[..block.len().min(64)])
            ))
        })
    }
}

fn is_console_output(reply: &[u8]) -> bool {
    reply.first() == Some(&b'O') && reply != b"OK"
}

fn gone(e: std::io::Error) -> VmiError {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            VmiError::GuestGone(format!("the gdbstub connection broke ({e})"))
        }
        _ => VmiError::io("talking to the gdbstub", e),
    }
}
