//! Furnace VMI: read and control a running Linux guest from outside it.
//!
//! - [`driver`]: where guest memory and control come from (a live QEMU guest,
//!   a snapshot file), as small capability traits;
//! - [`arch`]: amd64 paging;
//! - [`profile`]: Volatility 3 ISF kernel profiles, built from a vmlinux;
//! - [`linux`]: Linux semantics (KASLR, symbols, processes, modules).

pub mod arch;
pub mod driver;
pub mod error;
pub mod linux;
pub mod privsep;
pub mod profile;
pub mod server;

pub use error::{Result, VmiError};
