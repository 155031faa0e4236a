//! Kubernetes for real, as test infrastructure: the control plane built from
//! its Go modules, on loopback, with locally made certificates.

pub mod control_plane;
pub mod pki;

pub use control_plane::{ControlPlane, Credentials};
