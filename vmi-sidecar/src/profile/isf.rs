//! The Volatility 3 Intermediate Symbol Format (ISF), schema 6.2.0: the
//! serde model shared by the profile builder (writer) and [`super::Profile`]
//! (reader). Field names and `kind` spellings follow Volatility's JSON schema,
//! which rejects unknown keys, so nothing here may add one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const ISF_FORMAT: &str = "6.2.0";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Isf {
    pub metadata: Metadata,
    pub base_types: BTreeMap<String, BaseType>,
    pub user_types: BTreeMap<String, UserType>,
    pub enums: BTreeMap<String, EnumType>,
    pub symbols: BTreeMap<String, Symbol>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<Producer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux: Option<LinuxSources>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Producer {
    pub name: String,
    pub version: String,
}

/// The files a Linux profile was built from, with their hashes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LinuxSources {
    pub symbols: Vec<SourceFile>,
    pub types: Vec<SourceFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceFile {
    /// `dwarf`, `symtab` or `system-map`; absent for BTF, which the schema has no name for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    pub hash_type: String,
    pub hash_value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseType {
    pub size: u64,
    pub signed: bool,
    /// `void`, `int`, `float`, `char` or `bool`.
    pub kind: String,
    pub endian: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserType {
    /// `struct` or `union`.
    pub kind: String,
    pub size: u64,
    pub fields: BTreeMap<String, Field>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub offset: u64,
    #[serde(rename = "type")]
    pub type_: TypeRef,
    /// An unnamed struct or union member whose fields belong to the parent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymous: bool,
}

/// A reference to a type, as it appears in fields and symbols.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TypeRef {
    Base {
        name: String,
    },
    Pointer {
        subtype: Box<TypeRef>,
    },
    Array {
        count: u64,
        subtype: Box<TypeRef>,
    },
    Struct {
        name: String,
    },
    Union {
        name: String,
    },
    Enum {
        name: String,
    },
    Function,
    Bitfield {
        bit_position: u32,
        bit_length: u32,
        #[serde(rename = "type")]
        type_: Box<TypeRef>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnumType {
    pub size: u64,
    /// Name of the base type with the enum's size and signedness.
    pub base: String,
    pub constants: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symbol {
    pub address: u64,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<TypeRef>,
    /// The symbol's bytes, standard padded base64 (used for `linux_banner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constant_data: Option<String>,
}
