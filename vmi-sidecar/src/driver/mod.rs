//! Guest drivers, described by small capability traits in the manner of
//! vmi-rs: a consumer asks only for what it needs. The Linux layer needs
//! [`PhysicalMemory`] alone; pausing needs [`VmControl`]; CR3/CR4 need
//! [`VcpuRegisters`]. A snapshot has memory and nothing else.

pub mod gdb;
pub mod monitor;
pub mod qemu;
pub mod qmp;
mod ram;
mod shrink_guard;
pub mod snapshot;

pub use ram::{MappedRam, RamRegion};

use crate::error::{Result, VmiError};

/// Connects to one of QEMU's sockets in the guest directory (`name` for
/// messages: "QMP", "gdb"). Nothing listening means QEMU is gone:
/// [`VmiError::GuestGone`].
pub(crate) fn connect_qemu_socket(
    path: &std::path::Path,
    name: &str,
) -> Result<std::os::unix::net::UnixStream> {
    std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
            VmiError::GuestGone(format!(
                "nothing answers on the {name} socket {} ({e}); is QEMU still running?",
                path.display()
            ))
        }
        _ => VmiError::io(format!("connecting to {name} at {}", path.display()), e),
    })
}

/// Guest-physical memory.
pub trait PhysicalMemory: Send + Sync {
    /// One past the highest guest-physical address backed by memory.
    fn physical_size(&self) -> u64;

    /// Fills `buf` from guest-physical `address`. Fails, never zero-fills, when
    /// any byte of the range is not backed by guest memory.
    fn read_physical(&self, address: u64, buf: &mut [u8]) -> Result<()>;

    /// The `(start, len)` ranges of guest-physical memory that are backed,
    /// ascending. Scans walk these and skip the holes.
    fn physical_ranges(&self) -> Vec<(u64, u64)> {
        vec![(0, self.physical_size())]
    }

    fn write_physical(&self, _address: u64, _data: &[u8]) -> Result<()> {
        Err(VmiError::Unsupported("writing guest memory"))
    }
}

/// A driver whose memory is one [`MappedRam`]; its [`PhysicalMemory`] is the mapping's.
pub trait RamBacked: Send + Sync {
    fn ram(&self) -> &MappedRam;
}

impl<T: RamBacked> PhysicalMemory for T {
    fn physical_size(&self) -> u64 {
        self.ram().physical_size()
    }

    fn read_physical(&self, address: u64, buf: &mut [u8]) -> Result<()> {
        self.ram().read_physical(address, buf)
    }

    fn physical_ranges(&self) -> Vec<(u64, u64)> {
        self.ram().physical_ranges()
    }

    fn write_physical(&self, address: u64, data: &[u8]) -> Result<()> {
        self.ram().write_physical(address, data)
    }
}

/// Whether the guest's vCPUs execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    /// Any other state QEMU reports (e.g. `shutdown`, `internal-error`).
    Other(String),
}

pub trait VmControl: Send + Sync {
    fn pause(&self) -> Result<()>;
    fn resume(&self) -> Result<()>;
    fn run_state(&self) -> Result<RunState>;
}

/// The amd64 registers VMI needs, for one vCPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Registers {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8 … r15, in that order.
    pub gpr: [u64; 16],
}

pub trait VcpuRegisters: Send + Sync {
    fn vcpu_count(&self) -> Result<u32>;
    fn registers(&self, vcpu: u32) -> Result<Registers>;
}

/// A driver is guest memory plus whichever optional capabilities it has.
pub trait Driver: PhysicalMemory {
    /// A short description for logs and `furnace vmi info`.
    fn describe(&self) -> String;

    fn control(&self) -> Option<&dyn VmControl> {
        None
    }

    fn vcpu_registers(&self) -> Option<&dyn VcpuRegisters> {
        None
    }

    /// The guest's gdbstub, which breakpoint events need.
    fn debugger(&self) -> Option<&dyn gdb::DebuggerLink> {
        None
    }
}
