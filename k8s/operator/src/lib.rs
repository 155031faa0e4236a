//! The Furnace operator: it turns each FurnaceApp into one pod under the
//! `furnace` RuntimeClass, on the node of the FurnaceGuest it names, and
//! keeps the FurnaceApp's status (docs/kubernetes.md).
//!
//! The shape is kube-rs's controller-rs: [`reconcile`] is one idempotent
//! pass over one app, tested against a mock API server that checks each
//! request it makes (`reconcile_tests.rs`); the binary wires it to watches,
//! a leader-election Lease and a metrics endpoint.

pub mod metrics;
#[cfg(any(test, feature = "mock-api"))]
pub mod mock_api;
pub mod pod;
pub mod reconcile;
pub mod status;

pub use reconcile::{error_policy, reconcile, Context, Error, FINALIZER, MANAGER};

#[cfg(test)]
mod reconcile_tests;
