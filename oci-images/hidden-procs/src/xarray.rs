//! A read-only walk of a kernel `struct xarray` (what an `idr` is built on
//! since Linux 4.20), over guest memory read from outside.
//!
//! Entry encoding, from `include/linux/xarray.h`: a pointer with low bits
//! `10` is internal. An internal entry above 4096 is a node (`xa_node`, with
//! `shift` and 64 `slots`), and an internal entry below that is a sibling,
//! retry or zero marker, never an element. Everything else non-null is an
//! element, here a `struct pid *`.

use thiserror::Error;

/// Slots per node: `XA_CHUNK_SIZE` with `CONFIG_BASE_SMALL=0`, as every
/// distribution kernel builds.
pub const SLOTS: usize = 64;
const CHUNK_SHIFT: u8 = 6;
/// An xarray indexed by `unsigned long` is at most 11 levels deep.
const MAX_DEPTH: usize = 11;

#[derive(Debug, Error)]
pub enum WalkError {
    #[error("reading guest memory at {address:#x}: {message}")]
    Read { address: u64, message: String },
    #[error("xa_node at {node:#x} has shift {shift}, not a multiple of {CHUNK_SHIFT} below 64: not a 64-slot xarray, or not an xa_node")]
    BadShift { node: u64, shift: u8 },
    #[error("xarray at depth {depth} below its head: a loop, or not an xarray")]
    TooDeep { depth: usize },
    #[error("more than {limit} entries: not an xarray, or not a pid idr")]
    TooMany { limit: usize },
}

/// Where the walk finds `xa_node`'s fields, from the guest's profile.
#[derive(Debug, Clone, Copy)]
pub struct NodeLayout {
    pub shift: u64,
    pub slots: u64,
}

/// Reads guest kernel memory.
pub trait KernelMemory {
    fn read(&self, address: u64, size: usize) -> Result<Vec<u8>, String>;
}

fn is_internal(entry: u64) -> bool {
    entry & 3 == 2
}

fn is_node(entry: u64) -> bool {
    is_internal(entry) && entry > 4096
}

/// Every element reachable from `head` (the xarray's `xa_head`), in index
/// order; at most `limit` of them.
pub fn elements(
    memory: &impl KernelMemory,
    layout: NodeLayout,
    head: u64,
    limit: usize,
) -> Result<Vec<u64>, WalkError> {
    let mut found = Vec::new();
    visit(memory, layout, head, 0, limit, &mut found)?;
    Ok(found)
}

fn visit(
    memory: &impl KernelMemory,
    layout: NodeLayout,
    entry: u64,
    depth: usize,
    limit: usize,
    found: &mut Vec<u64>,
) -> Result<(), WalkError> {
    if entry == 0 || (is_internal(entry) && !is_node(entry)) {
        return Ok(());
    }
    if !is_node(entry) {
        if found.len() == limit {
            return Err(WalkError::TooMany { limit });
        }
        found.push(entry);
        return Ok(());
    }
    if depth >= MAX_DEPTH {
        return Err(WalkError::TooDeep { depth });
    }
    let node = entry - 2;
    let shift = read(memory, node + layout.shift, 1)?[0];
    if shift % CHUNK_SHIFT != 0 || shift >= 64 {
        return Err(WalkError::BadShift { node, shift });
    }
    let slots = read(memory, node + layout.slots, SLOTS * 8)?;
    for slot in slots.chunks_exact(8) {
        let slot = u64::from_le_bytes(slot.try_into().expect("chunks of 8"));
        visit(memory, layout, slot, depth + 1, limit, found)?;
    }
    Ok(())
}

fn read(memory: &impl KernelMemory, address: u64, size: usize) -> Result<Vec<u8>, WalkError> {
    let data = memory
        .read(address, size)
        .map_err(|message| WalkError::Read { address, message })?;
    if data.len() != size {
        return Err(WalkError::Read {
            address,
            message: format!("{} bytes came back, not {size}", data.len()),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const LAYOUT: NodeLayout = NodeLayout {
        shift: 0,
        slots: 40,
    };

    /// Sparse little-endian memory: unwritten bytes read as zero; reads at or
    /// above [`UNMAPPED`] fail, as unmapped guest addresses do.
    const UNMAPPED: u64 = 1 << 40;

    #[derive(Default)]
    struct Memory(BTreeMap<u64, u8>);

    impl Memory {
        fn node(&mut self, at: u64, shift: u8, slots: &[(usize, u64)]) -> u64 {
            self.0.insert(at + LAYOUT.shift, shift);
            for &(index, value) in slots {
                for (i, b) in value.to_le_bytes().into_iter().enumerate() {
                    self.0
                        .insert(at + LAYOUT.slots + 8 * index as u64 + i as u64, b);
                }
            }
            at | 2
        }
    }

    impl KernelMemory for Memory {
        fn read(&self, address: u64, size: usize) -> Result<Vec<u8>, String> {
            if address + size as u64 > UNMAPPED {
                return Err("bad address".into());
            }
            Ok((address..address + size as u64)
                .map(|a| self.0.get(&a).copied().unwrap_or(0))
                .collect())
        }
    }

    #[test]
    fn a_head_that_is_an_element_is_the_only_element() {
        let found = elements(&Memory::default(), LAYOUT, 0xffff_8880_0000_1000, 10).unwrap();
        assert_eq!(found, [0xffff_8880_0000_1000]);
        assert!(elements(&Memory::default(), LAYOUT, 0, 10)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_two_level_tree_yields_its_elements_in_index_order_and_skips_markers() {
        let mut m = Memory::default();
        let sibling = (1 << 2) | 2;
        let retry = (256 << 2) | 2;
        let leaf_a = m.node(0x10_000, 0, &[(1, 0xa000), (2, sibling), (5, 0xb000)]);
        let leaf_b = m.node(0x20_000, 0, &[(0, retry), (63, 0xc000)]);
        let root = m.node(0x30_000, 6, &[(0, leaf_a), (3, leaf_b)]);
        assert_eq!(
            elements(&m, LAYOUT, root, 10).unwrap(),
            [0xa000, 0xb000, 0xc000]
        );
    }

    #[test]
    fn a_node_that_lists_itself_is_refused_not_walked_forever() {
        let mut m = Memory::default();
        let looping = m.node(0x10_000, 6, &[(0, 0x10_000 | 2)]);
        assert!(matches!(
            elements(&m, LAYOUT, looping, 10),
            Err(WalkError::TooDeep { .. })
        ));
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let mut m = Memory::default();
        let odd_shift = m.node(0x10_000, 5, &[]);
        assert!(matches!(
            elements(&m, LAYOUT, odd_shift, 10),
            Err(WalkError::BadShift { shift: 5, .. })
        ));
        let full = m.node(0x20_000, 0, &[(0, 0xa000), (1, 0xb000), (2, 0xc000)]);
        assert!(matches!(
            elements(&m, LAYOUT, full, 2),
            Err(WalkError::TooMany { limit: 2 })
        ));
        assert!(matches!(
            elements(&m, LAYOUT, UNMAPPED | 2, 10),
            Err(WalkError::Read { .. })
        ));
    }
}
