//! Symbols: System.map parsing, the ELF `.symtab` fallback, the types given
//! to well-known kernel globals, and the `linux_banner` bytes.

use crate::profile::isf::{Symbol, TypeRef, UserType};
use object::read::elf::ElfFile64;
use object::{LittleEndian, Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};
use std::collections::BTreeMap;

/// The longest banner read when its size is unknown (the real one is ~200
/// bytes).
const MAX_BANNER: usize = 4096;

/// Parses `nm`-style `ADDRESS TYPE NAME` lines (a System.map). Blank lines
/// are skipped; on duplicate names the first line wins.
pub(crate) fn parse_system_map(text: &[u8]) -> Result<BTreeMap<String, u64>, String> {
    let mut symbols = BTreeMap::new();
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        let line = std::str::from_utf8(raw)
            .map_err(|_| format!("line {line_no} is not UTF-8 text; is this a System.map?"))?;
        let mut parts = line.split_ascii_whitespace();
        let (addr, kind, name) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (None, ..) => continue,
            (Some(a), Some(k), Some(n), None) => (a, k, n),
            _ => return Err(bad_line(line_no, line)),
        };
        let address = u64::from_str_radix(addr, 16)
            .ok()
            .filter(|_| addr.len() <= 16)
            .ok_or_else(|| bad_line(line_no, line))?;
        if kind.chars().count() != 1 {
            return Err(bad_line(line_no, line));
        }
        symbols.entry(name.to_owned()).or_insert(address);
    }
    if symbols.is_empty() {
        return Err("contains no symbols; is this a System.map?".into());
    }
    Ok(symbols)
}

fn bad_line(line_no: usize, line: &str) -> String {
    let shown: String = line.chars().take(80).collect();
    format!(
        "line {line_no} is not `ADDRESS TYPE NAME` (hex address, one-letter type): {shown:?}; is this a System.map?"
    )
}

/// A symbol of the ELF `.symtab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ElfSymbol {
    pub address: u64,
    pub size: u64,
}

/// The named, defined symbols of the `.symtab` (no section or file
/// symbols); the first of duplicate names wins. With `only`, just those
/// names are collected.
pub(crate) fn elf_symbols(
    elf: &ElfFile64<'_, LittleEndian>,
    only: Option<&[&str]>,
) -> BTreeMap<String, ElfSymbol> {
    let mut out = BTreeMap::new();
    for sym in elf.symbols() {
        if sym.is_undefined() || matches!(sym.kind(), SymbolKind::Section | SymbolKind::File) {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        if name.is_empty() || only.is_some_and(|o| !o.contains(&name)) {
            continue;
        }
        out.entry(name.to_owned()).or_insert(ElfSymbol {
            address: sym.address(),
            size: sym.size(),
        });
    }
    out
}

/// The bytes of the object at `address` in the file: `size` bytes, or when
/// the size is unknown up to and including the first NUL. `None` when no
/// section with file contents holds the address.
pub(crate) fn read_object(
    elf: &ElfFile64<'_, LittleEndian>,
    address: u64,
    size: Option<u64>,
) -> Option<Vec<u8>> {
    let section = elf.sections().find(|s| {
        s.kind() != SectionKind::UninitializedData
            && s.address() <= address
            && address - s.address() < s.size()
    })?;
    let data = section.data().ok()?;
    let start = usize::try_from(address - section.address()).ok()?;
    let rest = data.get(start..)?;
    let bytes = match size.filter(|&s| s > 0) {
        Some(size) => rest.get(..usize::try_from(size).ok()?)?,
        None => {
            let window = &rest[..rest.len().min(MAX_BANNER)];
            let end = memchr::memchr(0, window)?;
            &window[..=end]
        }
    };
    Some(bytes.to_vec())
}

/// Types of well-known globals that BTF (which has `VAR`s only for per-CPU
/// variables) does not describe.
const STRUCT_SYMBOLS: &[(&str, &str)] = &[
    ("init_task", "task_struct"),
    ("init_mm", "mm_struct"),
    ("init_files", "files_struct"),
    ("init_fs", "fs_struct"),
    ("init_nsproxy", "nsproxy"),
    ("init_pid_ns", "pid_namespace"),
    ("init_uts_ns", "uts_namespace"),
    ("init_user_ns", "user_namespace"),
    ("init_cred", "cred"),
    ("init_net", "net"),
    ("modules", "list_head"),
    ("super_blocks", "list_head"),
];

/// Top-level page tables: 512 entries of 8 bytes.
const PAGE_TABLE_SYMBOLS: &[&str] = &["init_top_pgt", "swapper_pg_dir"];

/// Builds the ISF symbol table: addresses from `addresses`, types from BTF
/// `VAR`s (`vars`) and the built-in table, and `linux_banner`'s bytes.
pub(crate) fn isf_symbols(
    addresses: &BTreeMap<String, u64>,
    vars: &BTreeMap<String, TypeRef>,
    user_types: &BTreeMap<String, UserType>,
    has_base: impl Fn(&str) -> bool,
    banner: Option<&[u8]>,
) -> BTreeMap<String, Symbol> {
    use base64::Engine;
    let mut symbols: BTreeMap<String, Symbol> = addresses
        .iter()
        .map(|(name, &address)| {
            let symbol = Symbol {
                address,
                type_: vars.get(name).cloned(),
                constant_data: None,
            };
            (name.clone(), symbol)
        })
        .collect();
    let mut set_type = |name: &str, ty: TypeRef| {
        if let Some(s) = symbols.get_mut(name) {
            s.type_.get_or_insert(ty);
        }
    };
    for &(symbol, type_name) in STRUCT_SYMBOLS {
        if let Some(ut) = user_types.get(type_name) {
            let name = type_name.to_owned();
            let ty = if ut.kind == "union" {
                TypeRef::Union { name }
            } else {
                TypeRef::Struct { name }
            };
            set_type(symbol, ty);
        }
    }
    let entry = if has_base("long unsigned int") {
        "long unsigned int"
    } else {
        "pointer"
    };
    for &symbol in PAGE_TABLE_SYMBOLS {
        let subtype = Box::new(TypeRef::Base { name: entry.into() });
        set_type(
            symbol,
            TypeRef::Array {
                count: 512,
                subtype,
            },
        );
    }
    if let Some(bytes) = banner {
        if has_base("char") {
            let subtype = Box::new(TypeRef::Base {
                name: "char".into(),
            });
            set_type(
                "linux_banner",
                TypeRef::Array {
                    count: bytes.len() as u64,
                    subtype,
                },
            );
        }
        if let Some(s) = symbols.get_mut("linux_banner") {
            s.constant_data = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    symbols
}
