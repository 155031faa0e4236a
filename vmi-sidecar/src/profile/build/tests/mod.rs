//! Unit tests of the profile builder on small synthetic inputs: a BTF blob
//! (built here) and an ELF file assembled byte by byte (in `vmlinux.rs`).

mod conversion;
mod vmlinux;

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
