//! Limits and permissions: tightened by annotations, never loosened.

use super::*;
use crate::units::ByteSize;
use oci_spec::runtime::LinuxResources;

#[test]
fn annotations_tighten_the_limits() {
    let h = app(Spec::default(), &[(LIMITS, "cpu=0.5,memory=64Mi,pids=8")]).unwrap();
    let r = resources(&h);
    assert_eq!(r.pids().unwrap().limit(), 8);
    assert_eq!(r.memory().unwrap().limit(), Some(64 << 20));
    assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
    assert_eq!(h.limits.pids, 8);
}

#[test]
fn limits_already_in_the_spec_only_tighten() {
    let mut spec = Spec::default();
    let raw = serde_json::json!({
        "memory": {"limit": 1_i64 << 40, "swap": -1, "disableOOMKiller": true},
        "cpu": {"quota": 50_000, "period": 100_000, "realtimeRuntime": 950_000},
        "pids": {"limit": 5},
        "unified": {"pids.max": "max"},
        "devices": [{"allow": true, "access": "rwm"}]
    });
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_resources(Some(serde_json::from_value(raw).unwrap()));
    let h = app(spec, &[]).unwrap();
    let r = resources(&h);
    assert_eq!(
        r.memory().unwrap().limit(),
        Some(300 << 20),
        "a looser spec limit is ignored"
    );
    assert_eq!(r.memory().unwrap().disable_oom_killer(), None);
    assert_eq!(
        r.cpu().as_ref().unwrap().quota(),
        Some(50_000),
        "a tighter spec limit wins"
    );
    assert_eq!(r.cpu().as_ref().unwrap().realtime_runtime(), None);
    assert_eq!(r.pids().unwrap().limit(), 5);
    assert!(r.unified().is_none());
    assert!(
        !r.devices().as_ref().unwrap()[0].allow(),
        "allow-all device rule replaced"
    );
    assert_eq!(h.limits.cpu, 0.5);
    assert_eq!(h.limits.pids, 5);
}

#[test]
fn loosening_beyond_the_maximum_fails_naming_the_annotation() {
    let e = app(Spec::default(), &[(LIMITS, "memory=2Gi")])
        .unwrap_err()
        .to_string();
    assert!(e.contains(LIMITS) && e.contains("looser"), "{e}");
    let e = app(Spec::default(), &[(LIMITS, "pids=lots")])
        .unwrap_err()
        .to_string();
    assert!(e.contains(LIMITS), "{e}");
}

#[test]
fn permissions_beyond_the_caps_fail_naming_the_annotation() {
    let e = app(Spec::default(), &[(PERMISSIONS, "read,write")])
        .unwrap_err()
        .to_string();
    assert!(e.contains(PERMISSIONS) && e.contains("write"), "{e}");
    let h = app(Spec::default(), &[(PERMISSIONS, "read,pause,events")]).unwrap();
    assert_eq!(h.request.permissions.len(), 3);
}

#[test]
fn updates_tighten_but_never_loosen() {
    let ceiling = Limits {
        cpu: 1.0,
        memory: ByteSize::mib(128),
        pids: 20,
        storage: ByteSize::mib(16),
    };
    let loosen: LinuxResources = serde_json::from_value(serde_json::json!({
        "memory": {"limit": 1_i64 << 40},
        "cpu": {"quota": 400_000, "period": 100_000},
        "pids": {"limit": 4096}
    }))
    .unwrap();
    let r = crate::policy::tighten_resources(loosen, &ceiling);
    assert_eq!(r.memory().unwrap().limit(), Some(128 << 20));
    assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(100_000));
    assert_eq!(r.pids().unwrap().limit(), 20);

    let tighten: LinuxResources = serde_json::from_value(serde_json::json!({
        "memory": {"limit": 64_i64 << 20},
        "pids": {"limit": 10}
    }))
    .unwrap();
    let r = crate::policy::tighten_resources(tighten, &ceiling);
    assert_eq!(r.memory().unwrap().limit(), Some(64 << 20));
    assert_eq!(r.pids().unwrap().limit(), 10);
}
