//! Unit tests of the profile builder on small synthetic inputs: a BTF blob
//! and an ELF file assembled here byte by byte.

use super::btf::{bitfield_location, convert};
use super::symbols::parse_system_map;
use super::*;
use crate::profile::isf::{BaseType, TypeRef, UserType};
use crate::profile::Profile;
use std::io::Write;

// BTF kinds and int encodings (include/uapi/linux/btf.h).
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const CONST: u32 = 10;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const SIGNED: u32 = 1;
const BOOL: u32 = 4;

/// A minimal BTF writer: types get ids 1, 2, ... in call order.
#[derive(Default)]
struct BtfWriter {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl BtfWriter {
    fn new() -> Self {
        BtfWriter {
            types: Vec::new(),
            strings: vec![0],
        }
    }

    fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    fn head(&mut self, name: &str, kind: u32, kind_flag: bool, vlen: u32, size_or_type: u32) {
        let name = self.str(name);
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        self.words(&[name, info, size_or_type]);
    }

    fn int(&mut self, name: &str, size: u32, encoding: u32) {
        self.head(name, INT, false, 0, size);
        self.words(&[(encoding << 24) | (size * 8)]);
    }

    fn reference(&mut self, kind: u32, name: &str, target: u32) {
        self.head(name, kind, false, 0, target);
    }

    fn array(&mut self, elem: u32, index: u32, count: u32) {
        self.head("", ARRAY, false, 0, 0);
        self.words(&[elem, index, count]);
    }

    /// Members are (name, type, bit offset, bitfield size).
    fn composite(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32, u32)]) {
        let kind_flag = members.iter().any(|m| m.3 > 0);
        self.head(name, kind, kind_flag, members.len() as u32, size);
        for &(m, ty, bit_off, bits) in members {
            let m = self.str(m);
            let off = if kind_flag {
                (bits << 24) | bit_off
            } else {
                bit_off
            };
            self.words(&[m, ty, off]);
        }
    }

    fn enumeration(&mut self, name: &str, signed: bool, values: &[(&str, u32)]) {
        self.head(name, ENUM, signed, values.len() as u32, 4);
        for &(n, v) in values {
            let n = self.str(n);
            self.words(&[n, v]);
        }
    }

    fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        let type_len = self.types.len() as u32;
        let str_len = self.strings.len() as u32;
        for w in [24, 0, type_len, type_len, str_len] {
            out.extend_from_slice(&u32::to_le_bytes(w));
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A small kernel-like type graph exercising every conversion rule.
fn sample_btf() -> Vec<u8> {
    let mut w = BtfWriter::new();
    w.int("int", 4, SIGNED); // 1
    w.int("unsigned int", 4, 0); // 2
    w.int("char", 1, SIGNED); // 3
    w.reference(PTR, "", 5); // 4
    w.composite(
        STRUCT,
        "list_head",
        16,
        &[("next", 4, 0, 0), ("prev", 4, 64, 0)],
    ); // 5
    w.composite(
        STRUCT,
        "task",
        48,
        &[
            ("pid", 8, 0, 0),
            ("flags", 2, 32, 3),
            ("more", 2, 35, 5),
            ("", 9, 64, 0),
            ("comm", 10, 128, 0),
            ("tasks", 5, 256, 0),
        ],
    ); // 6
    w.composite(STRUCT, "list_head", 0, &[]); // 7: a smaller duplicate
    w.reference(TYPEDEF, "pid_t", 1); // 8
    w.composite(UNION, "", 8, &[("a", 1, 0, 0), ("b", 4, 0, 0)]); // 9
    w.array(3, 1, 16); // 10
    w.enumeration("state", true, &[("RUNNING", 0), ("DEAD", u32::MAX)]); // 11
    w.reference(FWD, "opaque", 0); // 12
    w.reference(PTR, "", 12); // 13
    w.composite(
        STRUCT,
        "holder",
        24,
        &[
            ("o", 13, 0, 0),
            ("e", 11, 64, 0),
            ("c", 15, 96, 0),
            ("fnp", 18, 128, 0),
        ],
    ); // 14
    w.reference(CONST, "", 1); // 15
    w.head("runqueues", VAR, false, 0, 6); // 16
    w.words(&[1]);
    w.head("", FUNC_PROTO, false, 0, 1); // 17
    w.reference(PTR, "", 17); // 18
    w.int("_Bool", 1, BOOL); // 19
    w.enumeration("", false, &[("X", 7)]); // 20
                                           // Two anonymous structs at the same offset of a union.
    w.composite(STRUCT, "", 4, &[("x", 1, 0, 0)]); // 21
    w.composite(STRUCT, "", 4, &[("y", 1, 0, 0)]); // 22
    w.composite(UNION, "pair", 4, &[("", 21, 0, 0), ("", 22, 0, 0)]); // 23
    w.finish()
}

fn field_type<'a>(ut: &'a UserType, name: &str) -> &'a TypeRef {
    &ut.fields[name].type_
}

#[test]
fn btf_types_convert_to_isf() {
    let c = convert(&sample_btf()).unwrap();
    assert_eq!(
        c.base_types["int"],
        BaseType {
            size: 4,
            signed: true,
            kind: "int".into(),
            endian: "little".into()
        }
    );
    assert_eq!(c.base_types["char"].kind, "char");
    assert_eq!(c.base_types["_Bool"].kind, "bool");
    assert_eq!(c.base_types["void"].size, 0);
    assert_eq!(c.base_types["pointer"].size, 8);

    // The larger list_head wins over the later empty one.
    let lh = &c.user_types["list_head"];
    assert_eq!(
        (lh.kind.as_str(), lh.size, lh.fields.len()),
        ("struct", 16, 2)
    );
    assert_eq!(
        field_type(lh, "prev"),
        &TypeRef::Pointer {
            subtype: Box::new(TypeRef::Struct {
                name: "list_head".into()
            })
        }
    );

    let task = &c.user_types["task"];
    assert_eq!(task.size, 48);
    // Typedefs are looked through.
    assert_eq!(
        field_type(task, "pid"),
        &TypeRef::Base { name: "int".into() }
    );
    assert_eq!(task.fields["flags"].offset, 4);
    assert_eq!(
        field_type(task, "more"),
        &TypeRef::Bitfield {
            bit_position: 3,
            bit_length: 5,
            type_: Box::new(TypeRef::Base {
                name: "unsigned int".into()
            })
        }
    );
    assert_eq!(
        field_type(task, "comm"),
        &TypeRef::Array {
            count: 16,
            subtype: Box::new(TypeRef::Base {
                name: "char".into()
            })
        }
    );
    let anon = &task.fields["unnamed_field_8"];
    assert!(anon.anonymous);
    let TypeRef::Union { name: union_name } = &anon.type_ else {
        panic!("anonymous member is not a union: {:?}", anon.type_)
    };
    assert!(
        union_name.starts_with("unnamed_") && union_name.len() == 24,
        "{union_name}"
    );
    assert_eq!(c.user_types[union_name].kind, "union");

    // Enums: signed values, the base of the right size and sign.
    assert_eq!(c.enums["state"].constants["DEAD"], -1);
    assert_eq!(c.enums["state"].base, "int");
    let anon_enum = c.enums.keys().find(|k| k.starts_with("unnamed_")).unwrap();
    assert_eq!(c.enums[anon_enum].constants["X"], 7);
    assert_eq!(c.enums[anon_enum].base, "unsigned int");

    let holder = &c.user_types["holder"];
    assert_eq!(
        field_type(holder, "e"),
        &TypeRef::Enum {
            name: "state".into()
        }
    );
    assert_eq!(
        field_type(holder, "c"),
        &TypeRef::Base { name: "int".into() }
    );
    assert_eq!(
        field_type(holder, "fnp"),
        &TypeRef::Pointer {
            subtype: Box::new(TypeRef::Function)
        }
    );
    // A forward declaration without a definition still resolves.
    assert_eq!(
        field_type(holder, "o"),
        &TypeRef::Pointer {
            subtype: Box::new(TypeRef::Struct {
                name: "opaque".into()
            })
        }
    );
    assert_eq!(c.user_types["opaque"].size, 0);

    // Anonymous members sharing an offset get distinct names.
    let pair = &c.user_types["pair"];
    assert!(pair.fields.contains_key("unnamed_field_0"));
    assert!(pair.fields.contains_key("unnamed_field_0_1"));

    assert_eq!(
        c.vars["runqueues"],
        TypeRef::Struct {
            name: "task".into()
        }
    );

    // Every struct, union and enum reference resolves.
    for ut in c.user_types.values() {
        for f in ut.fields.values() {
            assert_resolves(&c, &f.type_);
        }
    }

    // The reader finds members through anonymous unions.
    let isf = Isf {
        metadata: Metadata {
            format: ISF_FORMAT.into(),
            producer: None,
            linux: None,
        },
        base_types: c.base_types.clone(),
        user_types: c.user_types.clone(),
        enums: c.enums.clone(),
        symbols: Default::default(),
    };
    let p = Profile::from_isf(Path::new("t.json"), isf);
    assert_eq!(p.member_offset("task", "b").unwrap(), 8);
    assert_eq!(p.member_offset("pair", "y").unwrap(), 0);
}

fn assert_resolves(c: &btf::Converted, t: &TypeRef) {
    match t {
        TypeRef::Base { name } => assert!(c.base_types.contains_key(name), "{name}"),
        TypeRef::Struct { name } | TypeRef::Union { name } => {
            assert!(c.user_types.contains_key(name), "{name}")
        }
        TypeRef::Enum { name } => assert!(c.enums.contains_key(name), "{name}"),
        TypeRef::Pointer { subtype } | TypeRef::Array { subtype, .. } => {
            assert_resolves(c, subtype)
        }
        TypeRef::Bitfield { type_, .. } => assert_resolves(c, type_),
        TypeRef::Function => {}
    }
}

#[test]
fn conversion_is_deterministic() {
    let a = serde_json::to_string(&convert(&sample_btf()).unwrap().user_types).unwrap();
    let b = serde_json::to_string(&convert(&sample_btf()).unwrap().user_types).unwrap();
    assert_eq!(a, b);
}

#[test]
fn bitfield_offsets() {
    // Aligned down to the unit: bits 32..35 of a 4-byte unit.
    assert_eq!(bitfield_location(32, 3, 4), (4, 0));
    assert_eq!(bitfield_location(35, 5, 4), (4, 3));
    // Byte 5, bit 2, unit of 4: the unit starts at byte 4.
    assert_eq!(bitfield_location(42, 6, 4), (4, 10));
    // 8-byte unit.
    assert_eq!(bitfield_location(70, 2, 8), (8, 6));
    // Spills out of the aligned unit (packed): falls back to the byte.
    assert_eq!(bitfield_location(30, 4, 4), (3, 6));
    // Unknown unit size.
    assert_eq!(bitfield_location(13, 1, 0), (1, 5));
}

#[test]
fn malformed_btf_is_an_error_not_a_hang() {
    let good = sample_btf();
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("truncated", good[..good.len() - 40].to_vec()),
        ("bad magic", [&[0u8, 0][..], &good[2..]].concat()),
    ] {
        let err = convert(&bytes).unwrap_err();
        assert!(err.contains("BTF"), "{what}: {err}");
    }
    // String section claimed to run past the data.
    let mut long = good.clone();
    long[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(convert(&long).unwrap_err().contains("past the end"));

    // A typedef cycle.
    let mut w = BtfWriter::new();
    w.reference(TYPEDEF, "a", 2); // 1
    w.reference(TYPEDEF, "b", 1); // 2
    w.composite(STRUCT, "s", 4, &[("m", 1, 0, 0)]); // 3
    assert!(convert(&w.finish()).unwrap_err().contains("cycle"));

    // A member of a type that does not exist.
    let mut w = BtfWriter::new();
    w.composite(STRUCT, "s", 4, &[("m", 99, 0, 0)]);
    assert!(convert(&w.finish()).unwrap_err().contains("99"));
}

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
