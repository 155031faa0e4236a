//! The `furnace` command line, as a library so end-to-end tests share its
//! guest fixture and ground-truth parsing instead of re-implementing them.

pub mod facilities;
pub mod guest;
pub mod profile;
pub mod sidecar;
pub mod vmi;
