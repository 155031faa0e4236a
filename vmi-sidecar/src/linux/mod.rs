//! Linux semantics over a driver: KASLR located at attach, kernel symbols,
//! virtual memory of the kernel and of each process, processes and modules.

pub mod current;
mod kaslr;
mod layout;
pub mod lifecycle;
mod scan;
pub mod syscall;
/// A hand-built guest image for unit tests and the fuzz seeds.
#[cfg(any(test, feature = "test-image"))]
#[doc(hidden)]
pub mod test_image;
mod walk;
pub use walk::{AddressSpaces, Walk};

pub use kaslr::{KernelLocation, START_KERNEL_MAP};
pub use layout::KernelLayout;
pub use scan::scan_physical;

use crate::arch::amd64::{self, PagingMode, Translation, PAGE_SIZE};
use crate::driver::Driver;
use crate::error::{Result, VmiError};
use crate::profile::Profile;

pub struct LinuxKernel {
    driver: Box<dyn Driver>,
    profile: Profile,
    layout: KernelLayout,
    location: KernelLocation,
}

impl LinuxKernel {
    /// Checks that `profile` describes the guest's kernel (by its banner) and
    /// finds where that kernel sits in memory.
    pub fn attach(driver: Box<dyn Driver>, profile: Profile) -> Result<Self> {
        let layout = KernelLayout::from_profile(&profile)?;
        let banner = kaslr::check_banner(driver.as_ref(), &profile)?;
        let registers = match driver.vcpu_registers() {
            Some(regs) => Some(regs.registers(0)?),
            None => None,
        };
        let location = kaslr::locate(driver.as_ref(), &layout, registers.as_ref(), &banner)?;
        tracing::debug!(
            virtual_shift = format_args!("{:#x}", location.virtual_shift),
            physical_shift = format_args!("{:#x}", location.physical_shift),
            dtb = format_args!("{:#x}", location.dtb),
            mode = ?location.paging_mode,
            "located the guest kernel"
        );
        Ok(LinuxKernel {
            driver,
            profile,
            layout,
            location,
        })
    }

    /// The kernel at a location found before (by [`LinuxKernel::attach`] of
    /// the same boot), without looking for it again.
    pub fn at_location(
        driver: Box<dyn Driver>,
        profile: Profile,
        location: KernelLocation,
    ) -> Result<Self> {
        Ok(LinuxKernel {
            layout: KernelLayout::from_profile(&profile)?,
            driver,
            profile,
            location,
        })
    }

    pub fn driver(&self) -> &dyn Driver {
        self.driver.as_ref()
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    pub fn location(&self) -> &KernelLocation {
        &self.location
    }

    pub fn kernel_dtb(&self) -> u64 {
        self.location.dtb
    }

    pub fn paging_mode(&self) -> PagingMode {
        self.location.paging_mode
    }

    /// Run-time virtual address of a kernel symbol (ksym2v).
    pub fn symbol_address(&self, name: &str) -> Result<u64> {
        Ok(self.relocate(self.profile.symbol(name)?))
    }

    /// Applies the KASLR shift to a link-time address in the kernel image.
    /// Per-CPU symbols (offsets, not addresses) stay as they are.
    pub fn relocate(&self, link_address: u64) -> u64 {
        if link_address >= START_KERNEL_MAP {
            link_address.wrapping_add(self.location.virtual_shift)
        } else {
            link_address
        }
    }

    /// Walks the page tables rooted at `dtb`.
    pub fn translate(&self, dtb: u64, address: u64) -> Result<Translation> {
        amd64::translate(
            self.driver.as_ref(),
            dtb,
            self.location.paging_mode,
            address,
        )
    }

    /// Kernel virtual to physical (kv2p).
    pub fn kernel_to_physical(&self, address: u64) -> Result<Translation> {
        self.translate(self.location.dtb, address)
    }

    /// User virtual to physical in process `pid`'s address space (uv2p).
    pub fn user_to_physical(&self, pid: u32, address: u64) -> Result<Translation> {
        self.translate(self.process_dtb(pid)?, address)
    }

    /// Reads virtual memory in the address space rooted at `dtb`, page by page.
    pub fn read_virtual(&self, dtb: u64, address: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = address.checked_add(done as u64).ok_or_else(|| {
                VmiError::InvalidArgument(format!("{address:#x}+{} wraps", buf.len()))
            })?;
            let in_page = (PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(buf.len() - done);
            let t = self.translate(dtb, at)?;
            self.driver
                .read_physical(t.physical, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Up to `max` bytes at `address` in the address space of `dtb`,
    /// stopping at the first NUL; read page by page, so a string that ends
    /// just before an unmapped page still reads.
    pub fn read_cstring(&self, dtb: u64, address: u64, max: usize) -> Result<String> {
        let mut out = Vec::new();
        let mut cursor = address;
        while out.len() < max {
            let in_page = (PAGE_SIZE - (cursor & (PAGE_SIZE - 1))) as usize;
            let mut chunk = vec![0u8; in_page.min(max - out.len())];
            self.read_virtual(dtb, cursor, &mut chunk)?;
            if let Some(end) = chunk.iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                break;
            }
            cursor = cursor.wrapping_add(chunk.len() as u64);
            out.extend_from_slice(&chunk);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    pub fn read_kernel(&self, address: u64, buf: &mut [u8]) -> Result<()> {
        self.read_virtual(self.location.dtb, address, buf)
    }

    pub fn read_kernel_u64(&self, address: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_kernel(address, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn read_kernel_u32(&self, address: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_kernel(address, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a NUL-terminated string of at most `max` bytes.
    pub fn read_kernel_cstring(&self, address: u64, max: usize) -> Result<String> {
        let mut buf = vec![0u8; max];
        self.read_kernel(address, &mut buf)?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(max);
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    /// The banner of the running kernel, read from its `linux_banner`.
    pub fn banner(&self) -> Result<String> {
        let text = self.read_kernel_cstring(self.symbol_address("linux_banner")?, 512)?;
        Ok(text.trim_end().to_owned())
    }
}

/// `base + offset` for a field of a guest object: a base read from the
/// guest that would overflow is a bad address, not a wrapped one.
pub(crate) fn field(base: u64, offset: u64) -> Result<u64> {
    base.checked_add(offset).ok_or_else(|| bad_address(base))
}

pub(crate) fn bad_address(address: u64) -> VmiError {
    VmiError::BadVirtualAddress {
        address,
        why: "a field offset from it overflows the address space",
    }
}
