//! `FurnaceApp`: a tenant's VMI app, run as one pod on its guest's node.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Condition: the FurnaceGuest named by `spec.guest` exists.
pub const GUEST_FOUND: &str = "GuestFound";
/// Condition: the app's pod exists, bound to the guest's node.
pub const SCHEDULED: &str = "Scheduled";
/// Condition: the app's container runs.
pub const READY: &str = "Ready";

/// A guest name, as the sidecar and `furnace.dev/guest` take it.
const GUEST_NAME: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$";
/// `host:port`: a DNS name or IPv4 address, or an IPv6 address in brackets,
/// and a port 1–65535.
const HOST_PORT: &str = r"^([A-Za-z0-9]([A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\]):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$";
/// A Noise public key as `furnace keygen` writes it: 32 bytes in base64.
const PUBLIC_KEY: &str = r"^[A-Za-z0-9+/]{43}=$";
/// Bytes, or a whole number of Ki, Mi or Gi: `furnace.dev/limits`' sizes.
/// At most 19 digits, where the runtime takes any u64: far past any maximum.
const SIZE: &str = r"^[0-9]{1,19}(Ki|Mi|Gi)?$";

/// A tenant's VMI app: an OCI image the operator runs as one pod under the
/// `furnace` RuntimeClass, on the node of the guest it introspects.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "furnace.dev",
    version = "v1alpha1",
    kind = "FurnaceApp",
    namespaced,
    doc = "A tenant's VMI app, run as one pod under the furnace RuntimeClass on its guest's node",
    status = "FurnaceAppStatus",
    shortname = "fapp",
    category = "furnace",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Guest","type":"string","jsonPath":".spec.guest"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.backend) == has(self.appKeySecretRef)").message("backend and appKeySecretRef go together: the app seals its messages to the backend with its own key"))]
#[serde(rename_all = "camelCase")]
pub struct FurnaceAppSpec {
    /// The FurnaceGuest, in this namespace, that the app introspects.
    #[x_kube(validation = Rule::new("self == oldSelf").message("guest is immutable: create another FurnaceApp for another guest"))]
    #[schemars(regex(pattern = GUEST_NAME))]
    pub guest: String,
    /// The app's OCI image.
    #[schemars(length(min = 1, max = 4096))]
    pub image: String,
    /// Arguments to the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub args: Vec<String>,
    /// What the app may do to its guest; `read` when empty. The provider's
    /// config caps what is granted, and the runtime refuses more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub permissions: Vec<Permission>,
    /// Tighter than the provider's maxima; unset ones take its defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<AppLimits>,
    /// The tenant's backend, which the app's facilities relay reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// The Secret holding the app's private key (`furnace keygen`'s `.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_key_secret_ref: Option<SecretKeyRef>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
}

#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Read,
    Write,
    Pause,
    Events,
    Syscalls,
}

impl Permission {
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Pause => "pause",
            Permission::Events => "events",
            Permission::Syscalls => "syscalls",
        }
    }
}

/// `furnace.dev/limits`, field by field.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppLimits {
    /// CPUs, may be fractional (`0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 1024.0))]
    pub cpu: Option<f64>,
    /// Bytes, or a whole number of Ki, Mi or Gi (`128Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE))]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4194304))]
    pub pids: Option<u32>,
    /// The app's storage quota, in the same units as `memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE))]
    pub storage: Option<String>,
}

#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// `host:port` of the tenant's backend.
    #[schemars(regex(pattern = HOST_PORT))]
    pub address: String,
    /// The backend's public key: the one line of its `.pub`.
    #[schemars(regex(pattern = PUBLIC_KEY))]
    pub public_key: String,
}

#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// A Secret in the FurnaceApp's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key of the Secret that holds the private key.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_secret_key() -> String {
    "app.key".into()
}

#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum RestartPolicy {
    #[default]
    Never,
    OnFailure,
    Always,
}

impl RestartPolicy {
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::Never => "Never",
            RestartPolicy::OnFailure => "OnFailure",
            RestartPolicy::Always => "Always",
        }
    }
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FurnaceAppStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `GuestFound`, `Scheduled` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// What is wrong, or what is awaited, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}
