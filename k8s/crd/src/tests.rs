//! The schemas against what they promise: the committed YAML, the CEL rules
//! (evaluated client-side by kube's CEL implementation; the real apiserver
//! checks the same files in the cluster tests), and the runtime's own
//! annotation parser, which the pod annotations must satisfy.

use super::*;
use crate::app::{AppLimits, Backend, Permission, RestartPolicy, SecretKeyRef};
use crate::guest::Driver;
use furnace_runtime::annotations as runtime;
use furnace_runtime::ProviderConfig;
use std::collections::HashMap;

const BACKEND_KEY: &str = "m3Qn8mHqXl0n2Jb4cTtB0m9cQvB8w7uKk4yFf6aW1Vg=";

fn app(spec: FurnaceAppSpec) -> FurnaceApp {
    FurnaceApp::new("scan", spec)
}

fn spec() -> FurnaceAppSpec {
    FurnaceAppSpec {
        guest: "guest-1".into(),
        image: "furnace/ps:dev".into(),
        args: vec![],
        permissions: vec![],
        limits: None,
        backend: None,
        app_key_secret_ref: None,
        restart_policy: RestartPolicy::Never,
    }
}

fn guest(node: &str) -> FurnaceGuest {
    FurnaceGuest::new(
        "guest-1",
        FurnaceGuestSpec {
            node: node.into(),
            driver: Driver::Qemu,
            guest_dir: "/run/furnace/guests/guest-1".into(),
            profile: None,
        },
    )
}

#[test]
fn the_committed_crds_are_what_the_types_generate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    for (name, crd) in crds() {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| {
            panic!("crds/{name}: {e}; run `cargo run -p furnace-crd --bin crdgen`")
        });
        assert!(
            committed == to_yaml(&crd).unwrap(),
            "crds/{name} drifted from the types; run `cargo run -p furnace-crd --bin crdgen`"
        );
    }
}

#[test]
fn a_valid_app_passes_its_cel_rules_and_guest_cannot_change() {
    let old = app(spec());
    kube::core::cel::validate_cel(&old).unwrap();
    let mut moved = old.clone();
    moved.spec.image = "furnace/ps:v2".into();
    kube::core::cel::validate_cel_update(&moved, &old).unwrap();
    moved.spec.guest = "guest-2".into();
    let e = kube::core::cel::validate_cel_update(&moved, &old).unwrap_err();
    assert!(e.to_string().contains("guest is immutable"), "{e}");
}

#[test]
fn a_backend_needs_an_app_key_and_an_app_key_a_backend() {
    let backend = Backend {
        address: "backend.example.org:7443".into(),
        public_key: BACKEND_KEY.into(),
    };
    let key = SecretKeyRef {
        name: "scan-key".into(),
        key: "app.key".into(),
    };
    let mut both = spec();
    both.backend = Some(backend.clone());
    both.app_key_secret_ref = Some(key.clone());
    kube::core::cel::validate_cel(&app(both)).unwrap();
    let mut lone_backend = spec();
    lone_backend.backend = Some(backend);
    let mut lone_key = spec();
    lone_key.app_key_secret_ref = Some(key);
    for lone in [lone_backend, lone_key] {
        let e = kube::core::cel::validate_cel(&app(lone)).unwrap_err();
        assert!(e.to_string().contains("go together"), "{e}");
    }
}

#[test]
fn a_guest_keeps_its_node_dir_and_driver_and_a_short_name() {
    let old = guest("node-a");
    kube::core::cel::validate_cel(&old).unwrap();
    let mut profiled = old.clone();
    profiled.spec.profile = Some("/var/lib/furnace/profiles/6.1.json".into());
    kube::core::cel::validate_cel_update(&profiled, &old).unwrap();
    for (field, change) in [
        (
            "node",
            (|g: &mut FurnaceGuest| g.spec.node = "node-b".into()) as fn(&mut _),
        ),
        ("guestDir", |g| g.spec.guest_dir = "/srv/other".into()),
        ("driver", |g| g.spec.driver = Driver::Xen),
    ] {
        let mut changed = old.clone();
        change(&mut changed);
        let e = kube::core::cel::validate_cel_update(&changed, &old).unwrap_err();
        assert!(
            e.to_string().contains(&format!("{field} is immutable")),
            "{field}: {e}"
        );
    }
    let long = FurnaceGuest::new(&"g".repeat(65), old.spec.clone());
    let e = kube::core::cel::validate_cel(&long).unwrap_err();
    assert!(e.to_string().contains("at most 64"), "{e}");
}

/// The schema's value pattern of `field` in the FurnaceApp spec, by a JSON pointer.
fn pattern(pointer: &str) -> regex::Regex {
    let crd = serde_json::to_value(FurnaceApp::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let p = schema
        .pointer(pointer)
        .and_then(|p| p["pattern"].as_str())
        .unwrap_or_else(|| panic!("no pattern at {pointer}"));
    regex::Regex::new(p).unwrap()
}

/// Each pattern accepts exactly what the runtime accepts, on a corpus of
/// good and bad values, so the apiserver refuses what the shim would.
#[test]
fn the_schema_patterns_accept_what_the_runtime_accepts() {
    let guest = pattern("/properties/guest");
    for name in [
        "g",
        "guest-1",
        "Guest.2_b",
        &"a".repeat(64),
        "",
        "-g",
        ".",
        "..",
        "a/b",
        "g h",
        &"a".repeat(65),
    ] {
        assert_eq!(
            guest.is_match(name),
            runtime::parse_guest(name).is_ok(),
            "guest {name:?}"
        );
    }
    let size = pattern("/properties/limits/properties/memory");
    for v in [
        "1",
        "128Mi",
        "4Gi",
        "64Ki",
        "0",
        "1.5Mi",
        "128M",
        "Mi",
        "-1",
        "1 Mi",
        "1234567890123456789",
        "123456789012345678901",
    ] {
        let runtime_ok = furnace_runtime::units::parse_bytes(v).is_ok();
        assert_eq!(size.is_match(v), runtime_ok, "size {v:?}");
    }
    let address = pattern("/properties/backend/properties/address");
    let key = pattern("/properties/backend/properties/publicKey");
    let takes_backend = |address: &str, key: &str| {
        let annotations = HashMap::from([
            (runtime::GUEST.to_string(), "g".to_string()),
            (runtime::BACKEND.to_string(), address.to_string()),
            (runtime::BACKEND_KEY.to_string(), key.to_string()),
            (
                runtime::APP_KEY.to_string(),
                "/etc/furnace/keys/app.key".to_string(),
            ),
        ]);
        runtime::parse(&annotations, &ProviderConfig::default(), runtime::Role::App).is_ok()
    };
    for a in [
        "backend.example.org:7443",
        "10.0.0.1:1",
        "[2001:db8::1]:65535",
        "h:65536",
        "h:0",
        "h",
        ":80",
        "h:",
        "a b:1",
    ] {
        assert_eq!(
            address.is_match(a),
            takes_backend(a, BACKEND_KEY),
            "address {a:?}"
        );
    }
    for k in [
        BACKEND_KEY,
        "short=",
        &BACKEND_KEY.replace('=', "A"),
        &format!("{BACKEND_KEY}="),
    ] {
        assert_eq!(key.is_match(k), takes_backend("h:1", k), "key {k:?}");
    }
}

/// The permissions the schema offers are exactly the runtime's.
#[test]
fn the_permission_enum_is_the_runtimes() {
    let ours: Vec<&str> = [
        Permission::Read,
        Permission::Write,
        Permission::Pause,
        Permission::Events,
        Permission::Syscalls,
    ]
    .iter()
    .map(|p| p.name())
    .collect();
    let runtimes: Vec<&str> = (1..)
        .map_while(|i| furnace_api::v1::Permission::try_from(i).ok())
        .map(runtime::permission_name)
        .collect();
    assert_eq!(ours, runtimes);
    let crd = serde_json::to_value(FurnaceApp::crd()).unwrap();
    let offered = crd.pointer(
        "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/permissions/items/enum",
    );
    assert_eq!(offered, Some(&serde_json::json!(ours)));
}

/// What the operator puts on the pod, the runtime takes as the spec meant.
#[test]
fn pod_annotations_parse_in_the_runtime_as_the_spec_says() {
    let mut config = ProviderConfig::default();
    config.permissions.grantable = (1..)
        .map_while(|i| furnace_api::v1::Permission::try_from(i).ok())
        .collect();
    let mut s = spec();
    s.permissions = vec![Permission::Syscalls, Permission::Read, Permission::Read];
    s.limits = Some(AppLimits {
        cpu: Some(0.5),
        memory: Some("128Mi".into()),
        pids: Some(30),
        storage: Some("4Mi".into()),
    });
    let annotations: HashMap<String, String> = pod_annotations(&s).into_iter().collect();
    let parsed = runtime::parse(&annotations, &config, runtime::Role::App).unwrap();
    assert_eq!(parsed.guest.as_deref(), Some("guest-1"));
    let names: Vec<&str> = parsed
        .permissions
        .iter()
        .map(|p| runtime::permission_name(*p))
        .collect();
    assert_eq!(names, ["read", "syscalls"]);
    assert_eq!(parsed.limits.cpu, 0.5);
    assert_eq!(parsed.limits.memory.bytes(), 128 << 20);
    assert_eq!(parsed.limits.pids, 30);
    assert_eq!(parsed.limits.storage.bytes(), 4 << 20);

    s.backend = Some(Backend {
        address: "backend.example.org:7443".into(),
        public_key: BACKEND_KEY.into(),
    });
    let mut annotations: HashMap<String, String> = pod_annotations(&s).into_iter().collect();
    // On Kubernetes the key is a mounted Secret, not an annotation; a host
    // path stands in for it so the backend half is what is checked here.
    annotations.insert(runtime::APP_KEY.into(), "/etc/furnace/keys/app.key".into());
    let parsed = runtime::parse(&annotations, &config, runtime::Role::App).unwrap();
    let backend = parsed.backend.unwrap();
    assert_eq!(backend.address, "backend.example.org:7443");
    assert_eq!(backend.key.to_string(), BACKEND_KEY);
}

#[test]
fn an_empty_spec_asks_for_the_defaults_only() {
    let annotations = pod_annotations(&spec());
    assert_eq!(annotations.len(), 1, "{annotations:?}");
    assert_eq!(annotations[pod_annotations::GUEST], "guest-1");
}
