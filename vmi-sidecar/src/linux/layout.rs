//! The struct offsets and symbols Linux semantics rely on, resolved from the
//! profile once at attach time so every walk is plain arithmetic.

use crate::error::Result;
use crate::profile::Profile;

#[derive(Debug, Clone)]
pub struct KernelLayout {
    pub task_tasks: u64,
    pub task_pid: u64,
    pub task_tgid: u64,
    pub task_comm: u64,
    pub task_mm: u64,
    pub task_active_mm: u64,
    pub task_real_parent: u64,
    pub task_real_cred: u64,
    pub task_files: u64,
    pub cred_uid: u64,
    pub mm_pgd: u64,
    pub list_next: u64,
    pub list_prev: u64,
    pub module: ModuleLayout,
    pub symbols: KernelSymbols,
}

#[derive(Debug, Clone)]
pub struct ModuleLayout {
    pub list: u64,
    pub name: u64,
    pub name_len: u64,
    /// Offsets of the core text region's base pointer and size: `core_layout`
    /// up to 6.3, `mem[MOD_TEXT]` from 6.4.
    pub core_base: u64,
    pub core_size: u64,
    /// Width of the size field (`unsigned int`, 4 bytes, in both layouts).
    pub core_size_width: u64,
}

/// Link-time addresses (before KASLR) of the symbols attach and walks use.
#[derive(Debug, Clone)]
pub struct KernelSymbols {
    pub init_task: u64,
    pub init_files: u64,
    pub init_mm: u64,
    pub top_page_table: u64,
    pub linux_banner: u64,
    pub modules: u64,
    pub pgtable_l5_enabled: Option<u64>,
}

impl KernelLayout {
    pub fn from_profile(p: &Profile) -> Result<Self> {
        let task = |m: &str| p.member_offset("task_struct", m);
        let module = ModuleLayout::from_profile(p)?;
        let top_page_table = ["init_top_pgt", "init_level4_pgt", "swapper_pg_dir"]
            .iter()
            .find_map(|s| p.symbol(s).ok())
            .map_or_else(|| p.symbol("init_top_pgt"), Ok)?;
        Ok(KernelLayout {
            task_tasks: task("tasks")?,
            task_pid: task("pid")?,
            task_tgid: task("tgid")?,
            task_comm: task("comm")?,
            task_mm: task("mm")?,
            task_active_mm: task("active_mm")?,
            task_real_parent: task("real_parent")?,
            task_real_cred: task("real_cred")?,
            task_files: task("files")?,
            cred_uid: p.member_offset("cred", "uid")?,
            mm_pgd: p.member_offset("mm_struct", "pgd")?,
            list_next: p.member_offset("list_head", "next")?,
            list_prev: p.member_offset("list_head", "prev")?,
            module,
            symbols: KernelSymbols {
                init_task: p.symbol("init_task")?,
                init_files: p.symbol("init_files")?,
                init_mm: p.symbol("init_mm")?,
                top_page_table,
                linux_banner: p.symbol("linux_banner")?,
                modules: p.symbol("modules")?,
                pgtable_l5_enabled: p.symbol("__pgtable_l5_enabled").ok(),
            },
        })
    }
}

impl ModuleLayout {
    fn from_profile(p: &Profile) -> Result<Self> {
        let name_len = match p.member("module", "name")?.1 {
            crate::profile::isf::TypeRef::Array { count, .. } => *count,
            _ => 56,
        };
        let (core_base, core_size) = if p.has_member("module", "core_layout") {
            (
                p.member_path_offset("module", "core_layout.base")?,
                p.member_path_offset("module", "core_layout.size")?,
            )
        } else {
            // 6.4+: `struct module_memory mem[MOD_MEM_NUM_TYPES]`, MOD_TEXT = 0.
            (
                p.member_path_offset("module", "mem")?
                    .wrapping_add(p.member_offset("module_memory", "base")?),
                p.member_path_offset("module", "mem")?
                    .wrapping_add(p.member_offset("module_memory", "size")?),
            )
        };
        Ok(ModuleLayout {
            list: p.member_offset("module", "list")?,
            name: p.member_offset("module", "name")?,
            name_len,
            core_base,
            core_size,
            core_size_width: 4,
        })
    }
}
