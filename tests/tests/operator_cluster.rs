//! The operator binary against a real control plane (etcd, kube-apiserver,
//! the controller manager and the scheduler, built from k8s.io/kubernetes),
//! as its Deployment runs it: its own service account's token, the RBAC of
//! k8s/manifests/, its Lease. There is no kubelet here (#17 brings one), so
//! app pods stay unscheduled; what is checked is what the apiserver, its
//! admission plugins and the scheduler make of what the operator writes.

use furnace_tests::kube::operator::{NAMESPACE, SERVICE_ACCOUNT};
use furnace_tests::kube::{app_manifest, install_furnace, repo, ControlPlane, RunningOperator};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

const TENANT: &str = "tenant-a";
/// The label the operator puts on its pods.
const APP_LABEL: &str = "operator.furnace.dev/app";
/// How long the operator may take to act on a change it watches.
const ACTS: Duration = Duration::from_secs(60);

fn cluster(label: &str) -> ControlPlane {
    let plane = ControlPlane::start(label).expect("the control plane starts");
    install_furnace(&plane).expect("the CRDs and manifests apply");
    plane.kubectl_ok(&["create", "namespace", TENANT]).unwrap();
    plane
        .kubectl_ok(&[
            "apply",
            "-f",
            repo("k8s/manifests/examples/guest.yaml").to_str().unwrap(),
        ])
        .expect("the example guest applies");
    plane
}

/// The object, or None when the apiserver says it is not there.
fn get(plane: &ControlPlane, kind: &str, name: &str) -> Option<Value> {
    let out = plane.kubectl(&["get", kind, name, "-n", TENANT, "-o", "json"]);
    if out.status.success() {
        return Some(serde_json::from_slice(&out.stdout).expect("kubectl prints JSON"));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NotFound"),
        "kubectl get {kind} {name}: {stderr}"
    );
    None
}

/// Waits until `check` gives a value.
fn wait<T>(
    plane: &ControlPlane,
    operator: &RunningOperator,
    what: &str,
    check: impl FnMut() -> Option<T>,
) -> T {
    operator
        .wait_for(plane, ACTS, what, check)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn condition<'a>(app: &'a Value, type_: &str) -> &'a Value {
    app["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// The events.k8s.io Events about `name` in the tenant's namespace.
fn events_about(plane: &ControlPlane, name: &str) -> Vec<Value> {
    let all = plane
        .get_json(&["events.events.k8s.io", "-n", TENANT])
        .unwrap();
    all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["name"] == name)
        .cloned()
        .collect()
}

fn has_event(plane: &ControlPlane, name: &str, reason: &str) -> bool {
    events_about(plane, name)
        .iter()
        .any(|e| e["reason"] == reason && e["reportingController"] == "furnace-operator")
}

#[test]
fn an_app_becomes_its_pod_follows_its_guest_rolls_and_is_unregistered() {
    let plane = cluster("operator");
    plane
        .kubectl_ok(&[
            "apply",
            "-f",
            repo("k8s/manifests/examples/app.yaml").to_str().unwrap(),
        ])
        .unwrap();
    let operator = RunningOperator::start(&plane, "op-1").expect("the operator starts");
    let app: Value = get(&plane, "furnaceapp", "scan").unwrap();
    let pod = wait(&plane, &operator, "the app's pod", || {
        get(&plane, "pod", "scan")
    });

    // The pod as the apiserver stored it, after its admission plugins.
    let spec = &pod["spec"];
    assert_eq!(spec["runtimeClassName"], "furnace");
    assert_eq!(
        spec["overhead"],
        serde_json::json!({"cpu": "100m", "memory": "24Mi"}),
        "RuntimeClass admission adds the measured overhead"
    );
    assert_eq!(spec["nodeSelector"]["furnace.dev/runtime"], "true");
    let terms = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert!(
        terms.to_string().contains("\"node-1\""),
        "placed on the guest's node: {terms}"
    );
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["containers"][0]["image"], "furnace/ps:dev");
    assert_eq!(spec["containers"][0]["args"], serde_json::json!(["--json"]));
    assert_eq!(spec["volumes"][0]["secret"]["secretName"], "scan-key");
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["furnace.dev/guest"], "guest-1");
    assert_eq!(annotations["furnace.dev/permissions"], "read");
    assert_eq!(
        annotations["furnace.dev/backend"],
        "backend.tenant-a.example:7443"
    );
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "FurnaceApp");
    assert_eq!(owner["uid"], app["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);

    // The status follows what the real scheduler says of the pod.
    let app = wait(
        &plane,
        &operator,
        "the scheduler's verdict in the status",
        || {
            let app = get(&plane, "furnaceapp", "scan")?;
            let pod = get(&plane, "pod", "scan")?;
            let verdict = pod["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "PodScheduled")?
                .clone();
            (condition(&app, "Scheduled")["message"] == verdict["message"]).then_some(app)
        },
    );
    assert_eq!(app["status"]["phase"], "Pending");
    assert_eq!(app["status"]["podName"], "scan");
    assert_eq!(condition(&app, "GuestFound")["status"], "True");
    assert_eq!(condition(&app, "Scheduled")["status"], "False");
    assert_eq!(condition(&app, "Scheduled")["reason"], "Unscheduled");
    assert!(app["metadata"]["finalizers"]
        .to_string()
        .contains("operator.furnace.dev/unregister"));
    assert!(
        has_event(&plane, "scan", "PodCreated"),
        "{:?}",
        events_about(&plane, "scan")
    );
    operator.wait_leading(&plane, ACTS).unwrap();
    assert!(
        operator
            .metric("furnace_operator_pods_created_total")
            .unwrap()
            >= 1.0
    );

    // An app whose guest is missing waits, and starts once the guest exists.
    plane
        .apply_ok(&app_manifest(TENANT, "orphan", "guest-9", ""))
        .unwrap();
    let orphan = wait(&plane, &operator, "GuestFound=False", || {
        get(&plane, "furnaceapp", "orphan")
            .filter(|a| condition(a, "GuestFound")["status"] == "False")
    });
    assert_eq!(orphan["status"]["phase"], "Pending");
    assert_eq!(condition(&orphan, "GuestFound")["reason"], "GuestMissing");
    assert!(orphan["status"]["message"]
        .as_str()
        .unwrap()
        .contains("guest-9"));
    assert!(get(&plane, "pod", "orphan").is_none());
    assert!(has_event(&plane, "orphan", "GuestMissing"));
    let guest = std::fs::read_to_string(repo("k8s/manifests/examples/guest.yaml")).unwrap();
    plane
        .apply_ok(&guest.replace("guest-1", "guest-9"))
        .unwrap();
    // Within the guest recheck (60 s) only if the guest watch maps the new
    // guest to its apps.
    let pod = wait(&plane, &operator, "the orphan's pod", || {
        get(&plane, "pod", "orphan")
    });
    assert!(pod["spec"]["affinity"].to_string().contains("\"node-1\""));

    // A spec change rolls the pod.
    let first_uid = get(&plane, "pod", "scan").unwrap()["metadata"]["uid"].clone();
    plane
        .kubectl_ok(&[
            "patch",
            "furnaceapp",
            "scan",
            "-n",
            TENANT,
            "--type=merge",
            "-p",
            r#"{"spec":{"args":["--json","--threads"]}}"#,
        ])
        .unwrap();
    let rolled = wait(&plane, &operator, "the rolled pod", || {
        get(&plane, "pod", "scan").filter(|p| p["metadata"]["uid"] != first_uid)
    });
    assert_eq!(
        rolled["spec"]["containers"][0]["args"],
        serde_json::json!(["--json", "--threads"])
    );
    assert!(has_event(&plane, "scan", "PodRolled"));

    // Deleting the app deletes its pod, and only then the app.
    plane
        .kubectl_ok(&[
            "delete",
            "furnaceapp",
            "scan",
            "-n",
            TENANT,
            "--timeout=60s",
        ])
        .expect("the app is deleted once its pod is gone");
    assert!(get(&plane, "pod", "scan").is_none());
    assert!(get(&plane, "furnaceapp", "scan").is_none());
    assert!(has_event(&plane, "scan", "Unregistered"));

    // What the real authorizer says of the operator's account.
    let account = format!("--as=system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}");
    let can = |verb: &str, resource: &str, subresource: &str| {
        let subresource = format!("--subresource={subresource}");
        let out = plane.kubectl(&[
            "auth",
            "can-i",
            verb,
            resource,
            &subresource,
            "-n",
            TENANT,
            &account,
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can("create", "pods", ""));
    assert!(can("patch", "furnaceapps.furnace.dev", "status"));
    assert!(!can("get", "secrets", ""), "the operator reads no Secret");
    assert!(!can("create", "pods", "exec"), "the operator cannot exec");
    assert!(!can("update", "furnaceguests.furnace.dev", ""));
    operator.check_alive().unwrap();
}

#[test]
fn a_killed_operator_leaves_nothing_half_done_for_the_next_leader() {
    const APPS: usize = 100;
    let plane = cluster("operator-kill");
    let first = RunningOperator::start(&plane, "op-1").expect("the operator starts");
    first.wait_leading(&plane, ACTS).unwrap();
    // op-1 is frozen while the apps are made, and killed at its first pod
    // out of the burst of reconciles that follow, so that most apps are
    // left somewhere between a finalizer and a status.
    let apps: String = (0..APPS)
        .map(|i| app_manifest(TENANT, &format!("app-{i}"), "guest-1", "") + "---\n")
        .collect();
    first.freeze();
    plane.apply_ok(&apps).unwrap();
    let mut watch = plane
        .kubectl_command(&[
            "get", "pods", "-n", TENANT, "-l", APP_LABEL, "--watch", "-o", "name",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (first_pod, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let line = BufReader::new(stdout).lines().next();
        let _ = first_pod.send(line);
    });
    first.thaw();
    let seen = seen.recv_timeout(ACTS);
    first.kill();
    let _ = watch.kill();
    let _ = watch.wait();
    seen.expect("op-1 makes a pod once thawed")
        .expect("the watch prints a pod")
        .unwrap();
    let pods = |plane: &ControlPlane| -> Vec<Value> {
        let listed = plane
            .get_json(&["pods", "-n", TENANT, "-l", APP_LABEL])
            .unwrap();
        listed["items"].as_array().unwrap().clone()
    };
    let at_kill = pods(&plane).len();
    eprintln!("{at_kill} of {APPS} pods made when op-1 was killed");
    assert!(
        at_kill < APPS,
        "op-1 had made every pod before it was killed: nothing was left half done"
    );

    let second = RunningOperator::start(&plane, "op-2").expect("the second operator starts");
    // op-1's Lease runs out first (15 s).
    second.wait_leading(&plane, ACTS).unwrap();
    wait(
        &plane,
        &second,
        "every app with its pod in its status",
        || {
            let listed = plane.get_json(&["furnaceapps", "-n", TENANT]).ok()?;
            let items = listed["items"].as_array()?;
            items
                .iter()
                .all(|a| a["status"]["podName"] == a["metadata"]["name"])
                .then_some(())
        },
    );
    let pods = pods(&plane);
    assert_eq!(pods.len(), APPS, "{at_kill} pods when op-1 was killed");
    let listed = plane.get_json(&["furnaceapps", "-n", TENANT]).unwrap();
    for app in listed["items"].as_array().unwrap() {
        let name = &app["metadata"]["name"];
        let pod = pods
            .iter()
            .find(|p| &p["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no pod for {name}"));
        assert_eq!(
            pod["metadata"]["ownerReferences"][0]["uid"],
            app["metadata"]["uid"]
        );
        assert_eq!(condition(app, "GuestFound")["status"], "True");
    }
}
