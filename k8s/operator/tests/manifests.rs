//! `k8s/manifests/` against the API's own types: every document is read as
//! the typed object of its kind (k8s-openapi's, or the furnace.dev
//! resources') and written back, and must come back unchanged, so a
//! misspelt or misplaced field (which the typed object drops) fails here.
//! The examples also pass their resource's CEL rules. The real apiserver
//! checks the same files in the cluster tests.

use furnace_crd::{FurnaceApp, FurnaceGuest};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn documents() -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = ["", "examples"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(manifests().join(sub)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            docs.into_iter().map(move |d| (path.clone(), d))
        })
        .collect()
}

fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if &back != doc {
        return Err(format!(
            "does not survive its type:\n wrote {doc}\n  read {back}"
        ));
    }
    Ok(typed)
}

#[test]
fn every_manifest_is_a_well_formed_object_of_its_kind() {
    let docs = documents();
    assert!(docs.len() >= 12, "only {} documents", docs.len());
    for (path, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let checked = match kind {
            "Namespace" => round_trip::<Namespace>(doc).map(drop),
            "ServiceAccount" => round_trip::<ServiceAccount>(doc).map(drop),
            "ClusterRole" => round_trip::<ClusterRole>(doc).map(drop),
            "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(doc).map(drop),
            "Role" => round_trip::<Role>(doc).map(drop),
            "RoleBinding" => round_trip::<RoleBinding>(doc).map(drop),
            "Deployment" => round_trip::<Deployment>(doc).map(drop),
            "DaemonSet" => round_trip::<DaemonSet>(doc).map(drop),
            "RuntimeClass" => round_trip::<RuntimeClass>(doc).map(drop),
            "FurnaceGuest" => round_trip::<FurnaceGuest>(doc)
                .and_then(|g| kube::core::cel::validate_cel(&g).map_err(|e| e.to_string())),
            "FurnaceApp" => round_trip::<FurnaceApp>(doc)
                .and_then(|a| kube::core::cel::validate_cel(&a).map_err(|e| e.to_string())),
            other => Err(format!("unexpected kind {other:?}")),
        };
        if let Err(e) = checked {
            panic!("{} ({kind}): {e}", path.display());
        }
    }
}

#[test]
fn the_runtime_class_is_furnaces_with_its_overhead_and_node_selector() {
    let (_, doc) = documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "RuntimeClass")
        .unwrap();
    let rc: RuntimeClass = serde_json::from_value(doc).unwrap();
    assert_eq!(
        rc.metadata.name.as_deref(),
        Some(furnace_operator::pod::RUNTIME_CLASS)
    );
    assert_eq!(rc.handler, "furnace");
    let fixed = rc.overhead.unwrap().pod_fixed.unwrap();
    assert!(fixed.contains_key("memory") && fixed.contains_key("cpu"));
    let selector = rc.scheduling.unwrap().node_selector.unwrap();
    assert_eq!(
        selector.get("furnace.dev/runtime").map(String::as_str),
        Some("true")
    );
}

/// Least privilege: no role reaches Secrets or exec, and none uses wildcards.
#[test]
fn no_role_reads_secrets_execs_into_pods_or_holds_wildcards() {
    for (path, doc) in documents() {
        if !matches!(doc["kind"].as_str(), Some("ClusterRole" | "Role")) {
            continue;
        }
        for rule in doc["rules"].as_array().unwrap() {
            let strings = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            for resource in strings("resources") {
                assert!(
                    !["secrets", "pods/exec", "pods/attach", "*"].contains(&resource.as_str()),
                    "{}: {resource}",
                    path.display()
                );
            }
            assert!(
                !strings("verbs").contains(&"*".to_string()),
                "{}",
                path.display()
            );
            assert!(
                !strings("apiGroups").contains(&"*".to_string()),
                "{}",
                path.display()
            );
        }
    }
}
