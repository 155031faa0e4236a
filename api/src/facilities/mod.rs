//! Facilities: the app's one way out, to its tenant's backend, and its
//! storage (docs/facilities.md). [`Facilities`] is the app's client;
//! [`keys`], [`seal`] and [`frame`] are shared with the relay and the
//! backend library (`furnace-fac`).

mod client;
pub mod frame;
pub mod keys;
pub mod seal;

pub use client::{Endpoint, Facilities, Message, MessageKind, Storage};
pub use keys::{Keypair, PrivateKey, PublicKey};

/// Where the runtime puts the app's facilities socket, its private key and
/// the backend's public key inside the app's partition.
pub const DEFAULT_SOCKET: &str = "/run/furnace/fac.sock";
pub const DEFAULT_APP_KEY: &str = "/run/furnace/app.key";
pub const DEFAULT_BACKEND_KEY: &str = "/run/furnace/backend.pub";
/// Overrides [`DEFAULT_BACKEND_KEY`]: the tenant can pin the backend in the
/// image instead of trusting the provider to pass it on.
pub const BACKEND_KEY_ENV: &str = "FURNACE_BACKEND_KEY";
