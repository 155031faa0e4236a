//! Kubernetes for real, as test infrastructure: the control plane built from
//! its Go modules, on loopback, with locally made certificates, and our
//! operator run against it as its own service account.

pub mod control_plane;
pub mod operator;
pub mod pki;

pub use control_plane::{ControlPlane, Credentials};
pub use operator::RunningOperator;

use anyhow::Result;
use std::path::{Path, PathBuf};

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// What a provider applies: the CRDs (waiting until they are served), then
/// k8s/manifests/ (namespace, RuntimeClass, RBAC, operator, node agent).
pub fn install_furnace(plane: &ControlPlane) -> Result<()> {
    let crds = repo("crds");
    plane.kubectl_ok(&["apply", "-f", crds.to_str().unwrap()])?;
    plane.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/furnaceapps.furnace.dev",
        "crd/furnaceguests.furnace.dev",
    ])?;
    let manifests = repo("k8s/manifests");
    plane.kubectl_ok(&["apply", "-f", manifests.to_str().unwrap()])?;
    Ok(())
}

/// A FurnaceApp of the ps image on `guest`; `extra` is more of its spec,
/// indented by two spaces.
pub fn app_manifest(namespace: &str, name: &str, guest: &str, extra: &str) -> String {
    format!(
        "apiVersion: furnace.dev/v1alpha1\nkind: FurnaceApp\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  guest: {guest}\n  image: furnace/ps:dev\n{extra}"
    )
}
