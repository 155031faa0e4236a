//! The Furnace VMI protocol. The `.proto` files under `proto/` are the source
//! of truth; everything here is generated from them or built on top of them:
//! the wire framing ([`wire`]), typed errors ([`error`]) and the Rust SDK
//! ([`client`]).

/// Generated from `proto/furnace/vmi/v1/*.proto`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/furnace.vmi.v1.rs"));
}

/// Generated from `proto/furnace/fac/v1/facilities.proto`.
pub mod fac {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/furnace.fac.v1.rs"));
    }
}

/// `furnace.vmi.v1` where the generated facilities code looks for it.
#[doc(hidden)]
pub mod vmi {
    pub use crate::v1;
}

/// The ttrpc envelope, generated from `proto/furnace/ttrpc/v1/ttrpc.proto`.
pub mod ttrpc {
    include!(concat!(env!("OUT_DIR"), "/ttrpc.rs"));
}

pub mod admin;
pub mod batch;
pub mod client;
pub mod error;
pub mod events;
pub mod facilities;
pub mod table;
pub mod unix_socket;
pub mod wire;

pub use admin::Admin;
pub use client::{Batch, CallRef, Vmi};
pub use error::ApiError;
pub use events::{Delivery, EventStream};
pub use facilities::Facilities;
pub use v1::{ErrorCode, Module, Process, Symbol, Translation};

/// The compiled `FileDescriptorSet` of every `.proto` here; the Python SDK
/// ships a copy (`api/python/furnace_vmi/descriptors.binpb`).
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.binpb"));

/// The service names on the wire.
pub const VMI_SERVICE: &str = "furnace.vmi.v1.Vmi";
pub const ADMIN_SERVICE: &str = "furnace.vmi.v1.Admin";
