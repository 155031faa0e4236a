//! The facilities partition (docs/facilities.md): the app's one way out.
//!
//! - [`storage`]: per-app storage on the host, under a quota, with atomic puts;
//! - [`relay`]: the per-app relay the shim starts, which forwards sealed
//!   messages between the app's socket and the tenant backend;
//! - [`backend`]: the tenant-side library `furnace backend` is built on;
//! - [`confinement`]: the relay's view of its own confinement, for its log.

pub mod backend;
pub mod confinement;
pub mod relay;
pub mod storage;
mod wire;

/// Taken over when poisoned: one panicking session must not wedge the rest.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
