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

pub mod link;
pub(crate) mod packet;
mod stop;

pub use link::{DebuggerLink, GdbSocket};

pub use stop::{StopReason, StopReply};

use super::Registers;
use crate::error::{Result, VmiError};
use packet::{Decoder, Frame};
use std::collections::VecDeque;
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

/// How the guest's vCPUs run, which decides what a breakpoint costs and shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// QEMU's translator: breakpoints are checks in translated code.
    Tcg,
    /// Hardware virtualization: software breakpoints are `int3` bytes.
    Kvm,
}

/// What one kind of breakpoint offers on this guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakpointCapability {
    pub kind: BreakpointKind,
    /// How many may be set at once; `None` when only memory bounds it.
    pub limit: Option<u32>,
    /// Whether the guest could see it by reading its own memory.
    pub visible_to_guest: bool,
}

/// x86 has four debug-address registers (DR0-DR3).
const X86_DEBUG_REGISTERS: u32 = 4;

/// The breakpoints QEMU's gdbstub offers under `accelerator`.
pub fn breakpoint_capabilities(accelerator: Accelerator) -> [BreakpointCapability; 2] {
    let (software_visible, hardware_limit) = match accelerator {
        // Both kinds become translator breakpoints (`cpu_breakpoint_insert`).
        Accelerator::Tcg => (false, None),
        Accelerator::Kvm => (true, Some(X86_DEBUG_REGISTERS)),
    };
    [
        BreakpointCapability {
            kind: BreakpointKind::Software,
            limit: None,
            visible_to_guest: software_visible,
        },
        BreakpointCapability {
            kind: BreakpointKind::Hardware,
            limit: hardware_limit,
            visible_to_guest: false,
        },
    ]
}

pub struct GdbClient {
    stream: UnixStream,
    decoder: Decoder,
    /// Bytes read past the end of the last frame.
    unread: Vec<u8>,
    /// Packets that arrived while an ack was awaited (QEMU's attach stop
    /// comes ahead of the ack of the first request).
    queued: VecDeque<Vec<u8>>,
    acks: bool,
    attach_stop: Option<StopReply>,
    /// Stop replies that arrived while a reply to something else was awaited
    /// (a QMP `stop` reaches the debugger as `T02` whenever it happens).
    stops: VecDeque<StopReply>,
    /// The thread `Hg` last selected, so registers of the same vCPU skip it.
    selected_thread: Option<String>,
}

impl GdbClient {
    /// Connects to the stub at `path` and turns acknowledgements off where
    /// the stub allows it. Nothing listening is [`VmiError::GuestGone`].
    ///
    /// QEMU stops the guest when a debugger attaches and reports that stop
    /// unasked, ahead of any reply ([`GdbClient::attach_stop`]); the guest
    /// stays stopped until [`GdbClient::resume`].
    pub fn connect(path: &Path) -> Result<Self> {
        Self::over(super::connect_qemu_socket(path, "gdb")?)
    }

    /// The same, over a connection made elsewhere ([`DebuggerLink::open`]).
    pub fn over(stream: UnixStream) -> Result<Self> {
        stream
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| VmiError::io("setting gdb socket timeouts", e))?;
        let mut client = GdbClient {
            stream,
            decoder: Decoder::default(),
            unread: Vec::new(),
            queued: VecDeque::new(),
            acks: true,
            attach_stop: None,
            stops: VecDeque::new(),
            selected_thread: None,
        };
        client.send(b"qSupported:swbreak+;hwbreak+")?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let features = loop {
            let reply = client
                .receive_until(deadline)?
                .ok_or_else(|| VmiError::Gdb("no reply to qSupported".into()))?;
            match StopReply::parse(&reply) {
                Ok(stop) if client.attach_stop.is_none() => client.attach_stop = Some(stop),
                _ => break reply,
            }
        };
        let offers = |feature: &[u8]| features.split(|&b| b == b';').any(|f| f == feature);
        // QEMU answers `P` (write one register) only to a client that has
        // read the target description, as gdb does on attach.
        if offers(b"qXfer:features:read+") {
            client.request(b"qXfer:features:read:target.xml:0,1000")?;
        }
        if offers(b"QStartNoAckMode+") && client.request(b"QStartNoAckMode")? == b"OK" {
            client.acks = false;
        }
        Ok(client)
    }

    /// The stop the stub reported on attach, if it reported one.
    pub fn attach_stop(&self) -> Option<&StopReply> {
        self.attach_stop.as_ref()
    }

    /// Sends `payload` and returns the stub's reply, skipping console output
    /// (`O…`) packets. Stop replies that arrive meanwhile are kept for
    /// [`GdbClient::wait_stop`]: no request but `?` is answered with one.
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
            if is_console_output(&reply) {
                continue;
            }
            if is_stop_reply(&reply) {
                self.stops.push_back(StopReply::parse(&reply)?);
                continue;
            }
            return Ok(reply);
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

    /// `+` (true) or `-` (false), in ack mode; packets before it are queued.
    fn read_ack(&mut self) -> Result<bool> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            match self.next_frame(deadline)? {
                Some(Frame::Ack(ack)) => return Ok(ack),
                Some(Frame::Packet(payload)) => self.queued.push_back(payload),
                Some(Frame::Corrupt) => self.write_all(b"-")?,
                Some(Frame::Interrupt) => {} // a stub never sends one
                None => return Err(VmiError::Gdb("no acknowledgement from the stub".into())),
            }
        }
    }

    /// The next packet, or `None` when `deadline` passes first.
    fn receive_until(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>> {
        if let Some(payload) = self.queued.pop_front() {
            return Ok(Some(payload));
        }
        loop {
            match self.next_frame(deadline)? {
                Some(Frame::Packet(payload)) => return Ok(Some(payload)),
                Some(Frame::Corrupt) if self.acks => self.write_all(b"-")?,
                Some(Frame::Corrupt) => {
                    return Err(VmiError::Gdb("a packet with a bad checksum".into()))
                }
                Some(Frame::Ack(_)) => {} // a late ack of something already settled
                Some(Frame::Interrupt) => {}
                None => return Ok(None),
            }
        }
    }

    /// The next frame off the stream, acknowledging packets in ack mode.
    fn next_frame(&mut self, deadline: Instant) -> Result<Option<Frame>> {
        loop {
            if !self.unread.is_empty() {
                let (frame, used) = self
                    .decoder
                    .feed(&self.unread)
                    .map_err(|e| VmiError::Gdb(format!("malformed packet from the stub: {e:?}")))?;
                self.unread.drain(..used);
                if let Some(frame) = frame {
                    if self.acks && matches!(frame, Frame::Packet(_)) {
                        self.write_all(b"+")?;
                    }
                    return Ok(Some(frame));
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
            // A signal (a tracer attaching, say): read again until the deadline.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(gone(e)),
        }
    }

    /// Why the guest is stopped (`?`).
    pub fn stop_reason(&mut self) -> Result<StopReply> {
        self.send(b"?")?;
        self.wait_stop(REPLY_TIMEOUT)?
            .ok_or_else(|| VmiError::Gdb("no reply to `?`".into()))
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
        if let Some(stop) = self.stops.pop_front() {
            return Ok(Some(stop));
        }
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

    /// Sets register `number` (gdb's x86-64 numbering: 0-15 the general
    /// registers, 16 rip) of vCPU `thread` with `P`.
    pub fn write_register(&mut self, thread: &str, number: u8, value: u64) -> Result<()> {
        self.select_thread(thread)?;
        let command = format!("P{number:x}={}", packet::hex(&value.to_le_bytes()));
        match self.request(command.as_bytes())?.as_slice() {
            b"OK" => Ok(()),
            other => Err(VmiError::Gdb(format!(
                "{command} on thread {thread}: {}",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    /// vCPU `thread`'s registers.
    pub fn registers(&mut self, thread: &str) -> Result<Registers> {
        parse_register_block(&self.register_block(thread)?)
    }

    /// Makes `thread` the one `g` and `P` act on (`Hg`), unless it already is.
    fn select_thread(&mut self, thread: &str) -> Result<()> {
        if self.selected_thread.as_deref() == Some(thread) {
            return Ok(());
        }
        let selected = self.request(format!("Hg{thread}").as_bytes())?;
        if selected != b"OK" {
            return Err(VmiError::Gdb(format!(
                "selecting thread {thread}: {}",
                String::from_utf8_lossy(&selected)
            )));
        }
        self.selected_thread = Some(thread.to_owned());
        Ok(())
    }

    /// The raw `g` register block of vCPU `thread`.
    fn register_block(&mut self, thread: &str) -> Result<Vec<u8>> {
        self.select_thread(thread)?;
        let block = self.request(b"g")?;
        packet::unhex(&block).ok_or_else(|| {
            VmiError::Gdb(format!(
                "the register block is not hex: {}",
                String::from_utf8_lossy(&block[..block.len().min(64)])
            ))
        })
    }
}

/// Decodes QEMU's x86-64 `g` block (gdb's `i386:x86-64` register order): 16
/// general registers, rip, eflags (4 bytes), six 4-byte segment selectors,
/// then fs_base, gs_base, k_gs_base, cr0, cr2, cr3, cr4, cr8 and efer.
pub fn parse_register_block(block: &[u8]) -> Result<Registers> {
    const EFER_END: usize = 236;
    if block.len() < EFER_END {
        return Err(VmiError::Gdb(format!(
            "a register block of {} bytes; x86-64 needs at least {EFER_END}",
            block.len()
        )));
    }
    let u64_at =
        |offset: usize| u64::from_le_bytes(block[offset..offset + 8].try_into().expect("8 bytes"));
    let mut gpr = [0u64; 16];
    for (i, value) in gpr.iter_mut().enumerate() {
        *value = u64_at(8 * i);
    }
    let rflags = u32::from_le_bytes(block[136..140].try_into().expect("4 bytes"));
    Ok(Registers {
        rip: u64_at(128),
        rsp: gpr[7],
        rflags: u64::from(rflags),
        fs_base: u64_at(164),
        gs_base: u64_at(172),
        cr0: u64_at(188),
        cr2: u64_at(196),
        cr3: u64_at(204),
        cr4: u64_at(212),
        efer: u64_at(228),
        gpr,
    })
}

/// `S`, `T`, `W` or `X` and a two-digit hex signal or status: replies to
/// other requests are `OK`, `E nn`, hex data or named fields.
fn is_stop_reply(reply: &[u8]) -> bool {
    matches!(reply, [b'S' | b'T' | b'W' | b'X', a, b, ..] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_breakpoints_are_unlimited_and_invisible_kvm_ones_are_not_both() {
        let tcg = breakpoint_capabilities(Accelerator::Tcg);
        assert!(tcg.iter().all(|c| c.limit.is_none() && !c.visible_to_guest));
        let [software, hardware] = breakpoint_capabilities(Accelerator::Kvm);
        assert_eq!((software.limit, software.visible_to_guest), (None, true));
        assert_eq!(
            (hardware.limit, hardware.visible_to_guest),
            (Some(4), false)
        );
    }

    #[test]
    fn stop_replies_are_told_from_other_replies() {
        for stop in [&b"T02thread:01;"[..], b"S05", b"W00", b"X09"] {
            assert!(is_stop_reply(stop), "{stop:?}");
        }
        for other in [&b"OK"[..], b"E01", b"", b"00ff12", b"PacketSize=1000", b"T"] {
            assert!(!is_stop_reply(other), "{other:?}");
        }
    }

    #[test]
    fn the_register_block_decodes_in_gdbs_x86_64_order() {
        let mut block = vec![0u8; 608];
        for i in 0..16u64 {
            block[8 * i as usize..][..8].copy_from_slice(&(0x100 + i).to_le_bytes());
        }
        block[128..136].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
        block[136..140].copy_from_slice(&0x246u32.to_le_bytes());
        for (offset, value) in [
            (172, 0xffff_8880_1f60_0000u64),
            (188, 0x8005_0033),
            (204, 0x215e000),
            (212, 0x6b0),
            (228, 0xd01),
        ] {
            block[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
        }
        let r = parse_register_block(&block).unwrap();
        assert_eq!((r.gpr[0], r.gpr[15], r.rsp), (0x100, 0x10f, 0x107));
        assert_eq!((r.rip, r.rflags), (0xffff_ffff_8100_0000, 0x246));
        assert_eq!(
            (r.gs_base, r.cr0, r.cr3, r.cr4, r.efer),
            (0xffff_8880_1f60_0000, 0x8005_0033, 0x215e000, 0x6b0, 0xd01)
        );
        assert!(parse_register_block(&block[..200]).is_err());
    }
}
