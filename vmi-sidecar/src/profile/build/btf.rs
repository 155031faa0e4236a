//! BTF (the `.BTF` section of a vmlinux) to ISF `base_types`, `user_types`
//! and `enums`.
//!
//! Errors are plain reasons; the caller wraps them in
//! [`crate::error::VmiError::BadProfile`] with the file's path.

use crate::profile::isf::{BaseType, EnumType, Field, TypeRef, UserType};
use btf_rs::{Btf, BtfType, Type};
use fallible_iterator::FallibleIterator;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// How many typedef/qualifier hops or nested pointer/array levels a type
/// reference may take. Real kernels need a handful; the bound only stops
/// malformed BTF with reference cycles.
const MAX_DEPTH: u32 = 64;

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_HEADER_LEN: usize = 24;

/// The ISF type tables built from one BTF blob.
#[derive(Debug, Default)]
pub(crate) struct Converted {
    pub base_types: BTreeMap<String, BaseType>,
    pub user_types: BTreeMap<String, UserType>,
    pub enums: BTreeMap<String, EnumType>,
    /// BTF `VAR`s (in kernels: per-CPU variables), name to type, to type
    /// the symbols of the same name.
    pub vars: BTreeMap<String, TypeRef>,
}

/// Converts a raw BTF blob.
pub(crate) fn convert(bytes: &[u8]) -> Result<Converted, String> {
    check_header(bytes)?;
    let btf = Btf::from_bytes(bytes).map_err(|e| format!("malformed BTF: {e}"))?;
    let mut types = Vec::new();
    let mut iter = btf.type_iter();
    while let Some(t) = iter.next().map_err(|e| format!("malformed BTF: {e}"))? {
        types.push(t);
    }
    if types.first() != Some(&Type::Void) {
        return Err("malformed BTF: type 0 is not void".into());
    }
    let mut names = Vec::with_capacity(types.len());
    for t in &types {
        names.push(type_name(&btf, t)?);
    }
    Converter::new(&btf, &types, &names).run()
}

/// Checks what `btf_rs` trusts: with section bounds past the end of the data
/// its string reader would never finish.
fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < BTF_HEADER_LEN {
        return Err(format!(
            "malformed BTF: {} bytes is too short for a BTF header",
            bytes.len()
        ));
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
    if magic == BTF_MAGIC.swap_bytes() {
        return Err("big-endian BTF is not supported".into());
    }
    if magic != BTF_MAGIC {
        return Err(format!("malformed BTF: bad magic {magic:#06x}"));
    }
    if bytes[2] != 1 {
        return Err(format!("unsupported BTF version {}", bytes[2]));
    }
    let hdr_len = u64::from(u32_at(4));
    if hdr_len < BTF_HEADER_LEN as u64 {
        return Err(format!("malformed BTF: header length {hdr_len}"));
    }
    for (what, off, len) in [
        ("type", u32_at(8), u32_at(12)),
        ("string", u32_at(16), u32_at(20)),
    ] {
        let end = hdr_len + u64::from(off) + u64::from(len);
        if end > bytes.len() as u64 {
            return Err(format!(
                "malformed BTF: the {what} section ends at byte {end}, past the end of the {}-byte .BTF section",
                bytes.len()
            ));
        }
    }
    Ok(())
}

/// The name of a type, `""` for anonymous ones and kinds without names.
fn type_name(btf: &Btf, t: &Type) -> Result<String, String> {
    match t.as_btf_type() {
        Some(bt) if bt.get_name_offset().is_some() => btf
            .resolve_name(bt)
            .map_err(|e| format!("malformed BTF: type name: {e}")),
        _ => Ok(String::new()),
    }
}

/// Bitfield placement in ISF terms: the byte offset of the storage unit (the
/// member's base type, `unit_size` bytes) and the bit position inside it.
///
/// `bit_offset` is the member's offset in bits from the start of the struct,
/// `bit_length` its width. The unit is aligned down to its own size, which is
/// what the compiler does for naturally aligned units; when the field would
/// then spill out of the unit (packed structs) it falls back to the enclosing
/// byte.
pub(crate) fn bitfield_location(bit_offset: u32, bit_length: u32, unit_size: u64) -> (u64, u32) {
    let byte = u64::from(bit_offset / 8);
    if let Some(units) = byte.checked_div(unit_size) {
        let offset = units * unit_size;
        // offset * 8 <= bit_offset, so neither this nor the sum overflows.
        let position = u64::from(bit_offset) - offset * 8;
        if position + u64::from(bit_length) <= unit_size.saturating_mul(8) {
            if let Ok(position) = u32::try_from(position) {
                return (offset, position);
            }
        }
    }
    (byte, bit_offset % 8)
}

/// The conventional name of the integer base type with this size and
/// signedness, used for enum bases.
fn preferred_int_name(size: u64, signed: bool) -> Option<&'static str> {
    Some(match (size, signed) {
        (1, true) => "signed char",
        (1, false) => "unsigned char",
        (2, true) => "short int",
        (2, false) => "short unsigned int",
        (4, true) => "int",
        (4, false) => "unsigned int",
        (8, true) => "long int",
        (8, false) => "long unsigned int",
        _ => return None,
    })
}

fn base(size: u64, signed: bool, kind: &str) -> BaseType {
    BaseType {
        size,
        signed,
        kind: kind.to_owned(),
        endian: "little".to_owned(),
    }
}

struct Converter<'a> {
    btf: &'a Btf,
    types: &'a [Type],
    names: &'a [String],
    /// ISF name of each struct, union, enum and forward declaration, by id.
    isf_names: Vec<Option<String>>,
    /// For every user-type name: is it a union?
    user_is_union: HashMap<String, bool>,
}

impl<'a> Converter<'a> {
    fn new(btf: &'a Btf, types: &'a [Type], names: &'a [String]) -> Self {
        Converter {
            btf,
            types,
            names,
            isf_names: vec![None; types.len()],
            user_is_union: HashMap::new(),
        }
    }

    fn run(mut self) -> Result<Converted, String> {
        let mut out = Converted {
            base_types: self.base_types(),
            ..Converted::default()
        };
        let (user_winners, enum_winners) = self.assign_names();

        for &id in &user_winners {
            let (name, ut) = self.user_type(id)?;
            out.user_types.insert(name, ut);
        }
        // Forward declarations never defined: an empty type keeps every
        // reference to them resolvable.
        for (id, t) in self.types.iter().enumerate() {
            if let (Type::Fwd(f), Some(name)) = (t, &self.isf_names[id]) {
                out.user_types
                    .entry(name.clone())
                    .or_insert_with(|| UserType {
                        kind: if f.is_union() { "union" } else { "struct" }.to_owned(),
                        size: 0,
                        fields: BTreeMap::new(),
                    });
            }
        }
        for &id in &enum_winners {
            let (name, et) = self.enum_type(id, &mut out.base_types);
            out.enums.insert(name, et);
        }
        for (id, t) in self.types.iter().enumerate() {
            if let Type::Var(v) = t {
                let name = &self.names[id];
                if name.is_empty() || out.vars.contains_key(name) {
                    continue;
                }
                let ty = self.type_ref(type_id(v)?, 0)?;
                out.vars.insert(name.clone(), ty);
            }
        }
        Ok(out)
    }

    fn base_types(&self) -> BTreeMap<String, BaseType> {
        let mut bases = BTreeMap::new();
        for (id, t) in self.types.iter().enumerate() {
            let name = &self.names[id];
            if name.is_empty() {
                continue;
            }
            let bt = match t {
                Type::Int(i) => {
                    let size = i.size() as u64;
                    let kind = if i.is_bool() {
                        "bool"
                    } else if i.is_char()
                        || (size == 1
                            && matches!(name.as_str(), "char" | "signed char" | "unsigned char"))
                    {
                        "char"
                    } else {
                        "int"
                    };
                    base(size, i.is_signed(), kind)
                }
                Type::Float(f) => base(f.size() as u64, true, "float"),
                _ => continue,
            };
            bases.entry(name.clone()).or_insert(bt);
        }
        bases.insert("void".into(), base(0, false, "void"));
        bases.insert("pointer".into(), base(8, false, "int"));
        bases
    }

    /// Names every struct, union and enum; returns the ids whose definitions
    /// are emitted (one per name), in id order.
    fn assign_names(&mut self) -> (Vec<u32>, Vec<u32>) {
        // Per name: the chosen id and its (size, member count). A later
        // definition replaces it only when strictly larger, so among equals
        // the first one defined wins.
        let mut users: HashMap<String, (u32, (usize, usize))> = HashMap::new();
        let mut enums: HashMap<String, (u32, (usize, usize))> = HashMap::new();
        let mut anon_users = Vec::new();
        let mut anon_enums = Vec::new();
        for (id, t) in self.types.iter().enumerate() {
            let id = id as u32;
            let name = &self.names[id as usize];
            let (table, anon, key) = match t {
                Type::Struct(s) | Type::Union(s) => {
                    (&mut users, &mut anon_users, (s.size(), s.members.len()))
                }
                Type::Enum(e) => (&mut enums, &mut anon_enums, (e.size(), e.members.len())),
                Type::Enum64(e) => (&mut enums, &mut anon_enums, (e.size(), e.members.len())),
                Type::Fwd(_) if !name.is_empty() => {
                    self.isf_names[id as usize] = Some(name.clone());
                    continue;
                }
                _ => continue,
            };
            if name.is_empty() {
                let anon_name = self.anonymous_name(id, t);
                self.isf_names[id as usize] = Some(anon_name);
                anon.push(id);
                continue;
            }
            self.isf_names[id as usize] = Some(name.clone());
            match table.get_mut(name) {
                Some(best) if key > best.1 => *best = (id, key),
                Some(_) => {}
                None => {
                    table.insert(name.clone(), (id, key));
                }
            }
        }
        let mut user_ids: Vec<u32> = users.values().map(|&(id, _)| id).collect();
        user_ids.extend(anon_users);
        user_ids.sort_unstable();
        let mut enum_ids: Vec<u32> = enums.values().map(|&(id, _)| id).collect();
        enum_ids.extend(anon_enums);
        enum_ids.sort_unstable();
        for &id in &user_ids {
            if let Some(name) = &self.isf_names[id as usize] {
                let is_union = matches!(self.types[id as usize], Type::Union(_));
                self.user_is_union.insert(name.clone(), is_union);
            }
        }
        (user_ids, enum_ids)
    }

    /// `unnamed_<16 hex>`: a hash of the type's id and definition, so stable
    /// for one vmlinux and unlike any other anonymous type's name.
    fn anonymous_name(&self, id: u32, t: &Type) -> String {
        let mut h = Sha256::new();
        h.update(id.to_le_bytes());
        h.update(format!("{t:?}").as_bytes());
        let digest = h.finalize();
        format!("unnamed_{}", hex::encode(&digest[..8]))
    }

    fn user_ref(&self, name: &str, fwd_is_union: bool) -> TypeRef {
        let is_union = self
            .user_is_union
            .get(name)
            .copied()
            .unwrap_or(fwd_is_union);
        let name = name.to_owned();
        if is_union {
            TypeRef::Union { name }
        } else {
            TypeRef::Struct { name }
        }
    }

    fn get(&self, id: u32) -> Result<&Type, String> {
        self.types
            .get(id as usize)
            .ok_or_else(|| format!("malformed BTF: reference to type {id}, which does not exist"))
    }

    fn isf_name(&self, id: u32) -> Result<&str, String> {
        self.isf_names
            .get(id as usize)
            .and_then(|n| n.as_deref())
            .ok_or_else(|| format!("malformed BTF: type {id} has no name"))
    }

    /// The ISF reference for BTF type `id`, with typedefs and qualifiers
    /// looked through.
    fn type_ref(&self, mut id: u32, depth: u32) -> Result<TypeRef, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "malformed BTF: type {id} nests too deeply (a cycle?)"
            ));
        }
        for _ in 0..MAX_DEPTH {
            let t = self.get(id)?;
            return Ok(match t {
                Type::Void => TypeRef::Base {
                    name: "void".into(),
                },
                Type::Int(_) | Type::Float(_) => {
                    let name = &self.names[id as usize];
                    if name.is_empty() {
                        return Err(format!("malformed BTF: base type {id} has no name"));
                    }
                    TypeRef::Base { name: name.clone() }
                }
                Type::Ptr(p) => TypeRef::Pointer {
                    subtype: Box::new(self.type_ref(type_id(p)?, depth + 1)?),
                },
                Type::Array(a) => TypeRef::Array {
                    count: a.len() as u64,
                    subtype: Box::new(self.type_ref(type_id(a)?, depth + 1)?),
                },
                Type::Struct(_) => self.user_ref(self.isf_name(id)?, false),
                Type::Union(_) => self.user_ref(self.isf_name(id)?, true),
                Type::Fwd(f) => self.user_ref(self.isf_name(id)?, f.is_union()),
                Type::Enum(_) | Type::Enum64(_) => TypeRef::Enum {
                    name: self.isf_name(id)?.to_owned(),
                },
                Type::FuncProto(_) | Type::Func(_) => TypeRef::Function,
                Type::Typedef(x) => {
                    id = type_id(x)?;
                    continue;
                }
                Type::Volatile(x) | Type::Const(x) | Type::Restrict(x) => {
                    id = type_id(x)?;
                    continue;
                }
                Type::TypeTag(x) => {
                    id = type_id(x)?;
                    continue;
                }
                other => {
                    return Err(format!(
                        "malformed BTF: type {id} is a {} used as a value type",
                        other.name()
                    ))
                }
            });
        }
        Err(format!(
            "malformed BTF: typedef chain at type {id} is too long (a cycle?)"
        ))
    }

    /// Size of the integer or enum a bitfield is declared with, 0 if it is
    /// something else.
    fn unit_size(&self, mut id: u32) -> u64 {
        for _ in 0..MAX_DEPTH {
            match self.types.get(id as usize) {
                Some(Type::Int(i)) => return i.size() as u64,
                Some(Type::Enum(e)) => return e.size() as u64,
                Some(Type::Enum64(e)) => return e.size() as u64,
                Some(Type::Typedef(x)) => id = x.get_type_id().unwrap_or(0),
                Some(Type::Volatile(x) | Type::Const(x) | Type::Restrict(x)) => {
                    id = x.get_type_id().unwrap_or(0)
                }
                Some(Type::TypeTag(x)) => id = x.get_type_id().unwrap_or(0),
                _ => return 0,
            }
        }
        0
    }

    fn user_type(&self, id: u32) -> Result<(String, UserType), String> {
        let (s, kind) = match self.get(id)? {
            Type::Struct(s) => (s, "struct"),
            Type::Union(s) => (s, "union"),
            _ => return Err(format!("internal: type {id} is not a struct or union")),
        };
        let name = self.isf_name(id)?.to_owned();
        let mut fields = BTreeMap::new();
        for m in &s.members {
            let member_type = type_id(m)?;
            let ty = self.type_ref(member_type, 0)?;
            let bit_offset = m.bit_offset();
            let (offset, ty) = match m.bitfield_size() {
                Some(len) if len > 0 => {
                    let (offset, pos) =
                        bitfield_location(bit_offset, len, self.unit_size(member_type));
                    let ty = TypeRef::Bitfield {
                        bit_position: pos,
                        bit_length: len,
                        type_: Box::new(ty),
                    };
                    (offset, ty)
                }
                _ => (u64::from(bit_offset / 8), ty),
            };
            let member_name = self
                .btf
                .resolve_name(m)
                .map_err(|e| format!("malformed BTF: member of {name}: {e}"))?;
            let (field_name, anonymous) = if member_name.is_empty() {
                let anonymous = matches!(ty, TypeRef::Struct { .. } | TypeRef::Union { .. });
                let base = format!("unnamed_field_{offset:x}");
                // Several anonymous members can share an offset (in a union).
                let mut candidate = base.clone();
                let mut n = 1;
                while fields.contains_key(&candidate) {
                    candidate = format!("{base}_{n}");
                    n += 1;
                }
                (candidate, anonymous)
            } else {
                (member_name, false)
            };
            fields.entry(field_name).or_insert(Field {
                offset,
                type_: ty,
                anonymous,
            });
        }
        Ok((
            name,
            UserType {
                kind: kind.to_owned(),
                size: s.size() as u64,
                fields,
            },
        ))
    }

    fn enum_type(&self, id: u32, bases: &mut BTreeMap<String, BaseType>) -> (String, EnumType) {
        let name = self.isf_names[id as usize].clone().unwrap_or_default();
        let mut constants = BTreeMap::new();
        let (size, signed) = match &self.types[id as usize] {
            Type::Enum(e) => {
                for m in &e.members {
                    let v = if e.is_signed() {
                        i64::from(m.val() as i32)
                    } else {
                        i64::from(m.val())
                    };
                    if let Ok(n) = self.btf.resolve_name(m) {
                        constants.entry(n).or_insert(v);
                    }
                }
                (e.size() as u64, e.is_signed())
            }
            Type::Enum64(e) => {
                for m in &e.members {
                    // ISF constants are i64: unsigned values above i64::MAX wrap.
                    if let Ok(n) = self.btf.resolve_name(m) {
                        constants.entry(n).or_insert(m.val() as i64);
                    }
                }
                (e.size() as u64, e.is_signed())
            }
            _ => (0, false),
        };
        let base = enum_base(bases, size, signed);
        (
            name,
            EnumType {
                size,
                base,
                constants,
            },
        )
    }
}

/// Picks (or, failing all else, adds) the base type an enum is stored as.
fn enum_base(bases: &mut BTreeMap<String, BaseType>, size: u64, signed: bool) -> String {
    let fits = |b: &BaseType| b.size == size && b.signed == signed && b.kind == "int";
    if let Some(p) = preferred_int_name(size, signed) {
        if bases.get(p).is_some_and(fits) {
            return p.to_owned();
        }
    }
    if let Some((name, _)) = bases.iter().find(|(_, b)| fits(b)) {
        return name.clone();
    }
    let name = preferred_int_name(size, signed)
        .filter(|p| !bases.contains_key(*p))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("enum_base_{size}_{}", if signed { "s" } else { "u" }));
    bases
        .entry(name.clone())
        .or_insert_with(|| base(size, signed, "int"));
    name
}

fn type_id(t: &dyn BtfType) -> Result<u32, String> {
    t.get_type_id()
        .ok_or_else(|| "malformed BTF: a type lacks its referenced type".to_owned())
}
