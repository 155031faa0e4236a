//! The operator's resident memory with 100 FurnaceApps, against a real
//! control plane (`furnace_tests::kube`): the operator runs as its own
//! service account, reconciles the 100 apps into their pods, and after it
//! has settled its resident set is sampled while idle. Its reflectors cache
//! every FurnaceApp, FurnaceGuest and app pod, so this is what 100 apps cost
//! it. Printed beside the target, and beside the resident sets of the
//! control plane's own Go controllers measured in the same run, which watch
//! the same objects.
//!
//! Target (issue 16): at most 32 MiB idle.
//! `cargo bench -p furnace-tests --bench operator_memory` (`make bench` runs all).

use furnace_tests::kube::operator::resident_kib;
use furnace_tests::kube::{app_manifest, install_furnace, repo, ControlPlane, RunningOperator};
use std::time::Duration;

const APPS: usize = 100;
const TARGET_MIB: f64 = 32.0;
/// How long it stays idle before the samples, and between them.
const SETTLE: Duration = Duration::from_secs(20);
const SAMPLES: usize = 10;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let plane = ControlPlane::start("operator-bench").expect("the control plane starts");
    install_furnace(&plane).expect("the CRDs and manifests apply");
    plane
        .kubectl_ok(&["create", "namespace", "tenant-a"])
        .unwrap();
    plane
        .kubectl_ok(&[
            "apply",
            "-f",
            repo("k8s/manifests/examples/guest.yaml").to_str().unwrap(),
        ])
        .unwrap();
    let operator = RunningOperator::start(&plane, "bench").expect("the operator starts");
    operator
        .wait_leading(&plane, Duration::from_secs(60))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = operator.resident_kib().unwrap();
    let apps: String = (0..APPS)
        .map(|i| {
            app_manifest(
                "tenant-a",
                &format!("app-{i}"),
                "guest-1",
                "  permissions: [read, events]\n  limits:\n    memory: 64Mi\n    pids: 30\n",
            ) + "---\n"
        })
        .collect();
    plane.apply_ok(&apps).unwrap();
    operator
        .wait_for(
            &plane,
            Duration::from_secs(300),
            "all apps reconciled",
            || {
                let listed = plane.get_json(&["furnaceapps", "-n", "tenant-a"]).ok()?;
                let items = listed["items"].as_array()?;
                (items.len() == APPS
                    && items
                        .iter()
                        .all(|a| a["status"]["podName"] == a["metadata"]["name"]))
                .then_some(())
            },
        )
        .unwrap();
    let pods = plane
        .get_json(&["pods", "-n", "tenant-a", "-l", "operator.furnace.dev/app"])
        .unwrap();
    assert_eq!(pods["items"].as_array().unwrap().len(), APPS);

    std::thread::sleep(SETTLE);
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        samples.push(operator.resident_kib().unwrap());
        std::thread::sleep(Duration::from_secs(1));
    }
    operator.check_alive().unwrap();
    samples.sort_unstable();
    let idle = samples[SAMPLES / 2];
    let peak = samples[SAMPLES - 1];
    let reconciles = operator
        .metric("furnace_operator_reconciles_total")
        .unwrap();

    println!("operator resident memory, {APPS} FurnaceApps with their pods, idle");
    println!("  leading, no app: {:>7.1} MiB", mib(before));
    println!(
        "  idle, median:    {:>7.1} MiB  ({:.2}× the {TARGET_MIB} MiB target: {})",
        mib(idle),
        mib(idle) / TARGET_MIB,
        if mib(idle) <= TARGET_MIB {
            "pass"
        } else {
            "FAIL"
        }
    );
    println!("  idle, highest:   {:>7.1} MiB", mib(peak));
    println!("  reconcile passes: {reconciles}");
    println!("the control plane's own controllers, same run:");
    for name in ["kube-controller-manager", "kube-scheduler"] {
        let pid = plane.pid_of(name).expect("the component runs");
        let kib = resident_kib(pid).unwrap();
        println!(
            "  {name:<24} {:>7.1} MiB  (operator: {:.2}×)",
            mib(kib),
            mib(idle) / mib(kib)
        );
    }
}
