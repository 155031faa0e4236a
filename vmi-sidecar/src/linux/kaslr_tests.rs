//! Locating a kernel built by hand in sparse memory, beside decoys a guest
//! user could build in their own pages: a spray of idle-task names and a
//! complete fake kernel (task, page tables and banner that agree with each
//! other). The live kernel is the one the vCPU's CR3 maps.

use super::*;
use crate::arch::page_store::PageStore;
use crate::linux::layout::{KernelSymbols, ModuleLayout};

const MIB: u64 = 1 << 20;
const BANNER: &[u8] = b"Linux version 6.1.0-test (builder@test) (gcc) #1 SMP PREEMPT_DYNAMIC";
/// A PTI vCPU in user mode: CR3 is the user half, the kernel half below it.
const USER_HALF: u64 = 1 << 12;

fn layout() -> KernelLayout {
    KernelLayout {
        task_tasks: 0x10,
        task_pid: 0x40,
        task_tgid: 0x44,
        task_comm: 0x100,
        task_mm: 0x60,
        task_active_mm: 0x68,
        task_real_parent: 0x70,
        task_real_cred: 0x78,
        task_files: 0x80,
        cred_uid: 4,
        mm_pgd: 0x50,
        list_next: 0,
        list_prev: 8,
        module: ModuleLayout {
            list: 0,
            name: 0x18,
            name_len: 56,
            core_base: 0x100,
            core_size: 0x108,
            core_size_width: 4,
        },
        symbols: KernelSymbols {
            init_task: START_KERNEL_MAP + 0x00a0_c000,
            init_files: START_KERNEL_MAP + 0x00b0_0000,
            init_mm: START_KERNEL_MAP + 0x00b1_0000,
            top_page_table: START_KERNEL_MAP + 0x0060_0000,
            linux_banner: START_KERNEL_MAP + 0x0020_0100,
            modules: START_KERNEL_MAP + 0x00b2_0000,
            pgtable_l5_enabled: None,
        },
    }
}

/// Builds a kernel image at `physical_shift`, mapped at `virtual_shift` by
/// page tables inside it (2 MiB pages; the PDPT and PD in `tables`), and
/// returns its top-level table.
fn build_kernel(memory: &PageStore, physical_shift: u64, virtual_shift: u64, tables: u64) -> u64 {
    let l = layout();
    let s = &l.symbols;
    let location = KernelLocation {
        virtual_shift,
        physical_shift,
        dtb: 0,
        paging_mode: PagingMode::FourLevel,
    };
    let at = |link: u64| location.image_physical(link);
    let task = at(s.init_task);
    memory.write(task + l.task_comm, IDLE_COMM);
    memory.write_u64(task + l.task_files, s.init_files + virtual_shift);
    memory.write_u64(task + l.task_active_mm, s.init_mm + virtual_shift);
    memory.write_u64(task + l.task_tasks, 0x1111_0000);
    memory.write_u64(task + l.task_tasks + 8, 0x2222_0000);
    memory.write(at(s.linux_banner), BANNER);
    let pml4 = at(s.top_page_table);
    let (pdpt, pd) = (tables, tables + 0x1000);
    let base = START_KERNEL_MAP + virtual_shift;
    memory.set_entry(pml4, (base >> 39) & 0x1ff, pdpt | 3);
    memory.set_entry(pdpt, (base >> 30) & 0x1ff, pd | 3);
    for i in 0..32 {
        let va = base + i * 2 * MIB;
        memory.set_entry(
            pd,
            (va >> 21) & 0x1ff,
            (physical_shift + i * 2 * MIB) | 0x83,
        );
    }
    pml4
}

/// The live kernel at 128 MiB, a complete decoy at 64 MiB, and 5000 copies
/// of the idle task's name below both.
fn hostile_memory() -> (PageStore, u64) {
    let memory = PageStore::new(256 * MIB);
    let live = build_kernel(&memory, 128 * MIB, 0x1a00_0000, 0x10_0000);
    build_kernel(&memory, 64 * MIB, 0x0400_0000, 0x20_0000);
    for i in 0..5000u64 {
        memory.write(0x40_0000 + i * 64, IDLE_COMM);
    }
    (memory, live)
}

fn vcpu(root: u64) -> Registers {
    Registers {
        cr3: root | USER_HALF,
        ..Registers::default()
    }
}

#[test]
fn the_live_cr3_finds_the_kernel_past_a_spray_and_a_complete_decoy() {
    let (memory, live) = hostile_memory();
    let location = locate(&memory, &layout(), Some(&vcpu(live)), BANNER).unwrap();
    assert_eq!(location.physical_shift, 128 * MIB);
    assert_eq!(location.virtual_shift, 0x1a00_0000);
    assert_eq!(location.dtb, live);
}

#[test]
fn a_kernel_the_live_cr3_does_not_map_is_refused() {
    let (memory, _) = hostile_memory();
    let elsewhere = 0x30_0000;
    let err = locate(&memory, &layout(), Some(&vcpu(elsewhere)), BANNER).unwrap_err();
    assert!(matches!(err, VmiError::KernelNotFound(_)), "{err}");
    assert!(err.to_string().contains("checked 4097 candidate"), "{err}");
}

#[test]
fn a_snapshot_without_registers_is_located_by_the_banner_and_page_tables() {
    let memory = PageStore::new(256 * MIB);
    let live = build_kernel(&memory, 128 * MIB, 0x1a00_0000, 0x10_0000);
    let location = locate(&memory, &layout(), None, BANNER).unwrap();
    assert_eq!(location.dtb, live);
    let err = locate(&memory, &layout(), None, b"Linux version 5.10").unwrap_err();
    assert!(
        err.to_string().contains("not the profile's banner"),
        "{err}"
    );
}
