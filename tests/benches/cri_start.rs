//! What kubelet waits for when it starts a pod: CRI RunPodSandbox, then
//! CreateContainer and StartContainer of one app, timed with the real
//! crictl against containerd 1.6's CRI plugin (`furnace_tests::cri`), under
//! the RuntimeClass handler `furnace` and under `runc`, interleaved in one
//! run on one containerd. Both run the same probe image holding until
//! stopped; the pod's removal is not timed.
//!
//! Target (issue 16): `furnace` at most 1.0× `runc`, by medians.
//! `cargo bench -p furnace-tests --bench cri_start` (`make bench` runs all).

mod common;

use common::ms;
use furnace_tests::cri::{CriNode, HANDLER};
use serde_json::json;
use std::time::{Duration, Instant};

const ROUNDS: usize = 15;
const WARMUP: usize = 2;

fn start_pod(node: &CriNode, handler: &str, name: &str) -> (Duration, String) {
    let pod = json!({
        "metadata": {"name": name, "namespace": "bench", "uid": format!("uid-{name}"), "attempt": 0},
        "annotations": {"furnace.dev/guest": node.guest.name},
        "log_directory": node.containerd.dir.join("logs").join(name),
        "linux": {},
    });
    let app = json!({
        "metadata": {"name": "app"},
        "image": {"image": "docker.io/furnace/probe:dev"},
        "command": ["/furnace-probe", "hold"],
        "log_path": "app.log",
        "linux": {},
    });
    let pod_file = node.config_file(&format!("bench-pod-{name}.json"), &pod);
    let app_file = node.config_file(&format!("bench-app-{name}.json"), &app);
    let started = Instant::now();
    let pod_id = node
        .crictl_ok(&["runp", "--runtime", handler, pod_file.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{handler}: {e}"));
    node.start_container(&pod_id, &app_file, &pod_file)
        .unwrap_or_else(|e| panic!("{handler}: {e}"));
    (started.elapsed(), pod_id)
}

fn median(name: &str, samples: &mut [Duration]) -> f64 {
    samples.sort();
    let median = ms(samples[samples.len() / 2]);
    let p90 = ms(samples[(samples.len() * 9) / 10]);
    println!(
        "{name:<10} median {median:7.1} ms  p90 {p90:7.1} ms  (n={})",
        samples.len()
    );
    median
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // runc needs CRI's restrict_oom_score_adj on these machines (see
    // furnace_tests::cri::containerd_config); both runtimes get it.
    let node = CriNode::start_with("cri-bench", true).expect("the CRI node starts");
    println!("cri_start: {}, RunPodSandbox + CreateContainer + StartContainer, {ROUNDS} interleaved rounds after {WARMUP}", common::cpu_model());
    let (mut furnace, mut runc) = (Vec::new(), Vec::new());
    for round in 0..WARMUP + ROUNDS {
        // Alternate which goes first, so neither always follows the other's removal.
        let order = if round % 2 == 0 {
            [HANDLER, "runc"]
        } else {
            ["runc", HANDLER]
        };
        for handler in order {
            let (took, pod_id) = start_pod(&node, handler, &format!("{handler}-{round}"));
            node.remove_pod(&pod_id).expect("the pod is removed");
            if round >= WARMUP {
                if handler == HANDLER {
                    &mut furnace
                } else {
                    &mut runc
                }
                .push(took);
            }
        }
    }
    let f = median("furnace", &mut furnace);
    let r = median("runc", &mut runc);
    println!(
        "ratio furnace/runc (medians): {:.2}x (target <= 1.0x: {})",
        f / r,
        if f <= r { "pass" } else { "miss" }
    );
}
