//! What the fuzz targets share: guest memory made of the fuzzer's bytes,
//! and a Linux kernel over it described by a real (trimmed) profile.

use furnace_vmi::arch::amd64::PagingMode;
use furnace_vmi::driver::{Driver, PhysicalMemory, Registers};
use furnace_vmi::linux::{KernelLocation, LinuxKernel};
use furnace_vmi::profile::Profile;
use furnace_vmi::{Result, VmiError};
use std::path::Path;

/// The struct offsets and symbols of Debian's 6.1 cloud kernel, trimmed
/// to what the walkers use (`fixtures/profile.json`).
pub const PROFILE: &[u8] = include_bytes!("../fixtures/profile.json");

pub fn profile() -> Profile {
    Profile::from_json(Path::new("fixtures/profile.json"), PROFILE).expect("the fixture loads")
}

/// 64 GiB of guest-physical memory whose every byte is one of the fuzzer's,
/// repeating: any page-table entry points somewhere readable, so the fuzzer
/// reaches the walkers behind the page tables, and lists that wrap around
/// the repetition become the cycles a hostile guest would build.
pub struct RepeatingMemory {
    bytes: Vec<u8>,
}

const PHYSICAL_SIZE: u64 = 64 << 30;

impl RepeatingMemory {
    /// `None` for an empty input, which has no bytes to repeat.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        (!bytes.is_empty()).then(|| RepeatingMemory {
            bytes: bytes.to_vec(),
        })
    }
}

impl PhysicalMemory for RepeatingMemory {
    fn physical_size(&self) -> u64 {
        PHYSICAL_SIZE
    }

    fn read_physical(&self, address: u64, buf: &mut [u8]) -> Result<()> {
        let end = address.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > PHYSICAL_SIZE) {
            return Err(VmiError::BadPhysicalAddress {
                address,
                len: buf.len(),
            });
        }
        let n = self.bytes.len() as u64;
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = self.bytes[((address + i as u64) % n) as usize];
        }
        Ok(())
    }
}

impl Driver for RepeatingMemory {
    fn describe(&self) -> String {
        format!("{} fuzzed bytes, repeating", self.bytes.len())
    }
}

/// The kernel over `memory`, unrelocated, its page tables at physical 0.
pub fn kernel(memory: RepeatingMemory, five_level: bool) -> LinuxKernel {
    let location = KernelLocation {
        virtual_shift: 0,
        physical_shift: 0,
        dtb: 0,
        paging_mode: if five_level {
            PagingMode::FiveLevel
        } else {
            PagingMode::FourLevel
        },
    };
    LinuxKernel::at_location(Box::new(memory), profile(), location).expect("the fixture's layout")
}

/// Splits `n` little-endian u64s off the front of `data`.
pub fn take_words<const N: usize>(data: &[u8]) -> Option<([u64; N], &[u8])> {
    if data.len() < N * 8 {
        return None;
    }
    let (head, rest) = data.split_at(N * 8);
    let mut words = [0u64; N];
    for (word, chunk) in words.iter_mut().zip(head.chunks_exact(8)) {
        *word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    }
    Some((words, rest))
}

/// Registers of a vCPU stopped somewhere, from fuzzed words.
pub fn registers(words: &[u64; 8], rip: u64) -> Registers {
    let mut gpr = [0u64; 16];
    gpr[..4].copy_from_slice(&words[4..8]);
    gpr[5] = words[0];
    Registers {
        rip,
        gs_base: words[1],
        cr3: words[2],
        fs_base: words[3],
        gpr,
        ..Registers::default()
    }
}
