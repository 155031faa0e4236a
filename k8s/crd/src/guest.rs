//! `FurnaceGuest`: a guest VM on one node, whose sidecar the node agent runs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Condition: the node agent runs the guest's sidecar and it answers.
pub const SIDECAR_READY: &str = "SidecarReady";
/// Condition: the sidecar attached to the guest; its message is the kernel banner.
pub const ATTACHED: &str = "Attached";

/// A guest VM to introspect. Its name is the guest name the sidecar serves
/// (`furnace.dev/guest`), so it keeps to the sidecar's grammar too.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "furnace.dev",
    version = "v1alpha1",
    kind = "FurnaceGuest",
    namespaced,
    doc = "A guest VM on one node, whose VMI sidecar that node's agent runs",
    status = "FurnaceGuestStatus",
    shortname = "fguest",
    // The node agent watches only its own node's guests.
    selectable = ".spec.node",
    category = "furnace",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Driver","type":"string","jsonPath":".spec.driver"}"#,
    printcolumn = r#"{"name":"Sidecar","type":"string","jsonPath":".status.conditions[?(@.type==\"SidecarReady\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 64").message("a guest name is at most 64 characters, the sidecar's limit"),
)]
#[serde(rename_all = "camelCase")]
pub struct FurnaceGuestSpec {
    /// The node that hosts the guest.
    #[x_kube(validation = Rule::new("self == oldSelf").message("node is immutable: a guest does not move; delete and create it on the new node"))]
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// How the sidecar reaches the guest.
    #[x_kube(validation = Rule::new("self == oldSelf").message("driver is immutable"))]
    pub driver: Driver,
    /// The guest's directory on that node: the QEMU driver's `qmp.sock`,
    /// `gdb.sock` and `ram` (`furnace guest up` makes one).
    #[x_kube(validation = Rule::new("self == oldSelf").message("guestDir is immutable"))]
    #[schemars(regex(pattern = r"^(/[^/\x00]+)+$"), length(max = 4096))]
    pub guest_dir: String,
    /// The ISF profile on that node; without it the sidecar builds or finds
    /// one from the guest's kernel banner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(/[^/\x00]+)+$"), length(max = 4096))]
    pub profile: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// QEMU with its RAM shared as a file, QMP and gdbstub.
    Qemu,
    /// Xen (needs a Xen host; not built yet).
    Xen,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FurnaceGuestStatus {
    /// `SidecarReady`, and `Attached` with the kernel banner as its message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Where the sidecar runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarLocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarLocation {
    pub node: String,
    /// The sidecar's pid on that node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// The admin socket the node's shim registers apps on.
    pub admin_socket: String,
}
