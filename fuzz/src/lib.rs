//! What the fuzz targets share: guest memory made of the fuzzer's bytes,
//! and a Linux kernel over it described by a real (trimmed) profile.

pub use furnace_vmi::linux::test_image::profile;

use furnace_vmi::arch::amd64::PagingMode;
use furnace_vmi::driver::Registers;
use furnace_vmi::linux::test_image::{kernel_over, ImageMemory};
use furnace_vmi::linux::LinuxKernel;

/// The kernel over 64 GiB of guest-physical memory whose every byte is one
/// of the fuzzer's, repeating (`None` for no bytes): any page-table entry
/// points somewhere readable, so the fuzzer reaches the walkers behind the
/// page tables. Unrelocated, its page tables at physical 0.
pub fn kernel(memory: &[u8], five_level: bool) -> Option<LinuxKernel> {
    let memory = ImageMemory::new(memory.to_vec())?;
    let mode = if five_level {
        PagingMode::FiveLevel
    } else {
        PagingMode::FourLevel
    };
    Some(kernel_over(Box::new(memory), mode))
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
