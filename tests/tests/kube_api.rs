//! The CRDs and manifests against a real kube-apiserver (built from
//! k8s.io/kubernetes by scripts/go-tools.sh, with etcd, the controller
//! manager and the scheduler): they apply as they are, and the apiserver
//! itself refuses invalid objects with the messages of their schema and CEL
//! rules. Ground truth is what the apiserver answers, not our own parser.

use furnace_tests::kube::{app_manifest, install_furnace, repo, ControlPlane};

fn app(name: &str, extra: &str) -> String {
    app_manifest("tenant-a", name, "guest-1", extra)
}

#[test]
fn the_crds_and_manifests_apply_and_the_apiserver_enforces_their_rules() {
    let plane = ControlPlane::start("kube-api").expect("the control plane starts");
    install_furnace(&plane).expect("the CRDs and manifests apply");
    plane
        .kubectl_ok(&["create", "namespace", "tenant-a"])
        .unwrap();
    plane
        .kubectl_ok(&[
            "apply",
            "-f",
            repo("k8s/manifests/examples").to_str().unwrap(),
        ])
        .expect("the examples apply");

    let listed = plane.kubectl_ok(&["get", "furnaceapps", "-A"]).unwrap();
    let header = listed.lines().next().unwrap_or_default();
    for column in ["NAMESPACE", "NAME", "PHASE", "GUEST", "NODE", "AGE"] {
        assert!(header.contains(column), "no {column} column in: {header}");
    }
    assert!(
        listed.contains("scan"),
        "the example app is listed: {listed}"
    );

    let refused = |manifest: &str, message: &str| {
        let out = plane.apply(manifest).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{manifest}");
        assert!(
            stderr.contains(message),
            "refused without {message:?}: {stderr}"
        );
    };
    refused(
        &app("bad-permission", "  permissions: [read, fly]\n"),
        "Unsupported value: \"fly\"",
    );
    refused(
        &app("bad-limits", "  limits:\n    memory: 12 parsecs\n"),
        "spec.limits.memory",
    );
    refused(
        &app(
            "half-backend",
            "  backend:\n    address: backend.example:7443\n    publicKey: m3Qn8mHqXl0n2Jb4cTtB0m9cQvB8w7uKk4yFf6aW1Vg=\n",
        ),
        "backend and appKeySecretRef go together",
    );
    let example = std::fs::read_to_string(repo("k8s/manifests/examples/app.yaml")).unwrap();
    refused(
        &example.replace("guest: guest-1", "guest: guest-2"),
        "guest is immutable",
    );
    let guest = std::fs::read_to_string(repo("k8s/manifests/examples/guest.yaml")).unwrap();
    refused(
        &guest.replace("node: node-1", "node: node-2"),
        "node is immutable",
    );

    // What was refused left nothing behind, and the examples are unchanged.
    let names = plane
        .kubectl_ok(&["get", "furnaceapps", "-n", "tenant-a", "-o", "name"])
        .unwrap();
    assert_eq!(names, "furnaceapp.furnace.dev/scan");
    let stored = plane
        .get_json(&["furnaceguest", "guest-1", "-n", "tenant-a"])
        .unwrap();
    assert_eq!(stored["spec"]["node"], "node-1");
}
