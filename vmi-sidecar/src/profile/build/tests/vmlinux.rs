//! Whole builds from tiny ELF files: System.map, symtab, banner, bad inputs.

use super::*;

#[test]
fn system_map_parsing() {
    let map = b"ffffffff81000000 T _text\n\
                0000000000000000 D fixed_percpu_data\n\
                \n\
                ffffffff8211ffe0 D linux_banner\n\
                ffffffff81000010 t dup\n\
                ffffffff81000020 t dup\n";
    let s = parse_system_map(map).unwrap();
    assert_eq!(s["_text"], 0xffffffff81000000);
    assert_eq!(s["fixed_percpu_data"], 0);
    assert_eq!(s["dup"], 0xffffffff81000010, "the first of duplicates wins");
    assert_eq!(s.len(), 4);

    for (bad, line) in [
        (&b"ffffffff81000000 T _text\nnonsense\n"[..], "line 2"),
        (b"zzzz T x\n", "line 1"),
        (b"ffffffff81000000 T\n", "line 1"),
        (b"11112222333344445 T x\n", "line 1"),
        (b"ffffffff81000000 TT x\n", "line 1"),
        (b"ffffffff81000000 T x [mod]\n", "line 1"),
        (b"ffffffff81000000 T \xff\n", "line 1"),
    ] {
        let err = parse_system_map(bad).unwrap_err();
        assert!(err.contains(line), "{err}");
    }
    assert!(parse_system_map(b"\n\n")
        .unwrap_err()
        .contains("no symbols"));
}

/// A 64-bit little-endian ELF executable with the given (name, address,
/// contents) sections and, if any symbols are given, a `.symtab` of global
/// objects (name, value, size) defined in the first section.
fn tiny_elf(sections: &[(&str, u64, &[u8])], symbols: &[(&str, u64, u64)]) -> Vec<u8> {
    // (name, sh_type, address, contents, sh_link, sh_entsize)
    type Section<'a> = (&'a str, u32, u64, Vec<u8>, u32, u64);
    let mut all: Vec<Section> = sections
        .iter()
        .map(|&(name, addr, data)| (name, 1, addr, data.to_vec(), 0, 0))
        .collect();
    if !symbols.is_empty() {
        let mut strtab = vec![0u8];
        let mut symtab = vec![0u8; 24];
        for &(name, value, size) in symbols {
            symtab.extend_from_slice(&(strtab.len() as u32).to_le_bytes());
            symtab.extend_from_slice(&[0x11, 0]); // GLOBAL OBJECT
            symtab.extend_from_slice(&1u16.to_le_bytes());
            symtab.extend_from_slice(&value.to_le_bytes());
            symtab.extend_from_slice(&size.to_le_bytes());
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
        }
        let strtab_index = all.len() as u32 + 2;
        all.push((".symtab", 2, 0, symtab, strtab_index, 24));
        all.push((".strtab", 3, 0, strtab, 0, 0));
    }
    let shstrtab_name = ".shstrtab";
    all.push((shstrtab_name, 3, 0, Vec::new(), 0, 0));

    let mut shstrtab = vec![0u8];
    let mut name_offsets = Vec::new();
    for s in &all {
        name_offsets.push(shstrtab.len() as u32);
        shstrtab.extend_from_slice(s.0.as_bytes());
        shstrtab.push(0);
    }
    let last = all.len() - 1;
    all[last].3 = shstrtab;

    let mut out = vec![0u8; 64];
    let mut headers = vec![[0u8; 64]];
    for (s, name_off) in all.iter().zip(name_offsets) {
        while out.len() % 8 != 0 {
            out.push(0);
        }
        let (_, kind, addr, data, link, entsize) = s;
        let mut h = [0u8; 64];
        h[0..4].copy_from_slice(&name_off.to_le_bytes());
        h[4..8].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&(if *kind == 1 { 2u64 } else { 0 }).to_le_bytes());
        h[16..24].copy_from_slice(&addr.to_le_bytes());
        h[24..32].copy_from_slice(&(out.len() as u64).to_le_bytes());
        h[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        h[40..44].copy_from_slice(&link.to_le_bytes());
        h[44..48].copy_from_slice(&u32::from(*kind == 2).to_le_bytes());
        h[48..56].copy_from_slice(&(if *kind == 2 { 8u64 } else { 1 }).to_le_bytes());
        h[56..64].copy_from_slice(&entsize.to_le_bytes());
        headers.push(h);
        out.extend_from_slice(data);
    }
    while out.len() % 8 != 0 {
        out.push(0);
    }
    let shoff = out.len() as u64;
    for h in &headers {
        out.extend_from_slice(h);
    }
    let shnum = headers.len() as u16;
    out[0..16].copy_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[40..48].copy_from_slice(&shoff.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[58..60].copy_from_slice(&64u16.to_le_bytes());
    out[60..62].copy_from_slice(&shnum.to_le_bytes());
    out[62..64].copy_from_slice(&(shnum - 1).to_le_bytes());
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    path
}

const BANNER: &[u8] = b"Linux version 6.1.0-test (x@y) #1 SMP\n\0";

#[test]
fn builds_a_profile_from_a_tiny_vmlinux() {
    let dir = tempfile::tempdir().unwrap();
    let mut rodata = vec![0xaa; 32];
    rodata.extend_from_slice(BANNER);
    rodata.extend_from_slice(b"after");
    let btf = sample_btf();
    let elf = tiny_elf(
        &[(".rodata", 0xffffffff82000000, &rodata), (".BTF", 0, &btf)],
        &[],
    );
    let vmlinux = write(dir.path(), "vmlinux-test", &elf);
    let map = write(
        dir.path(),
        "System.map-test",
        b"ffffffff81000000 T _text\nffffffff82000020 D linux_banner\nffffffff82a1aa40 D init_task\nffffffff83000000 D runqueues\nffffffff82a10000 D init_top_pgt\n",
    );
    let inputs = BuildInputs {
        vmlinux: &vmlinux,
        system_map: Some(&map),
    };
    let isf = build_profile(&inputs).unwrap();
    let linux = isf.metadata.linux.as_ref().unwrap();
    assert_eq!(linux.symbols[0].kind.as_deref(), Some("system-map"));
    assert_eq!(linux.symbols[0].name, "System.map-test");
    assert_eq!(linux.types[0].kind, None);
    assert_eq!(linux.types[0].name, "vmlinux-test");
    assert_eq!(linux.types[0].hash_value, hex::encode(Sha256::digest(&elf)));
    assert_eq!(isf.metadata.producer.as_ref().unwrap().name, "furnace");

    let banner = &isf.symbols["linux_banner"];
    assert_eq!(banner.address, 0xffffffff82000020);
    assert_eq!(
        banner.type_,
        Some(TypeRef::Array {
            count: BANNER.len() as u64,
            subtype: Box::new(TypeRef::Base {
                name: "char".into()
            })
        })
    );
    // init_task's struct is not in this BTF, so it stays untyped.
    assert_eq!(isf.symbols["init_task"].type_, None);
    assert_eq!(
        isf.symbols["runqueues"].type_,
        Some(TypeRef::Struct {
            name: "task".into()
        })
    );
    assert!(matches!(
        isf.symbols["init_top_pgt"].type_,
        Some(TypeRef::Array { count: 512, .. })
    ));

    // Round trip through JSON and the reader.
    let json = serde_json::to_vec(&isf).unwrap();
    assert_eq!(
        json,
        serde_json::to_vec(&build_profile(&inputs).unwrap()).unwrap()
    );
    let p = Profile::from_json(Path::new("p.json"), &json).unwrap();
    assert_eq!(p.banner().unwrap(), BANNER.strip_suffix(b"\0").unwrap());
    assert_eq!(p.symbol("_text").unwrap(), 0xffffffff81000000);

    // Without System.map and without .symtab there are no symbols to use.
    let err = build_profile(&BuildInputs {
        vmlinux: &vmlinux,
        system_map: None,
    })
    .unwrap_err();
    assert!(
        matches!(err, VmiError::BadProfile { .. }) && err.to_string().contains(".symtab"),
        "{err}"
    );

    // A bad System.map names itself.
    let bad_map = write(
        dir.path(),
        "System.map-bad",
        b"ffffffff81000000 T _text\ngarbage\n",
    );
    let err = build_profile(&BuildInputs {
        vmlinux: &vmlinux,
        system_map: Some(&bad_map),
    })
    .unwrap_err();
    match err {
        VmiError::BadProfile { path, reason } => {
            assert_eq!(path, bad_map);
            assert!(reason.contains("line 2"), "{reason}");
        }
        other => panic!("{other}"),
    }
}

fn bad_profile_reason(vmlinux: &Path) -> String {
    match build_profile(&BuildInputs {
        vmlinux,
        system_map: None,
    }) {
        Err(VmiError::BadProfile { path, reason }) => {
            assert_eq!(path, vmlinux);
            reason
        }
        other => panic!("expected BadProfile, got {other:?}"),
    }
}

#[test]
fn unusable_vmlinux_files_are_bad_profiles() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("nope");
    let err = build_profile(&BuildInputs {
        vmlinux: &missing,
        system_map: None,
    })
    .unwrap_err();
    assert!(matches!(err, VmiError::Io { .. }), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");

    assert!(bad_profile_reason(dir.path()).contains("not a regular file"));
    assert!(bad_profile_reason(&write(dir.path(), "empty", b"")).contains("empty"));
    let gz = write(dir.path(), "vmlinuz", b"\x1f\x8b\x08\0compressed");
    assert!(bad_profile_reason(&gz).contains("not an ELF file"));
    let elf32 = write(
        dir.path(),
        "elf32",
        b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0",
    );
    assert!(bad_profile_reason(&elf32).contains("64-bit"));
    let mut broken = tiny_elf(&[(".BTF", 0, b"x")], &[]);
    broken.truncate(100);
    assert!(bad_profile_reason(&write(dir.path(), "broken", &broken)).contains("malformed ELF"));

    // An ELF file without BTF (this test binary is one).
    let exe = std::env::current_exe().unwrap();
    let reason = bad_profile_reason(&exe);
    assert_eq!(
        reason,
        "no .BTF section; DWARF-only vmlinux files are not supported yet"
    );

    let garbage_btf = tiny_elf(&[(".BTF", 0, b"\x9f\xeb\x01\0garbage")], &[]);
    let reason = bad_profile_reason(&write(dir.path(), "badbtf", &garbage_btf));
    assert!(reason.contains("malformed BTF"), "{reason}");
}

#[test]
fn symtab_gives_symbols_banner_size_and_catches_a_foreign_system_map() {
    let dir = tempfile::tempdir().unwrap();
    // The symbol's size cuts the banner before its NUL.
    let elf = tiny_elf(
        &[(".rodata", 0x1000, BANNER), (".BTF", 0, &sample_btf())],
        &[
            ("linux_banner", 0x1000, 13),
            ("_text", 0x800, 0),
            ("runqueues", 0x2000, 48),
        ],
    );
    let vmlinux = write(dir.path(), "vmlinux", &elf);
    let isf = build_profile(&BuildInputs {
        vmlinux: &vmlinux,
        system_map: None,
    })
    .unwrap();
    let linux = isf.metadata.linux.as_ref().unwrap();
    assert_eq!(linux.symbols[0].kind.as_deref(), Some("symtab"));
    assert_eq!(linux.symbols[0].hash_value, linux.types[0].hash_value);
    assert_eq!(isf.symbols.len(), 3);
    assert_eq!(isf.symbols["_text"].address, 0x800);
    let p = Profile::from_isf(&vmlinux, isf);
    assert_eq!(p.banner().unwrap(), b"Linux version");

    let map = write(
        dir.path(),
        "System.map",
        b"0000000000000800 T _text\n0000000000001001 D linux_banner\n",
    );
    let err = build_profile(&BuildInputs {
        vmlinux: &vmlinux,
        system_map: Some(&map),
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("does not belong to this vmlinux"),
        "{err}"
    );
}
