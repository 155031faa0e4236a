//! The ISF profile built from the test kernel's BTF agrees with independent
//! tools reading the same files: pahole (from the vmlinux's DWARF) for
//! struct layouts, the System.map text for symbol addresses, and binutils
//! (objcopy, readelf) for the `linux_banner` bytes.
//!
//! Needs `FURNACE_KERNEL_DIR`: a directory holding `vmlinux` and
//! `System.map` (set by `make test`), and pahole (Debian: dwarves) and
//! binutils on PATH.

use furnace_vmi::profile::build::{build_profile, BuildInputs};
use furnace_vmi::profile::isf::TypeRef;
use furnace_vmi::profile::Profile;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

struct Kernel {
    vmlinux: PathBuf,
    system_map: PathBuf,
    profile: Profile,
}

/// The profile is built once and shared by the tests.
fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let dir = furnace_tests::kernel_dir();
        let vmlinux = dir.join("vmlinux");
        let system_map = dir.join("System.map");
        for f in [&vmlinux, &system_map] {
            assert!(
                f.exists(),
                "{} does not exist (FURNACE_KERNEL_DIR={})",
                f.display(),
                dir.display()
            );
        }
        let isf = build_profile(&BuildInputs {
            vmlinux: &vmlinux,
            system_map: Some(&system_map),
        })
        .unwrap_or_else(|e| panic!("building the profile from {}: {e}", vmlinux.display()));
        let profile = Profile::from_isf(Path::new("built-in-test.json"), isf);
        Kernel {
            vmlinux,
            system_map,
            profile,
        }
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (pahole is in Debian's dwarves package, objcopy/readelf in binutils)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("tool output is UTF-8")
}

/// A member as pahole prints it: byte offset, and for bitfields the bit
/// position inside the storage unit at that offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PaholeMember {
    offset: u64,
    bit: Option<u32>,
}

#[derive(Debug)]
struct PaholeStruct {
    size: u64,
    /// Members reachable by name, anonymous structs and unions flattened,
    /// with absolute offsets (pahole prints expanded members that way).
    members: BTreeMap<String, PaholeMember>,
}

/// `struct NAME` from the vmlinux DWARF (`-F dwarf`, so not from the BTF the
/// profile was built from).
fn pahole(vmlinux: &Path, name: &str) -> PaholeStruct {
    let text = run(Command::new("pahole")
        .args(["-F", "dwarf", "-C", name])
        .arg(vmlinux));
    parse_pahole(&text).unwrap_or_else(|| panic!("pahole printed no struct {name}:\n{text}"))
}

fn parse_pahole(text: &str) -> Option<PaholeStruct> {
    // One frame per open `{`; an anonymous frame's members belong to its
    // parent, a named one's do not.
    let mut frames: Vec<Vec<(String, PaholeMember)>> = Vec::new();
    let mut size = None;
    for line in text.lines() {
        let t = line.trim();
        if t.ends_with('{') {
            frames.push(Vec::new());
            continue;
        }
        if frames.len() == 1 {
            if let Some(rest) = t.strip_prefix("/* size: ") {
                size = rest.split(',').next()?.trim().parse().ok();
                continue;
            }
        }
        let Some((decl, comment)) = t.rsplit_once("/*") else {
            if t.starts_with('}') {
                let frame = frames.pop()?;
                if frames.is_empty() {
                    return Some(PaholeStruct {
                        size: size?,
                        members: frame.into_iter().collect(),
                    });
                }
                frames.last_mut()?.extend(frame);
            }
            continue;
        };
        let member = parse_comment(comment);
        let name = member_name(decl);
        if let Some(body) = decl.trim().strip_prefix('}') {
            let frame = frames.pop()?;
            let parent = frames.last_mut()?;
            match member_name(body) {
                Some(name) => parent.extend(member.map(|m| (name, m))),
                None => parent.extend(frame),
            }
        } else if let (Some(name), Some(member)) = (name, member) {
            frames.last_mut()?.push((name, member));
        }
    }
    None
}

/// `/* OFFSET SIZE */` or `/* OFFSET: BIT SIZE */`.
fn parse_comment(comment: &str) -> Option<PaholeMember> {
    let body = comment.trim().strip_suffix("*/")?.trim();
    let mut tokens = body.split_whitespace();
    let first = tokens.next()?;
    Some(match first.strip_suffix(':') {
        Some(offset) => PaholeMember {
            offset: offset.parse().ok()?,
            bit: Some(tokens.next()?.parse().ok()?),
        },
        None => PaholeMember {
            offset: first.parse().ok()?,
            bit: None,
        },
    })
}

/// The declared name in a C member declaration as pahole prints it.
fn member_name(decl: &str) -> Option<String> {
    let decl = strip_attributes(decl.trim().trim_end_matches(';'));
    let decl = decl.trim();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let name = match decl.find("(*") {
        Some(at) => ident(&decl[at + 2..]),
        None => {
            let last = decl.split_whitespace().last()?.trim_start_matches('*');
            ident(last)
        }
    };
    (!name.is_empty()).then_some(name)
}

/// `decl` without its `__attribute__((...))` groups, which pahole puts
/// after the declarator and, for inline struct types, also before it.
fn strip_attributes(decl: &str) -> String {
    let mut out = String::new();
    let mut rest = decl;
    while let Some(at) = rest.find("__attribute__") {
        out.push_str(&rest[..at]);
        rest = &rest[at + "__attribute__".len()..];
        let mut depth = 0;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Members the VMI code relies on; they must be present, not just equal.
const REQUIRED: &[(&str, &[&str])] = &[
    (
        "task_struct",
        &["tasks", "pid", "tgid", "comm", "mm", "real_parent"],
    ),
    ("mm_struct", &["pgd"]),
    ("list_head", &["next", "prev"]),
];

/// Every member pahole shows of these is compared.
const STRUCTS: &[&str] = &[
    "task_struct",
    "mm_struct",
    "list_head",
    "files_struct",
    "fdtable",
    "file",
    "path",
    "dentry",
    "qstr",
    "vm_area_struct",
    "module",
    "cred",
    "nsproxy",
    "uts_namespace",
    "new_utsname",
    "pid_namespace",
];

#[test]
fn struct_layouts_match_pahole() {
    let k = kernel();
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for &name in STRUCTS {
        let expected = pahole(&k.vmlinux, name);
        match k.profile.struct_size(name) {
            Ok(size) if size == expected.size => {}
            got => mismatches.push(format!(
                "sizeof({name}): profile {got:?}, pahole {}",
                expected.size
            )),
        }
        if let Some((_, required)) = REQUIRED.iter().find(|(s, _)| *s == name) {
            for member in *required {
                assert!(
                    expected.members.contains_key(*member),
                    "pahole output for {name} lacks {member}; the parser is out of date: {expected:?}"
                );
            }
        }
        for (member, want) in &expected.members {
            let got = match k.profile.member(name, member) {
                Ok((offset, TypeRef::Bitfield { bit_position, .. })) => PaholeMember {
                    offset,
                    bit: Some(*bit_position),
                },
                Ok((offset, _)) => PaholeMember { offset, bit: None },
                Err(e) => {
                    mismatches.push(format!("{name}.{member}: {e}"));
                    continue;
                }
            };
            compared += 1;
            if got != *want {
                mismatches.push(format!("{name}.{member}: profile {got:?}, pahole {want:?}"));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(compared > 300, "only {compared} members compared");
}

/// System.map's first line for each name.
fn system_map(path: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(path).expect("System.map is readable text");
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [addr, _, name] = parts[..] {
            let addr = u64::from_str_radix(addr, 16).expect("hex address");
            map.entry(name.to_owned()).or_insert(addr);
        }
    }
    map
}

#[test]
fn symbols_match_system_map() {
    let k = kernel();
    let map = system_map(&k.system_map);
    for name in [
        "init_task",
        "init_top_pgt",
        "linux_banner",
        "_text",
        "init_mm",
    ] {
        assert_eq!(
            k.profile.symbol(name).ok(),
            map.get(name).copied(),
            "{name}: profile vs System.map"
        );
    }
    let wrong: Vec<_> = map
        .iter()
        .filter(|(name, &addr)| k.profile.symbol(name).ok() != Some(addr))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "symbols differing from System.map: {wrong:?}"
    );
    assert_eq!(k.profile.symbols().count(), map.len());
}

#[test]
fn banner_matches_rodata() {
    let k = kernel();
    let banner = k
        .profile
        .banner()
        .expect("the profile has linux_banner constant_data");
    assert!(
        banner.starts_with(b"Linux version "),
        "{:?}",
        String::from_utf8_lossy(&banner)
    );

    // .rodata's address from readelf, its bytes from objcopy.
    let sections = run(Command::new("readelf").args(["-S", "-W"]).arg(&k.vmlinux));
    let rodata_addr = sections
        .lines()
        .find_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let at = t.iter().position(|s| *s == ".rodata")?;
            u64::from_str_radix(t.get(at + 2)?, 16).ok()
        })
        .expect("readelf shows .rodata");
    let dir = tempfile::tempdir().unwrap();
    let rodata_file = dir.path().join("rodata.bin");
    run(Command::new("objcopy")
        .args(["-O", "binary", "--only-section=.rodata"])
        .arg(&k.vmlinux)
        .arg(&rodata_file));
    let rodata = std::fs::read(&rodata_file).unwrap();
    let address = k.profile.symbol("linux_banner").unwrap();
    let start = usize::try_from(address - rodata_addr).unwrap();
    assert_eq!(&rodata[start..start + banner.len()], &banner[..]);
    assert_eq!(
        rodata[start + banner.len()],
        0,
        "the banner ends with a NUL"
    );

    // The symbol's type covers exactly the object's st_size bytes.
    let symbols = run(Command::new("readelf").args(["-s", "-W"]).arg(&k.vmlinux));
    let st_size: u64 = symbols
        .lines()
        .find_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t.last() == Some(&"linux_banner"))
                .then(|| t[2].parse().ok())
                .flatten()
        })
        .expect("readelf shows linux_banner");
    let symbol = &k.profile.isf().symbols["linux_banner"];
    match &symbol.type_ {
        Some(TypeRef::Array { count, .. }) => assert_eq!(*count, st_size),
        other => panic!("linux_banner type {other:?}"),
    }
}

#[test]
fn pahole_parser_handles_nesting() {
    let text = "struct qstr {
	union {
		struct {
			u32        hash;                 /*     0     4 */
			u32        len;                  /*     4     4 */
		};                                       /*     0     8 */
		u64                hash_len;             /*     0     8 */
	} __attribute__((__aligned__(8)));               /*     0     8 */
	const unsigned char  *     name;                 /*     8     8 */
	struct {
		int        hidden;                   /*    16     4 */
	} __attribute__((__aligned__(8))) named __attribute__((__aligned__(8))); /*    16     8 */
	long unsigned int  (*fn)(struct file *, long int); /*    24     8 */
	unsigned int               flag:1;         /*    32: 3  4 */
	unsigned int               :0;

	/* size: 40, cachelines: 1, members: 2 */
};
";
    let s = parse_pahole(text).unwrap();
    assert_eq!(s.size, 40);
    let names: Vec<&str> = s.members.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["flag", "fn", "hash", "hash_len", "len", "name", "named"]
    );
    assert_eq!(s.members["len"].offset, 4);
    assert_eq!(s.members["named"].offset, 16);
    assert_eq!(
        s.members["flag"],
        PaholeMember {
            offset: 32,
            bit: Some(3)
        }
    );
}
