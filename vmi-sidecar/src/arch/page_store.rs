//! Sparse guest-physical memory in 4 KiB pages, for unit tests that build
//! page tables and kernel structures by hand.

use crate::driver::PhysicalMemory;
use crate::error::Result;
use std::collections::HashMap;
use std::sync::Mutex;

pub struct PageStore {
    pages: Mutex<HashMap<u64, [u8; 4096]>>,
    size: u64,
}

impl PageStore {
    /// Memory of `size` bytes, all zero.
    pub fn new(size: u64) -> Self {
        PageStore {
            pages: Mutex::new(HashMap::new()),
            size,
        }
    }

    pub fn write(&self, address: u64, bytes: &[u8]) {
        let mut pages = self.pages.lock().unwrap();
        for (i, byte) in bytes.iter().enumerate() {
            let at = address + i as u64;
            pages.entry(at & !0xfff).or_insert([0; 4096])[(at & 0xfff) as usize] = *byte;
        }
    }

    pub fn write_u64(&self, address: u64, value: u64) {
        self.write(address, &value.to_le_bytes());
    }

    /// Sets entry `index` of the page table at `table`.
    pub fn set_entry(&self, table: u64, index: u64, value: u64) {
        self.write_u64(table + index * 8, value);
    }
}

impl PhysicalMemory for PageStore {
    fn physical_size(&self) -> u64 {
        self.size
    }

    fn read_physical(&self, address: u64, buf: &mut [u8]) -> Result<()> {
        let pages = self.pages.lock().unwrap();
        let mut done = 0;
        while done < buf.len() {
            let at = address + done as u64;
            let offset = (at & 0xfff) as usize;
            let n = (4096 - offset).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match pages.get(&(at & !0xfff)) {
                Some(page) => out.copy_from_slice(&page[offset..offset + n]),
                None => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }
}
