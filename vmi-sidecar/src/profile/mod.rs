//! Kernel profiles in Volatility 3's ISF: building them from a vmlinux
//! ([`build`]) and reading the parts VMI needs ([`Profile`]).

pub mod build;
pub mod isf;

use crate::error::{Result, VmiError};
use base64::Engine;
use isf::{Isf, TypeRef, UserType};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How many structs a member lookup may look into through anonymous members.
const MAX_ANONYMOUS_VISITS: u32 = 256;

/// A loaded ISF profile: symbol addresses (link-time, before KASLR) and type
/// layouts.
pub struct Profile {
    path: PathBuf,
    isf: Isf,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| VmiError::io(format!("reading profile {}", path.display()), e))?;
        Self::from_json(path, &bytes)
    }

    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<Self> {
        let isf: Isf = serde_json::from_slice(bytes).map_err(|e| VmiError::BadProfile {
            path: path.to_owned(),
            reason: format!("not a Volatility ISF JSON profile: {e}"),
        })?;
        Ok(Profile::from_isf(path, isf))
    }

    pub fn from_isf(path: &Path, isf: Isf) -> Self {
        Profile {
            path: path.to_owned(),
            isf,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn isf(&self) -> &Isf {
        &self.isf
    }

    /// Link-time address of `name`.
    pub fn symbol(&self, name: &str) -> Result<u64> {
        self.isf
            .symbols
            .get(name)
            .map(|s| s.address)
            .ok_or_else(|| VmiError::NotFound {
                what: "kernel symbol",
                name: name.to_owned(),
            })
    }

    /// The symbols, for reverse lookups and listing.
    pub fn symbols(&self) -> impl Iterator<Item = (&str, u64)> {
        self.isf
            .symbols
            .iter()
            .map(|(n, s)| (n.as_str(), s.address))
    }

    /// The kernel banner (`linux_banner`) the profile was built for, without
    /// its trailing NUL.
    pub fn banner(&self) -> Option<Vec<u8>> {
        let data = self
            .isf
            .symbols
            .get("linux_banner")?
            .constant_data
            .as_ref()?;
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .ok()?;
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        Some(bytes)
    }

    fn user_type(&self, name: &str) -> Result<&UserType> {
        self.isf
            .user_types
            .get(name)
            .ok_or_else(|| VmiError::NotFound {
                what: "type",
                name: name.to_owned(),
            })
    }

    pub fn struct_size(&self, name: &str) -> Result<u64> {
        Ok(self.user_type(name)?.size)
    }

    /// Byte offset of `member` in `structure`, looking through anonymous
    /// structs and unions the way C does.
    pub fn member_offset(&self, structure: &str, member: &str) -> Result<u64> {
        self.find_member(structure, member)
            .map(|(offset, _)| offset)
            .ok_or_else(|| VmiError::NotFound {
                what: "struct member",
                name: format!("{structure}.{member}"),
            })
    }

    /// Offset and type of `member` in `structure`.
    pub fn member(&self, structure: &str, member: &str) -> Result<(u64, &TypeRef)> {
        self.find_member(structure, member)
            .ok_or_else(|| VmiError::NotFound {
                what: "struct member",
                name: format!("{structure}.{member}"),
            })
    }

    fn find_member(&self, structure: &str, member: &str) -> Option<(u64, &TypeRef)> {
        // Anonymous nesting in the kernel is a few levels deep and a few
        // structs wide; the budget only guards against a malformed profile
        // whose anonymous members refer back to their own struct.
        let mut budget = MAX_ANONYMOUS_VISITS;
        self.find_member_within(structure, member, &mut budget)
    }

    fn find_member_within(
        &self,
        structure: &str,
        member: &str,
        budget: &mut u32,
    ) -> Option<(u64, &TypeRef)> {
        *budget = budget.checked_sub(1)?;
        let fields = &self.isf.user_types.get(structure)?.fields;
        if let Some(field) = fields.get(member).filter(|f| !f.anonymous) {
            return Some((field.offset, &field.type_));
        }
        fields
            .values()
            .filter(|f| f.anonymous)
            .find_map(|f| match &f.type_ {
                TypeRef::Struct { name } | TypeRef::Union { name } => self
                    .find_member_within(name, member, budget)
                    .map(|(offset, ty)| (f.offset.wrapping_add(offset), ty)),
                _ => None,
            })
    }

    /// Offsets of a dotted path such as `module.core_layout.base`.
    pub fn member_path_offset(&self, structure: &str, path: &str) -> Result<u64> {
        let mut current = structure.to_owned();
        let mut total = 0;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (offset, ty) = self.member(&current, part)?;
            total = offset.wrapping_add(total);
            if parts.peek().is_some() {
                current = match ty {
                    TypeRef::Struct { name } | TypeRef::Union { name } => name.clone(),
                    _ => {
                        return Err(VmiError::BadProfile {
                            path: self.path.clone(),
                            reason: format!("{current}.{part} is not a struct or union"),
                        })
                    }
                };
            }
        }
        Ok(total)
    }

    pub fn has_member(&self, structure: &str, member: &str) -> bool {
        self.find_member(structure, member).is_some()
    }

    pub fn enum_constants(&self, name: &str) -> Option<&BTreeMap<String, i64>> {
        self.isf.enums.get(name).map(|e| &e.constants)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"{
      "metadata": {"format": "6.2.0"},
      "base_types": {"int": {"size": 4, "signed": true, "kind": "int", "endian": "little"}},
      "user_types": {
        "task_struct": {"kind": "struct", "size": 64, "fields": {
          "pid": {"offset": 8, "type": {"kind": "base", "name": "int"}},
          "unnamed_field_10": {"offset": 16, "anonymous": true, "type": {"kind": "union", "name": "unnamed_1"}}
        }},
        "unnamed_1": {"kind": "union", "size": 8, "fields": {
          "inner": {"offset": 4, "type": {"kind": "base", "name": "int"}}
        }}
      },
      "enums": {},
      "symbols": {
        "init_task": {"address": 18446744071606217280},
        "linux_banner": {"address": 1, "constant_data": "TGludXggdmVyc2lvbiA2LjEK"}
      }
    }"#;

    #[test]
    fn members_inside_anonymous_unions_are_found() {
        let p = Profile::from_json(Path::new("t.json"), PROFILE.as_bytes()).unwrap();
        assert_eq!(p.member_offset("task_struct", "pid").unwrap(), 8);
        assert_eq!(p.member_offset("task_struct", "inner").unwrap(), 20);
        assert!(matches!(
            p.member_offset("task_struct", "nope"),
            Err(VmiError::NotFound {
                what: "struct member",
                ..
            })
        ));
        assert_eq!(p.symbol("init_task").unwrap(), 0xffffffff82a1aa40);
        assert_eq!(p.banner().unwrap(), b"Linux version 6.1\n");
    }

    #[test]
    fn garbage_is_a_bad_profile() {
        let err = Profile::from_json(Path::new("x.json"), b"{\"metadata\": 3}")
            .err()
            .unwrap();
        assert!(matches!(err, VmiError::BadProfile { .. }), "{err}");
    }
}
