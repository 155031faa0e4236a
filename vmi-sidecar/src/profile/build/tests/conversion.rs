//! BTF → ISF conversion of the sample blob.

use super::*;

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
