//! Guest memory saved to a file: a raw physical dump (QMP `pmemsave`, address
//! 0 at offset 0) or QEMU's `dump-guest-memory` ELF core, whose `PT_LOAD`
//! headers carry each block's guest-physical address.

use super::{Driver, MappedRam, RamBacked, RamRegion};
use crate::error::{Result, VmiError};
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotFormat {
    Raw,
    Elf,
}

pub struct Snapshot {
    path: PathBuf,
    format: SnapshotFormat,
    ram: MappedRam,
}

/// How much of the file start is read to find the ELF program headers; QEMU
/// writes them right after the ELF header.
const ELF_HEADER_WINDOW: u64 = 1 << 20;

impl Snapshot {
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |reason: String| VmiError::BadSnapshot {
            path: path.to_owned(),
            reason,
        };
        let mut head = Vec::new();
        std::fs::File::open(path)
            .map_err(|e| VmiError::io(format!("opening snapshot {}", path.display()), e))?
            .take(ELF_HEADER_WINDOW)
            .read_to_end(&mut head)
            .map_err(|e| VmiError::io(format!("reading snapshot {}", path.display()), e))?;
        if head.is_empty() {
            return Err(bad("the file is empty".into()));
        }
        let (format, ram) = if head.starts_with(&elf::ELFMAG) {
            let regions = elf_regions(&head).map_err(bad)?;
            (SnapshotFormat::Elf, MappedRam::open(path, regions, false)?)
        } else {
            (SnapshotFormat::Raw, MappedRam::open_flat(path, false)?)
        };
        Ok(Snapshot {
            path: path.to_owned(),
            format,
            ram,
        })
    }

    pub fn format(&self) -> SnapshotFormat {
        self.format
    }
}

fn elf_regions(head: &[u8]) -> Result<Vec<RamRegion>, String> {
    let header = elf::FileHeader64::<object::Endianness>::parse(head)
        .map_err(|e| format!("not a 64-bit ELF core: {e}"))?;
    let endian = header
        .endian()
        .map_err(|e| format!("unreadable ELF header: {e}"))?;
    if header.e_type(endian) != elf::ET_CORE {
        return Err("ELF file is not a core dump (e_type != ET_CORE)".into());
    }
    let headers = header.program_headers(endian, head).map_err(|e| {
        format!("ELF program headers unreadable (truncated file or more than the first {ELF_HEADER_WINDOW} bytes): {e}")
    })?;
    let regions: Vec<RamRegion> = headers
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD && ph.p_filesz(endian) > 0)
        .map(|ph| RamRegion {
            guest_address: ph.p_paddr(endian),
            len: ph.p_filesz(endian),
            file_offset: ph.p_offset(endian),
        })
        .collect();
    if regions.is_empty() {
        return Err("ELF core has no PT_LOAD segment with memory".into());
    }
    Ok(regions)
}

impl RamBacked for Snapshot {
    fn ram(&self) -> &MappedRam {
        &self.ram
    }
}

impl Driver for Snapshot {
    fn describe(&self) -> String {
        format!("snapshot {} ({:?})", self.path.display(), self.format)
    }
}
