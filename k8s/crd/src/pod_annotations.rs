//! The `furnace.dev/*` pod annotations a FurnaceApp implies: what containerd's
//! CRI plugin hands the shim (`pod_annotations = ["furnace.dev/*"]`).
//!
//! The app's private key is not among them. `furnace.dev/app-key` names a
//! host path, and on Kubernetes the key is a Secret that kubelet mounts at
//! the partition's key path, which the shim takes as the key
//! (docs/kubernetes.md).

use crate::app::{AppLimits, FurnaceAppSpec};
use std::collections::BTreeMap;

pub const GUEST: &str = "furnace.dev/guest";
pub const PERMISSIONS: &str = "furnace.dev/permissions";
pub const LIMITS: &str = "furnace.dev/limits";
pub const BACKEND: &str = "furnace.dev/backend";
pub const BACKEND_KEY: &str = "furnace.dev/backend-key";

pub fn pod_annotations(spec: &FurnaceAppSpec) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(GUEST.into(), spec.guest.clone());
    if !spec.permissions.is_empty() {
        let mut names: Vec<&str> = spec.permissions.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        names.dedup();
        out.insert(PERMISSIONS.into(), names.join(","));
    }
    if let Some(limits) = spec.limits.as_ref().and_then(limits_annotation) {
        out.insert(LIMITS.into(), limits);
    }
    if let Some(backend) = &spec.backend {
        out.insert(BACKEND.into(), backend.address.clone());
        out.insert(BACKEND_KEY.into(), backend.public_key.clone());
    }
    out
}

fn limits_annotation(limits: &AppLimits) -> Option<String> {
    let mut items = Vec::new();
    if let Some(cpu) = limits.cpu {
        items.push(format!("cpu={cpu}"));
    }
    if let Some(memory) = &limits.memory {
        items.push(format!("memory={memory}"));
    }
    if let Some(pids) = limits.pids {
        items.push(format!("pids={pids}"));
    }
    if let Some(storage) = &limits.storage {
        items.push(format!("storage={storage}"));
    }
    (!items.is_empty()).then(|| items.join(","))
}
