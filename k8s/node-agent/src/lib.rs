//! The Furnace node agent: one per node (a DaemonSet), it runs the VMI
//! sidecar of every FurnaceGuest whose `node` is its own, restarts it when
//! it exits, stops it when the guest is deleted, and writes `SidecarReady`
//! and `Attached` on the guest (docs/kubernetes.md). The node's shim finds
//! the sidecar where it always does, `/run/furnace/guests/<guest>/admin.sock`.

pub mod reconcile;
pub mod supervisor;

#[cfg(test)]
mod tests;
