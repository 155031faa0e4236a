//! The one pod a FurnaceApp becomes.

use furnace_crd::app::SecretKeyRef;
use furnace_crd::{FurnaceApp, FurnaceGuest};
use k8s_openapi::api::core::v1::{
    Affinity, Container, KeyToPath, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, Pod, PodSpec, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The RuntimeClass whose handler is `io.furnace.v1` (k8s/manifests/).
pub const RUNTIME_CLASS: &str = "furnace";
/// The app's container in the pod.
pub const CONTAINER: &str = "app";
/// Which revision of the FurnaceApp's spec the pod was made from. Not under
/// `furnace.dev/`: CRI hands those to the shim, which refuses keys it does
/// not know.
pub const REVISION: &str = "operator.furnace.dev/revision";
/// The label naming the FurnaceApp a pod belongs to.
pub const APP_LABEL: &str = "operator.furnace.dev/app";
/// Where the app's key Secret is mounted: the path at which the runtime puts
/// the app's key inside its partitions (`furnace_runtime::policy::APP_KEY`).
pub const APP_KEY_PATH: &str = "/run/furnace/app.key";
const APP_KEY_VOLUME: &str = "furnace-app-key";
const APP_KEY_FILE: &str = "app.key";

/// The pod's name: the FurnaceApp's own, so `kubectl logs <app>` finds it.
pub fn pod_name(app: &FurnaceApp) -> String {
    app.name_any()
}

/// The pod `app` should have on `guest`'s node, its [`REVISION`] included.
pub fn desired(app: &FurnaceApp, guest: &FurnaceGuest) -> Pod {
    let spec = &app.spec;
    let mut annotations = furnace_crd::pod_annotations(spec);
    let mut container = Container {
        name: CONTAINER.into(),
        image: Some(spec.image.clone()),
        args: (!spec.args.is_empty()).then(|| spec.args.clone()),
        ..Default::default()
    };
    let mut volumes = None;
    if let Some(key) = &spec.app_key_secret_ref {
        container.volume_mounts = Some(vec![app_key_mount()]);
        volumes = Some(vec![app_key_volume(key)]);
    }
    let pod_spec = PodSpec {
        runtime_class_name: Some(RUNTIME_CLASS.into()),
        affinity: Some(on_node(&guest.spec.node)),
        restart_policy: Some(spec.restart_policy.name().into()),
        // The partition drops a service account token anyway; asking for
        // none keeps it out of the pod spec too.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        containers: vec![container],
        volumes,
        ..Default::default()
    };
    annotations.insert(REVISION.into(), revision(&annotations, &pod_spec));
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(app)),
            namespace: app.namespace(),
            labels: Some(BTreeMap::from([(APP_LABEL.into(), app.name_any())])),
            annotations: Some(annotations),
            owner_references: app.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// The revision a pod was made from, if it carries one.
pub fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(REVISION)
        .map(String::as_str)
}

/// Whether `pod` is controlled by `app` (and not some other pod of that name).
pub fn is_owned_by(pod: &Pod, app: &FurnaceApp) -> bool {
    let uid = app.meta().uid.as_deref();
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

/// A digest of everything the pod is made from, so a change to any spec
/// field that can change shows as a new revision.
fn revision(annotations: &BTreeMap<String, String>, spec: &PodSpec) -> String {
    let mut hash = Sha256::new();
    hash.update(serde_json::to_vec(annotations).unwrap_or_default());
    hash.update(serde_json::to_vec(spec).unwrap_or_default());
    hex::encode(&hash.finalize()[..8])
}

/// Required node affinity on the node's name: the scheduler still places the
/// pod, so the RuntimeClass's node selector, its overhead and the node's
/// capacity are all checked, where `nodeName` would skip them.
fn on_node(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.into()]),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn app_key_volume(key: &SecretKeyRef) -> Volume {
    Volume {
        name: APP_KEY_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(key.name.clone()),
            items: Some(vec![KeyToPath {
                key: key.key.clone(),
                path: APP_KEY_FILE.into(),
                mode: Some(0o400),
            }]),
            default_mode: Some(0o400),
            optional: Some(false),
        }),
        ..Default::default()
    }
}

/// A `subPath` mount, so the container gets the key file itself (bound by
/// kubelet) rather than the Secret's directory of symlinks.
fn app_key_mount() -> VolumeMount {
    VolumeMount {
        name: APP_KEY_VOLUME.into(),
        mount_path: APP_KEY_PATH.into(),
        sub_path: Some(APP_KEY_FILE.into()),
        read_only: Some(true),
        ..Default::default()
    }
}
