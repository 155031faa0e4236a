//! amd64 paging: 4-level and 5-level (LA57) walks with 1 GiB and 2 MiB pages.

use crate::driver::PhysicalMemory;
use crate::error::{Result, VmiError};

pub const PAGE_SIZE: u64 = 4096;
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Bits 51:12 of a paging entry hold the next table's (or page's) frame.
const FRAME_MASK: u64 = 0x000f_ffff_ffff_f000;
/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    FourLevel,
    FiveLevel,
}

impl PagingMode {
    pub fn from_cr4(cr4: u64) -> Self {
        if cr4 & CR4_LA57 != 0 {
            PagingMode::FiveLevel
        } else {
            PagingMode::FourLevel
        }
    }

    fn levels(self) -> u8 {
        match self {
            PagingMode::FourLevel => 4,
            PagingMode::FiveLevel => 5,
        }
    }

    /// Width of a canonical virtual address.
    fn address_bits(self) -> u32 {
        12 + 9 * self.levels() as u32
    }

    pub fn is_canonical(self, address: u64) -> bool {
        let shift = 64 - self.address_bits();
        (((address << shift) as i64) >> shift) as u64 == address
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub physical: u64,
    pub page_size: u64,
}

/// The physical address of the top-level table in a CR3 value (PCID and
/// flag bits dropped).
pub fn dtb_from_cr3(cr3: u64) -> u64 {
    cr3 & FRAME_MASK
}

/// Walks the page tables rooted at `dtb` for `address`.
pub fn translate(
    memory: &dyn PhysicalMemory,
    dtb: u64,
    mode: PagingMode,
    address: u64,
) -> Result<Translation> {
    if !mode.is_canonical(address) {
        return Err(VmiError::InvalidArgument(format!(
            "{address:#x} is not a canonical {}-bit address",
            mode.address_bits()
        )));
    }
    let mut table = dtb_from_cr3(dtb);
    for level in (1..=mode.levels()).rev() {
        let shift = 12 + 9 * (level as u32 - 1);
        let index = (address >> shift) & 0x1ff;
        let mut raw = [0u8; 8];
        memory.read_physical(table + index * 8, &mut raw)?;
        let entry = u64::from_le_bytes(raw);
        if entry & PRESENT == 0 {
            return Err(VmiError::NotMapped {
                address,
                dtb,
                level,
            });
        }
        let frame = entry & FRAME_MASK;
        // PS at the PDPT (level 3) or PD (level 2) maps a 1 GiB or 2 MiB page.
        if level == 1 || (matches!(level, 2 | 3) && entry & PAGE_SIZE_BIT != 0) {
            let page_size = 1u64 << shift;
            let physical = (frame & !(page_size - 1)) | (address & (page_size - 1));
            return Ok(Translation {
                physical,
                page_size,
            });
        }
        table = frame;
    }
    unreachable!("the level-1 entry always ends the walk")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::page_store::PageStore;

    fn idx(address: u64, level: u32) -> u64 {
        (address >> (12 + 9 * (level - 1))) & 0x1ff
    }

    #[test]
    fn four_level_walk_with_4k_2m_and_1g_pages() {
        let mem = PageStore::new(1 << 40);
        let (pml4, pdpt, pd, pt) = (0x1000, 0x2000, 0x3000, 0x4000);
        let va_4k = 0xffff_8880_0020_1234u64;
        mem.set_entry(pml4, idx(va_4k, 4), pdpt | 3);
        mem.set_entry(pdpt, idx(va_4k, 3), pd | 3);
        mem.set_entry(pd, idx(va_4k, 2), pt | 3);
        mem.set_entry(pt, idx(va_4k, 1), 0x7654_3000 | 3 | (1 << 63));
        let t = translate(&mem, pml4 | 0x18, PagingMode::FourLevel, va_4k).unwrap();
        assert_eq!(
            t,
            Translation {
                physical: 0x7654_3234,
                page_size: 4096
            }
        );

        let va_2m = 0xffff_8880_0040_0000u64 + 0x12_3456;
        mem.set_entry(pd, idx(va_2m, 2), 0x4_0020_0000 | 0x83);
        let t = translate(&mem, pml4, PagingMode::FourLevel, va_2m).unwrap();
        assert_eq!(
            t,
            Translation {
                physical: 0x4_0032_3456,
                page_size: 2 << 20
            }
        );

        let va_1g = 0xffff_8881_4000_0000u64 + 0x1234_5678;
        mem.set_entry(pdpt, idx(va_1g, 3), 0x80_4000_0000 | 0x83);
        let t = translate(&mem, pml4, PagingMode::FourLevel, va_1g).unwrap();
        assert_eq!(
            t,
            Translation {
                physical: 0x80_5234_5678,
                page_size: 1 << 30
            }
        );
    }

    #[test]
    fn five_level_walk_uses_bits_56_to_48() {
        let mem = PageStore::new(1 << 40);
        let (pml5, pml4, pdpt, pd, pt) = (0x10000, 0x11000, 0x12000, 0x13000, 0x14000);
        let va = 0xff11_2233_4455_6677u64;
        mem.set_entry(pml5, idx(va, 5), pml4 | 1);
        mem.set_entry(pml4, idx(va, 4), pdpt | 1);
        mem.set_entry(pdpt, idx(va, 3), pd | 1);
        mem.set_entry(pd, idx(va, 2), pt | 1);
        mem.set_entry(pt, idx(va, 1), 0xabc000 | 1);
        let t = translate(&mem, pml5, PagingMode::FiveLevel, va).unwrap();
        assert_eq!(t.physical, 0xabc677);
        // The same address is not canonical with 4 levels.
        assert!(matches!(
            translate(&mem, pml5, PagingMode::FourLevel, va),
            Err(VmiError::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_missing_entry_names_its_level() {
        let mem = PageStore::new(1 << 40);
        mem.set_entry(0x1000, 0, 0x2000 | 1);
        let err = translate(&mem, 0x1000, PagingMode::FourLevel, 0x1000).unwrap_err();
        assert!(
            matches!(
                err,
                VmiError::NotMapped {
                    level: 3,
                    address: 0x1000,
                    ..
                }
            ),
            "{err}"
        );
        let err = translate(&mem, 0x1000, PagingMode::FourLevel, 0x7f00_0000_0000).unwrap_err();
        assert!(matches!(err, VmiError::NotMapped { level: 4, .. }), "{err}");
    }

    #[test]
    fn canonical_checks() {
        assert!(PagingMode::FourLevel.is_canonical(0xffff_8000_0000_0000));
        assert!(PagingMode::FourLevel.is_canonical(0x0000_7fff_ffff_ffff));
        assert!(!PagingMode::FourLevel.is_canonical(0x0000_8000_0000_0000));
        assert!(PagingMode::FiveLevel.is_canonical(0xff00_0000_0000_0000));
        assert!(!PagingMode::FiveLevel.is_canonical(0x0100_0000_0000_0000));
    }
}
