//! CPU architectures. Only amd64 today.

pub mod amd64;
pub mod emulate;
#[cfg(test)]
pub(crate) mod page_store;
