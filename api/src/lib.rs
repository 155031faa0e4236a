//! The Furnace VMI protocol. The `.proto` files under `proto/` are the source
//! of truth; everything here is generated from them or built on top of them.

/// Generated from `proto/furnace/vmi/v1/*.proto`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/furnace.vmi.v1.rs"));
}

pub use v1::{ErrorCode, Module, Process, Symbol, Translation};
