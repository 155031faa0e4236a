//! kubelet's path through containerd's CRI plugin, driven by the real
//! crictl on a real containerd 1.6 with the RuntimeClass handler `furnace`
//! (`furnace_tests::cri`): pod sandboxes on a pause image, app containers
//! that read the real guest, logs and stats back through CRI, and every bad
//! pod refused with a clear error and nothing left behind.

use furnace_api::v1::Permission;
use furnace_tests::cri::{errors_of, CriNode, CRI_NAMESPACE};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const EXIT_LIMIT: Duration = Duration::from_secs(90);

fn node() -> &'static CriNode {
    static NODE: OnceLock<CriNode> = OnceLock::new();
    // A long guest name: with CRI's 64-character container ids the app's
    // socket path then passes what `sun_path` holds (furnace_api::unix_socket).
    NODE.get_or_init(|| CriNode::start("cri-guest-name").expect("the CRI node starts"))
}

/// A pod config named `name` with these annotations (the guest's unless
/// `guest` is None).
fn pod(name: &str, guest: Option<&str>, extra: &[(&str, &str)]) -> (PathBuf, Value) {
    let n = node();
    let mut annotations = serde_json::Map::new();
    if let Some(g) = guest {
        annotations.insert("furnace.dev/guest".into(), g.into());
    }
    for (k, v) in extra {
        annotations.insert((*k).into(), (*v).into());
    }
    let config = json!({
        "metadata": {"name": name, "namespace": "tenant", "uid": format!("uid-{name}"), "attempt": 0},
        "annotations": annotations,
        "log_directory": n.containerd.dir.join("logs").join(name),
        "linux": {},
    });
    (n.config_file(&format!("pod-{name}.json"), &config), config)
}

fn container(pod: &str, image: &str, args: &[&str]) -> PathBuf {
    let config = json!({
        "metadata": {"name": "app"},
        "image": {"image": image},
        "args": args,
        "log_path": "app.log",
        "linux": {},
    });
    node().config_file(&format!("ctr-{pod}.json"), &config)
}

fn guest() -> &'static str {
    &node().guest.name
}

/// The sidecar's registration of the container `id`, if any.
fn registration(id: &str) -> Option<furnace_api::v1::AppInfo> {
    let tail = &id[id.len().saturating_sub(40)..];
    node()
        .sidecar
        .admin()
        .list_apps()
        .expect("ListApps")
        .into_iter()
        .find(|a| a.app_id.ends_with(tail))
}

/// Pids of the furnace shims serving task (or pod) `id`.
fn shims_with_id(id: &str) -> Vec<u32> {
    node()
        .containerd
        .pids_of_shims()
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.split(|b| *b == 0).any(|arg| arg == id.as_bytes())
        })
        .collect()
}

fn status_field(pid: u64, field: &str) -> String {
    furnace_tests::proc_status(pid as i32)
        .get(field)
        .cloned()
        .unwrap_or_default()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_app_pod_reads_the_real_guest_and_its_logs_come_back_through_cri() {
    let n = node();
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    n.guest.assert_ps_matches(|_| {
        let name = format!(
            "ps-{}",
            attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (pod_file, _) = pod(&name, Some(guest()), &[]);
        let pod_id = n.run_pod(&pod_file)?;
        let ctr = container(&name, "docker.io/furnace/ps:dev", &["--json"]);
        let id = n.start_container(&pod_id, &ctr, &pod_file)?;
        let status = n.wait_exited(&id, EXIT_LIMIT)?;
        anyhow::ensure!(
            status["exitCode"] == 0,
            "ps exited {}: {}",
            status["exitCode"],
            n.crictl_ok(&["logs", &id])?
        );
        let logs = n.crictl_ok(&["logs", &id])?;
        n.remove_pod(&pod_id)?;
        Ok(serde_json::from_str(&logs)?)
    });
}

/// One shim serves the pod; the sandbox is not an app (no guest socket,
/// no registration) but is confined; the pod's furnace.dev/* annotations
/// reach the shim and others do not; stats come back through CRI; and
/// removing the pod unregisters the app and ends the shim.
#[test]
fn one_shim_serves_the_pod_whose_sandbox_never_reaches_the_guest() {
    let n = node();
    let extra = [
        ("furnace.dev/permissions", "read,events"),
        ("example.com/not-furnace", "dropped"),
    ];
    let (pod_file, _) = pod("hold", Some(guest()), &extra);
    let pod_id = n.run_pod(&pod_file).unwrap();
    let ctr = container("hold", "docker.io/furnace/probe:dev", &[]);
    let ctr_config = json!({
        "metadata": {"name": "app"},
        "image": {"image": "docker.io/furnace/probe:dev"},
        "command": ["/furnace-probe", "hold"],
        "log_path": "app.log",
        "linux": {},
    });
    std::fs::write(&ctr, ctr_config.to_string()).unwrap();
    let id = n.start_container(&pod_id, &ctr, &pod_file).unwrap();

    assert_eq!(shims_with_id(&pod_id).len(), 1, "one shim for the pod");
    assert!(shims_with_id(&id).is_empty(), "no shim of the app's own");
    let app = registration(&id).expect("the app is registered with the sidecar");
    assert_eq!(
        app.permissions,
        [Permission::Read as i32, Permission::Events as i32]
    );
    assert!(
        registration(&pod_id).is_none(),
        "the sandbox is not registered"
    );

    let sandbox_pid = n.inspect("inspectp", &pod_id).unwrap()["info"]["pid"]
        .as_u64()
        .unwrap();
    let app_pid = n.inspect("inspect", &id).unwrap()["info"]["pid"]
        .as_u64()
        .unwrap();
    for (which, pid) in [("sandbox", sandbox_pid), ("app", app_pid)] {
        assert_eq!(status_field(pid, "NoNewPrivs"), "1", "{which}");
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000", "{which}");
    }
    let vmi = |pid: u64| Path::new(&format!("/proc/{pid}/root/run/furnace/vmi.sock")).exists();
    assert!(!vmi(sandbox_pid), "the sandbox has no guest socket");
    assert!(vmi(app_pid), "the app has its guest socket");

    let bundle = n.containerd.dir.join(format!(
        "state/io.containerd.runtime.v2.task/{CRI_NAMESPACE}/{id}/config.json"
    ));
    let spec: Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let annotations = &spec["annotations"];
    assert_eq!(annotations["furnace.dev/permissions"], "read,events");
    assert!(
        annotations.get("example.com/not-furnace").is_none(),
        "{annotations}"
    );

    let stats: Value =
        serde_json::from_str(&n.crictl_ok(&["stats", "-o", "json", &id]).unwrap()).unwrap();
    let memory = &stats["stats"][0]["memory"]["workingSetBytes"]["value"];
    assert!(
        memory
            .as_str()
            .and_then(|m| m.parse::<u64>().ok())
            .is_some_and(|m| m > 0),
        "{stats}"
    );

    let shim = shims_with_id(&pod_id)[0];
    n.remove_pod(&pod_id).unwrap();
    assert!(
        registration(&id).is_none(),
        "removing the pod unregistered the app"
    );
    wait_until("the pod's shim exits", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{shim}")).exists()
    });
    let partition = Path::new("/run/furnace/rootfs")
        .join(CRI_NAMESPACE)
        .join(&id);
    assert!(!partition.exists(), "{} is left", partition.display());
}

/// Each bad pod gets a clear error. What the sandbox can judge (the pod's
/// furnace.dev/* annotations) fails RunPodSandbox, and no pod is left;
/// what needs the app (its guest) fails StartContainer, where containerd
/// creates the task: the sandbox keeps running, nothing is registered for
/// the refused container, and the pod is removed cleanly.
#[test]
fn bad_pods_are_refused_clearly_and_leave_nothing_behind() {
    let n = node();
    let (pod_file, _) = pod(
        "write",
        Some(guest()),
        &[("furnace.dev/permissions", "write")],
    );
    let out = n.crictl(&["runp", "--runtime", "furnace", pod_file.to_str().unwrap()]);
    assert!(!out.status.success(), "a pod asking for write started");
    let error = errors_of(&out);
    assert!(
        error.contains("furnace.dev/permissions") && error.contains("does not grant"),
        "{error}"
    );
    assert_eq!(
        n.crictl_ok(&["pods", "-q", "--name", "write"]).unwrap(),
        "",
        "a refused pod is left"
    );

    let cases: [(&str, Option<&str>, &str); 2] = [
        ("no-guest", None, "furnace.dev/guest"),
        ("unknown-guest", Some("no-such-guest"), "no-such-guest"),
    ];
    for (name, guest_name, says) in cases {
        let (pod_file, _) = pod(name, guest_name, &[]);
        let pod_id = n
            .run_pod(&pod_file)
            .unwrap_or_else(|e| panic!("{name}: the sandbox starts: {e}"));
        let ctr = container(name, "docker.io/furnace/ps:dev", &["--json"]);
        let created = n
            .crictl_ok(&[
                "create",
                &pod_id,
                ctr.to_str().unwrap(),
                pod_file.to_str().unwrap(),
            ])
            .unwrap();
        let out = n.crictl(&["start", &created]);
        assert!(!out.status.success(), "{name}: started");
        let error = errors_of(&out);
        assert!(
            error.contains(says),
            "{name}: the error does not say {says:?}: {error}"
        );
        assert!(registration(&created).is_none(), "{name}: registered");
        assert_eq!(
            n.inspect("inspectp", &pod_id).unwrap()["status"]["state"],
            "SANDBOX_READY",
            "{name}"
        );
        let partition = Path::new("/run/furnace/rootfs")
            .join(CRI_NAMESPACE)
            .join(&created);
        assert!(
            !partition.exists(),
            "{name}: {} is left",
            partition.display()
        );
        n.remove_pod(&pod_id).unwrap();
    }
}

#[test]
fn a_second_app_container_in_a_pod_is_refused() {
    let n = node();
    let (pod_file, _) = pod("two-apps", Some(guest()), &[]);
    let pod_id = n.run_pod(&pod_file).unwrap();
    let hold = json!({
        "metadata": {"name": "first"},
        "image": {"image": "docker.io/furnace/probe:dev"},
        "command": ["/furnace-probe", "hold"],
        "log_path": "first.log",
        "linux": {},
    });
    let first = n
        .start_container(&pod_id, &n.config_file("ctr-first.json", &hold), &pod_file)
        .unwrap();
    let mut second = hold.clone();
    second["metadata"]["name"] = "second".into();
    second["log_path"] = "second.log".into();
    let second_file = n.config_file("ctr-second.json", &second);
    let created = n
        .crictl_ok(&[
            "create",
            &pod_id,
            second_file.to_str().unwrap(),
            pod_file.to_str().unwrap(),
        ])
        .unwrap();
    let out = n.crictl(&["start", &created]);
    assert!(!out.status.success(), "a second app started");
    let error = errors_of(&out);
    assert!(error.contains("already runs the Furnace app"), "{error}");
    assert!(registration(&created).is_none());
    assert!(registration(&first).is_some(), "the first app is untouched");
    assert_eq!(
        n.inspect("inspect", &first).unwrap()["status"]["state"],
        "CONTAINER_RUNNING"
    );
    n.remove_pod(&pod_id).unwrap();
}

/// An app over its memory limit is OOM-killed, and CRI says so.
#[test]
fn an_oom_kill_reaches_cri() {
    let n = node();
    let (pod_file, _) = pod(
        "oom",
        Some(guest()),
        &[("furnace.dev/limits", "memory=32Mi")],
    );
    let pod_id = n.run_pod(&pod_file).unwrap();
    let balloon = json!({
        "metadata": {"name": "app"},
        "image": {"image": "docker.io/furnace/probe:dev"},
        "command": ["/furnace-probe", "escape", "--only", "memory_balloon"],
        "log_path": "app.log",
        "linux": {},
    });
    let id = n
        .start_container(&pod_id, &n.config_file("ctr-oom.json", &balloon), &pod_file)
        .unwrap();
    let status = n.wait_exited(&id, EXIT_LIMIT).unwrap();
    assert_eq!(status["reason"], "OOMKilled", "{status}");
    n.remove_pod(&pod_id).unwrap();
}

/// On Kubernetes the app's key is a Secret kubelet mounts at the
/// partition's key path: the app seals to its tenant's real backend (in a
/// network namespace of its own) with that key, and the backend, which
/// allows that key alone, receives what the app sent.
#[test]
fn an_app_key_mounted_by_kubelet_reaches_the_tenants_backend() {
    use furnace_tests::tenant::{keygen, public_key, TenantNet, TestBackend};
    let n = node();
    let net = TenantNet::create("cri-key").expect("the tenant network is set up");
    let keys = tempfile::tempdir().unwrap();
    keygen(keys.path(), &["be", "scan"]).unwrap();
    let mut backend = TestBackend::start(&net, 7100, keys.path(), "be", &["scan"]).unwrap();
    let secret = n
        .kubelet_secret("uid-key", &keys.path().join("scan.key"))
        .unwrap();

    let address = format!("{}:7100", net.tenant_ip);
    let backend_key = public_key(keys.path(), "be");
    let extra = [
        ("furnace.dev/backend", address.as_str()),
        ("furnace.dev/backend-key", backend_key.as_str()),
    ];
    let (pod_file, _) = pod("key", Some(guest()), &extra);
    let pod_id = n.run_pod(&pod_file).unwrap();
    let app = json!({
        "metadata": {"name": "app"},
        "image": {"image": "docker.io/furnace/probe:dev"},
        "command": ["/furnace-probe", "fac", "notify:sealed-by-a-secret", "flush:10000"],
        "mounts": [{"container_path": "/run/furnace/app.key", "host_path": secret, "readonly": true}],
        "log_path": "app.log",
        "linux": {},
    });
    let id = n
        .start_container(&pod_id, &n.config_file("ctr-key.json", &app), &pod_file)
        .unwrap();
    let status = n.wait_exited(&id, EXIT_LIMIT).unwrap();
    let logs = n.crictl_ok(&["logs", &id]).unwrap();
    assert_eq!(status["exitCode"], 0, "{logs}");
    let got = backend
        .wait_message(
            Duration::from_secs(30),
            furnace_tests::tenants::from("scan", "notify", "sealed-by-a-secret"),
        )
        .unwrap_or_else(|e| panic!("the backend got nothing: {e}; the app said {logs}"));
    assert_eq!(got["app"], "scan");
    n.remove_pod(&pod_id).unwrap();
}

/// A file mounted at the key path from anywhere but kubelet's root is no
/// key: the app is refused, and nothing is copied or registered.
#[test]
fn a_key_mounted_from_outside_kubelets_root_is_refused() {
    use furnace_tests::tenant::{keygen, public_key};
    let n = node();
    let keys = tempfile::tempdir().unwrap();
    keygen(keys.path(), &["be"]).unwrap();
    let backend_key = public_key(keys.path(), "be");
    let extra = [
        ("furnace.dev/backend", "10.216.250.1:7100"),
        ("furnace.dev/backend-key", backend_key.as_str()),
    ];
    let (pod_file, _) = pod("stray-key", Some(guest()), &extra);
    let pod_id = n.run_pod(&pod_file).unwrap();
    let app = json!({
        "metadata": {"name": "app"},
        "image": {"image": "docker.io/furnace/probe:dev"},
        "command": ["/furnace-probe", "fac", "keys"],
        "mounts": [{"container_path": "/run/furnace/app.key", "host_path": "/etc/shadow", "readonly": true}],
        "log_path": "app.log",
        "linux": {},
    });
    let file = n.config_file("ctr-stray-key.json", &app);
    let created = n
        .crictl_ok(&[
            "create",
            &pod_id,
            file.to_str().unwrap(),
            pod_file.to_str().unwrap(),
        ])
        .unwrap();
    let out = n.crictl(&["start", &created]);
    assert!(
        !out.status.success(),
        "an app with /etc/shadow for a key started"
    );
    let error = errors_of(&out);
    assert!(
        error.contains("/etc/shadow") && error.contains("kubelet's root"),
        "{error}"
    );
    assert!(registration(&created).is_none());
    n.remove_pod(&pod_id).unwrap();
}
