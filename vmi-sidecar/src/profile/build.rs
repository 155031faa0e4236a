//! Building an ISF profile from a vmlinux: types from its BTF (`.BTF`
//! section), symbol addresses from System.map (or the ELF `.symtab` when no
//! System.map is given), and the `linux_banner` bytes the runtime compares
//! with the guest's.
//!
//! The vmlinux is memory-mapped, not read: only `.BTF`, `.symtab` and the
//! banner's page are touched, plus one sequential pass for the SHA-256 that
//! runs on a second thread while the BTF is converted. (As with any mmap, a
//! file truncated while the build runs ends the process with SIGBUS.)

mod btf;
mod symbols;

use crate::error::{Result, VmiError};
use crate::profile::isf::{Isf, LinuxSources, Metadata, Producer, SourceFile, ISF_FORMAT};
use object::read::elf::ElfFile64;
use object::{LittleEndian, Object, ObjectSection};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The files a profile is built from.
#[derive(Debug, Clone, Copy)]
pub struct BuildInputs<'a> {
    /// The uncompressed kernel image with its `.BTF` section (Debian ships it
    /// in `linux-image-<ver>-dbg` as `/usr/lib/debug/boot/vmlinux-<ver>`).
    pub vmlinux: &'a Path,
    /// The kernel's System.map; without it, symbols come from the vmlinux
    /// `.symtab`.
    pub system_map: Option<&'a Path>,
}

/// Builds the ISF profile for `inputs`. Deterministic: the same files give
/// the same profile.
pub fn build_profile(inputs: &BuildInputs) -> Result<Isf> {
    let vmlinux = inputs.vmlinux;
    let bad = |reason: String| VmiError::BadProfile {
        path: vmlinux.to_owned(),
        reason,
    };
    let file = std::fs::File::open(vmlinux)
        .map_err(|e| VmiError::io(format!("opening vmlinux {}", vmlinux.display()), e))?;
    let meta = file
        .metadata()
        .map_err(|e| VmiError::io(format!("reading vmlinux {}", vmlinux.display()), e))?;
    if !meta.is_file() {
        return Err(bad("not a regular file; expected a vmlinux".into()));
    }
    if meta.len() == 0 {
        return Err(bad("empty file; expected a vmlinux".into()));
    }
    // SAFETY: read-only private mapping; see the module docs on truncation.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| VmiError::io(format!("mapping vmlinux {}", vmlinux.display()), e))?;
    let bytes: &[u8] = &map;
    check_elf_ident(bytes).map_err(bad)?;
    let elf = ElfFile64::<LittleEndian>::parse(bytes)
        .map_err(|e| bad(format!("malformed ELF file: {e}")))?;
    let btf_section = elf.section_by_name(".BTF").ok_or_else(|| {
        bad("no .BTF section; DWARF-only vmlinux files are not supported yet".into())
    })?;
    let btf_bytes = btf_section
        .data()
        .map_err(|e| bad(format!("unreadable .BTF section: {e}")))?;

    // Hash the whole file on a second thread while the rest is built.
    let (hash, isf) = std::thread::scope(|s| {
        let hasher = s.spawn(|| sha256_hex(bytes));
        let isf = build_from(inputs, &elf, btf_bytes);
        (hasher.join(), isf)
    });
    let mut isf = isf?;
    let hash = hash.map_err(|_| bad("hashing the file failed".into()))?;
    if let Some(linux) = &mut isf.metadata.linux {
        let from_vmlinux = linux.types.iter_mut().chain(
            linux
                .symbols
                .iter_mut()
                .filter(|f| f.kind.as_deref() == Some("symtab")),
        );
        for source in from_vmlinux {
            source.hash_value.clone_from(&hash);
        }
    }
    Ok(isf)
}

/// Everything but the vmlinux hash, which [`build_profile`] fills in.
fn build_from(
    inputs: &BuildInputs,
    elf: &ElfFile64<'_, LittleEndian>,
    btf_bytes: &[u8],
) -> Result<Isf> {
    let vmlinux = inputs.vmlinux;
    let bad = |reason: String| VmiError::BadProfile {
        path: vmlinux.to_owned(),
        reason,
    };
    let converted = btf::convert(btf_bytes).map_err(bad)?;
    let vmlinux_name = file_name(vmlinux);
    let (addresses, symbol_source) = match inputs.system_map {
        Some(map_path) => {
            let text = std::fs::read(map_path).map_err(|e| {
                VmiError::io(format!("reading System.map {}", map_path.display()), e)
            })?;
            let bad_map = |reason: String| VmiError::BadProfile {
                path: map_path.to_owned(),
                reason,
            };
            let addresses = symbols::parse_system_map(&text).map_err(bad_map)?;
            check_map_matches(elf, &addresses).map_err(bad_map)?;
            let source = SourceFile {
                kind: Some("system-map".into()),
                name: file_name(map_path),
                hash_type: "sha256".into(),
                hash_value: sha256_hex(&text),
            };
            (addresses, source)
        }
        None => {
            let addresses: std::collections::BTreeMap<String, u64> =
                symbols::elf_symbols(elf, None)
                    .into_iter()
                    .map(|(name, s)| (name, s.address))
                    .collect();
            if addresses.is_empty() {
                return Err(bad(
                    "no System.map given and the vmlinux has no .symtab; pass the System.map of the same kernel".into(),
                ));
            }
            let source = SourceFile {
                kind: Some("symtab".into()),
                name: vmlinux_name.clone(),
                hash_type: "sha256".into(),
                hash_value: String::new(),
            };
            (addresses, source)
        }
    };

    let banner = addresses.get("linux_banner").and_then(|&address| {
        let size = symbols::elf_symbols(elf, Some(&["linux_banner"]))
            .get("linux_banner")
            .map(|s| s.size);
        symbols::read_object(elf, address, size)
    });
    match &banner {
        None => tracing::warn!(
            vmlinux = %vmlinux.display(),
            "linux_banner not found; the profile cannot be checked against a guest's banner"
        ),
        Some(b) if !b.starts_with(b"Linux version ") => tracing::warn!(
            vmlinux = %vmlinux.display(),
            "linux_banner does not start with \"Linux version \""
        ),
        Some(_) => {}
    }

    let base_types = converted.base_types;
    let symbols = symbols::isf_symbols(
        &addresses,
        &converted.vars,
        &converted.user_types,
        |name| base_types.contains_key(name),
        banner.as_deref(),
    );
    Ok(Isf {
        metadata: Metadata {
            format: ISF_FORMAT.into(),
            producer: Some(Producer {
                name: "furnace".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            }),
            linux: Some(LinuxSources {
                symbols: vec![symbol_source],
                types: vec![SourceFile {
                    kind: None,
                    name: vmlinux_name,
                    hash_type: "sha256".into(),
                    hash_value: String::new(),
                }],
            }),
        },
        base_types,
        user_types: converted.user_types,
        enums: converted.enums,
        symbols,
    })
}

/// Rejects what is not a 64-bit little-endian ELF file, with a hint for the
/// usual mistake (a compressed vmlinuz).
fn check_elf_ident(bytes: &[u8]) -> std::result::Result<(), String> {
    if !bytes.starts_with(b"\x7fELF") {
        return Err("not an ELF file; expected an uncompressed vmlinux (a vmlinuz/bzImage will not do: use the vmlinux from the kernel's -dbg package)".into());
    }
    match (bytes.get(4), bytes.get(5)) {
        (Some(2), Some(1)) => Ok(()),
        (Some(2), _) => Err("big-endian ELF files are not supported".into()),
        _ => Err("not a 64-bit ELF file; expected an x86-64 vmlinux".into()),
    }
}

/// A System.map from another build would give every symbol a wrong address:
/// compare a few with the vmlinux's own symbol table when it has one.
fn check_map_matches(
    elf: &ElfFile64<'_, LittleEndian>,
    addresses: &std::collections::BTreeMap<String, u64>,
) -> std::result::Result<(), String> {
    const PROBES: &[&str] = &["linux_banner", "_text", "init_task"];
    for (name, sym) in symbols::elf_symbols(elf, Some(PROBES)) {
        if let Some(&in_map) = addresses.get(&name) {
            if in_map != sym.address {
                return Err(format!(
                    "does not belong to this vmlinux: {name} is at {in_map:#x} in System.map but at {:#x} in the vmlinux; use the System.map of the same kernel build",
                    sym.address
                ));
            }
        }
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests;
