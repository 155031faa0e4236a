//! Searching guest-physical memory for byte patterns.

use crate::driver::PhysicalMemory;
use crate::error::Result;

const CHUNK: usize = 4 << 20;

/// Calls `on_hit(physical_address)` for every occurrence of `needle` in backed
/// guest memory, in ascending order, until it returns `false`.
pub fn scan_physical(
    memory: &dyn PhysicalMemory,
    needle: &[u8],
    mut on_hit: impl FnMut(u64) -> Result<bool>,
) -> Result<()> {
    if needle.is_empty() {
        return Ok(());
    }
    let finder = memchr::memmem::Finder::new(needle);
    let overlap = needle.len() - 1;
    let mut buf = vec![0u8; CHUNK + overlap];
    for (start, len) in memory.physical_ranges() {
        let end = start + len;
        let mut cursor = start;
        while cursor < end {
            let n = ((end - cursor) as usize).min(buf.len());
            memory.read_physical(cursor, &mut buf[..n])?;
            for at in finder.find_iter(&buf[..n]) {
                if !on_hit(cursor + at as u64)? {
                    return Ok(());
                }
            }
            if n < buf.len() {
                break;
            }
            // Step back by `overlap` so a needle across the chunk edge is seen once.
            cursor += (n - overlap) as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::MappedRam;
    use std::io::Write;

    #[test]
    fn finds_needles_across_chunk_edges_exactly_once() {
        let mut bytes = vec![0u8; CHUNK * 2 + 100];
        let needle = b"swapper/0";
        let places = [5usize, CHUNK - 4, CHUNK * 2 + 50];
        for &p in &places {
            bytes[p..p + needle.len()].copy_from_slice(needle);
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        let ram = MappedRam::open_flat(f.path(), false).unwrap();
        let mut hits = Vec::new();
        scan_physical(&ram, needle, |a| {
            hits.push(a as usize);
            Ok(true)
        })
        .unwrap();
        assert_eq!(hits, places);
    }
}
