//! A file holding guest RAM (QEMU's shared `memory-backend-file`, a raw
//! `pmemsave` dump, or the body of a `dump-guest-memory` ELF), mapped once and
//! addressed through a table of guest-physical regions.
//!
//! The guest writes this memory while we read it, so no Rust reference ever
//! points into it: reads and writes copy through raw pointers, and callers
//! only see their own buffers. A file that shrinks under the mapping fails
//! calls with GUEST_GONE instead of killing the process ([`ShrinkGuard`]).

use super::shrink_guard::ShrinkGuard;
use crate::error::{Result, VmiError};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::path::Path;

/// `len` bytes of guest-physical memory from `guest_address` live at
/// `file_offset` in the mapped file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    pub guest_address: u64,
    pub len: u64,
    pub file_offset: u64,
}

impl RamRegion {
    fn end(&self) -> u64 {
        self.guest_address + self.len
    }
}

pub struct MappedRam {
    /// Declared before `map`, so it stops watching before the unmap.
    guard: ShrinkGuard,
    map: MmapRaw,
    /// Sorted by `guest_address`, non-overlapping, each inside the file.
    regions: Vec<RamRegion>,
    writable: bool,
}

impl MappedRam {
    /// Maps `path`. `regions` must lie inside the file; `writable` maps it
    /// shared and writable (live guests), otherwise read-only (snapshots).
    pub fn open(path: &Path, regions: Vec<RamRegion>, writable: bool) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| VmiError::io(format!("opening {}", path.display()), e))?;
        Self::from_file(&file, path, regions, writable)
    }

    /// Maps `file`, opened elsewhere (read-write if `writable`); `path` names
    /// it in errors.
    pub fn from_file(
        file: &File,
        path: &Path,
        mut regions: Vec<RamRegion>,
        writable: bool,
    ) -> Result<Self> {
        let file_len = file_len(file, path)?;
        if let Some(r) = regions
            .iter()
            .find(|r| r.guest_address.checked_add(r.len).is_none())
        {
            return Err(VmiError::BadSnapshot {
                path: path.to_owned(),
                reason: format!("guest memory region {r:?} runs past the end of the address space"),
            });
        }
        regions.sort_by_key(|r| r.guest_address);
        for pair in regions.windows(2) {
            if pair[0].end() > pair[1].guest_address {
                return Err(VmiError::InvalidArgument(format!(
                    "guest memory regions overlap: {:?} and {:?}",
                    pair[0], pair[1]
                )));
            }
        }
        if let Some(r) = regions.iter().find(|r| {
            r.file_offset
                .checked_add(r.len)
                .is_none_or(|end| end > file_len)
        }) {
            return Err(VmiError::BadSnapshot {
                path: path.to_owned(),
                reason: format!(
                    "truncated: guest memory at {:#x} needs file bytes {:#x}..{:#x} but the file has {:#x}",
                    r.guest_address,
                    r.file_offset,
                    r.file_offset.saturating_add(r.len),
                    file_len
                ),
            });
        }
        if file_len == 0 {
            return Err(VmiError::BadSnapshot {
                path: path.to_owned(),
                reason: "the file is empty".into(),
            });
        }
        let mut options = MmapOptions::new();
        options.len(file_len as usize);
        let map = if writable {
            options.map_raw(file)
        } else {
            options.map_raw_read_only(file)
        }
        .map_err(|e| VmiError::io(format!("mapping {}", path.display()), e))?;
        Ok(MappedRam {
            guard: ShrinkGuard::watch(map.as_ptr(), map.len())?,
            map,
            regions,
            writable,
        })
    }

    /// Maps the whole file as guest memory starting at physical address 0.
    pub fn open_flat(path: &Path, writable: bool) -> Result<Self> {
        let file =
            File::open(path).map_err(|e| VmiError::io(format!("opening {}", path.display()), e))?;
        let len = file_len(&file, path)?;
        let region = RamRegion {
            guest_address: 0,
            len,
            file_offset: 0,
        };
        Self::open(path, vec![region], writable)
    }

    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// Copies the mapped file's bytes at `offset` into `buf`, bypassing the
    /// region table: the floor `read_physical` is measured against.
    pub fn read_file(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len())
            .is_none_or(|end| end > self.map.len())
        {
            return Err(VmiError::InvalidArgument(format!(
                "file bytes {offset:#x}+{:#x} lie outside the mapping",
                buf.len()
            )));
        }
        // SAFETY: the range was checked against the mapping just above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        }
        self.guard.check()
    }

    /// Locates `[address, address+len)`, which must fit inside one region.
    fn file_range(&self, address: u64, len: usize) -> Option<usize> {
        let idx = self
            .regions
            .partition_point(|r| r.guest_address <= address)
            .checked_sub(1)?;
        let region = &self.regions[idx];
        let end = address.checked_add(len as u64)?;
        (end <= region.end())
            .then(|| (region.file_offset + (address - region.guest_address)) as usize)
    }

    /// Splits a guest range at region boundaries, calling `f(file_offset, chunk_offset, chunk_len)`.
    fn for_each_chunk(
        &self,
        address: u64,
        len: usize,
        mut f: impl FnMut(usize, usize, usize),
    ) -> Result<()> {
        if let Some(offset) = self.file_range(address, len) {
            f(offset, 0, len);
            return Ok(());
        }
        let bad = || VmiError::BadPhysicalAddress { address, len };
        let mut done = 0usize;
        while done < len {
            let cursor = address.checked_add(done as u64).ok_or_else(bad)?;
            let idx = self
                .regions
                .partition_point(|r| r.guest_address <= cursor)
                .checked_sub(1)
                .ok_or_else(bad)?;
            let region = &self.regions[idx];
            if cursor >= region.end() {
                return Err(bad());
            }
            let chunk = ((region.end() - cursor) as usize).min(len - done);
            f(
                (region.file_offset + (cursor - region.guest_address)) as usize,
                done,
                chunk,
            );
            done += chunk;
        }
        Ok(())
    }
}

impl super::PhysicalMemory for MappedRam {
    fn physical_size(&self) -> u64 {
        self.regions.last().map_or(0, RamRegion::end)
    }

    fn physical_ranges(&self) -> Vec<(u64, u64)> {
        self.regions
            .iter()
            .map(|r| (r.guest_address, r.len))
            .collect()
    }

    fn read_physical(&self, address: u64, buf: &mut [u8]) -> Result<()> {
        let base = self.map.as_ptr();
        self.for_each_chunk(address, buf.len(), |file_offset, at, len| {
            // SAFETY: `for_each_chunk` only yields ranges inside a region, and
            // `open` checked every region lies inside the mapped file.
            unsafe {
                std::ptr::copy_nonoverlapping(base.add(file_offset), buf.as_mut_ptr().add(at), len)
            }
        })?;
        self.guard.check()
    }

    fn write_physical(&self, address: u64, data: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(VmiError::Unsupported("writing a read-only snapshot"));
        }
        let base = self.map.as_mut_ptr();
        self.for_each_chunk(address, data.len(), |file_offset, at, len| {
            // SAFETY: as in `read_physical`; the mapping is shared and writable.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr().add(at), base.add(file_offset), len)
            }
        })?;
        self.guard.check()
    }
}

fn file_len(file: &File, path: &Path) -> Result<u64> {
    Ok(file
        .metadata()
        .map_err(|e| VmiError::io(format!("reading metadata of {}", path.display()), e))?
        .len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::PhysicalMemory;
    use std::io::Write;

    fn ram_file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn reads_across_a_hole_fail_and_reads_across_adjacent_regions_join() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(0x3000).collect();
        let file = ram_file(&bytes);
        let regions = vec![
            RamRegion {
                guest_address: 0,
                len: 0x1000,
                file_offset: 0,
            },
            RamRegion {
                guest_address: 0x1000,
                len: 0x1000,
                file_offset: 0x2000,
            },
            RamRegion {
                guest_address: 0x10000,
                len: 0x1000,
                file_offset: 0x1000,
            },
        ];
        let ram = MappedRam::open(file.path(), regions, false).unwrap();
        let mut buf = [0u8; 8];
        ram.read_physical(0xffc, &mut buf).unwrap();
        assert_eq!(&buf[..4], &bytes[0xffc..0x1000]);
        assert_eq!(&buf[4..], &bytes[0x2000..0x2004]);
        ram.read_physical(0x10000, &mut buf).unwrap();
        assert_eq!(&buf, &bytes[0x1000..0x1008]);
        let err = ram.read_physical(0x1ffc, &mut buf).unwrap_err();
        assert!(matches!(
            err,
            VmiError::BadPhysicalAddress {
                address: 0x1ffc,
                len: 8
            }
        ));
        assert!(matches!(
            ram.read_physical(u64::MAX - 2, &mut buf),
            Err(VmiError::BadPhysicalAddress { .. })
        ));
        assert_eq!(ram.physical_size(), 0x11000);
    }

    #[test]
    fn a_region_past_the_end_of_the_file_is_a_truncated_snapshot() {
        let file = ram_file(&[0u8; 0x1000]);
        let regions = vec![RamRegion {
            guest_address: 0,
            len: 0x2000,
            file_offset: 0,
        }];
        let err = MappedRam::open(file.path(), regions, false).err().unwrap();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn an_empty_file_is_refused() {
        let file = ram_file(&[]);
        let err = MappedRam::open_flat(file.path(), false).err().unwrap();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn snapshots_are_read_only() {
        let file = ram_file(&[0u8; 0x1000]);
        let ram = MappedRam::open_flat(file.path(), false).unwrap();
        assert!(matches!(
            ram.write_physical(0, &[1]),
            Err(VmiError::Unsupported(_))
        ));
    }

    /// The kernel raises a real SIGBUS here: the file is cut to one page
    /// while three are mapped.
    #[test]
    fn a_file_that_shrinks_under_the_mapping_fails_reads_with_guest_gone() {
        let file = ram_file(&[0xa5u8; 0x3000]);
        let ram = MappedRam::open_flat(file.path(), true).unwrap();
        let other = ram_file(&[0x5au8; 0x1000]);
        let untouched = MappedRam::open_flat(other.path(), false).unwrap();
        let mut buf = [0u8; 16];
        ram.read_physical(0x2000, &mut buf).unwrap();
        assert_eq!(buf, [0xa5; 16]);

        file.as_file().set_len(0x1000).unwrap();
        let err = ram.read_physical(0x2000, &mut buf).unwrap_err();
        assert!(matches!(err, VmiError::GuestGone(_)), "{err}");
        let err = ram.write_physical(0x2fe0, &[1; 16]).unwrap_err();
        assert!(matches!(err, VmiError::GuestGone(_)), "{err}");
        let err = ram.read_physical(0, &mut buf).unwrap_err();
        assert!(
            matches!(err, VmiError::GuestGone(_)),
            "the mapping stays gone: {err}"
        );
        untouched.read_physical(0, &mut buf).unwrap();
        assert_eq!(buf, [0x5a; 16], "another mapping is unaffected");
    }
}
