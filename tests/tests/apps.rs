//! The example apps of `oci-images/` under `io.furnace.v1` (real containerd,
//! shim, guest and sidecar; images built from our Dockerfiles), each checked
//! against the guest's own view: `ps` against the guest's ps, `modules` (the
//! Python app) against its `/proc/modules`.

use furnace_api::{Module, Process};
use furnace_tests::stack::FurnaceStack;
use furnace_tests::GROUND_TRUTH_TIMEOUT;
use std::process::Output;
use std::sync::OnceLock;

const PYTHON: &str = "/usr/bin/python3";
const MODULES_APP: &str = "/usr/bin/furnace-modules";

fn stack() -> &'static FurnaceStack {
    static STACK: OnceLock<FurnaceStack> = OnceLock::new();
    STACK.get_or_init(|| FurnaceStack::start("apps").expect("the Furnace stack starts"))
}

/// `ctr run` of image `furnace/<app>:dev`; `argv` replaces the image's
/// entrypoint and command, as ctr does with arguments.
fn run(app: &str, id: &str, argv: &[&str]) -> Output {
    let s = stack();
    let image = s.import(app).expect("the app's image imports");
    s.run_app(&image, id, &[], argv)
}

fn stdout_of(what: &str, out: &Output) -> anyhow::Result<String> {
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_ps_app_sees_what_the_guests_own_ps_sees() {
    stack().guest.assert_ps_matches(|_| {
        let out = run("ps", "ps-json", &["/usr/bin/furnace-ps", "--json"]);
        Ok(serde_json::from_str::<Vec<Process>>(&stdout_of(
            "furnace-ps --json",
            &out,
        )?)?)
    });
}

/// The table a visitor reads (`make demo`): one row per process, the
/// workload's processes among them with the uid the guest gave them.
#[test]
fn the_ps_apps_table_names_the_workload() {
    let table = stdout_of("furnace/ps", &run("ps", "ps-table", &[])).unwrap();
    let mut rows = table.lines();
    assert_eq!(
        rows.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["PID", "PPID", "UID", "NAME", "TASK", "DTB"]
    );
    let gamma: Vec<&str> = rows
        .find(|r| r.contains("fworker-gamma"))
        .unwrap_or_else(|| panic!("no fworker-gamma row in:\n{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(gamma[2], furnace::guest::initramfs::TENANT_UID.to_string());
}

#[test]
fn the_python_modules_app_lists_proc_modules() {
    let g = &stack().guest;
    let truth = furnace::guest::console::modules(&g.dir, GROUND_TRUTH_TIMEOUT).unwrap();
    assert!(!truth.is_empty(), "the workload loads modules");
    let out = run("modules", "modules-json", &[PYTHON, MODULES_APP, "--json"]);
    let seen: Vec<Module> =
        serde_json::from_str(&stdout_of("furnace-modules --json", &out).unwrap())
            .expect("furnace/modules --json prints JSON");
    let truth: Vec<(String, u64)> = truth.into_iter().map(|m| (m.name, m.size)).collect();
    let seen: Vec<(String, u64)> = seen.into_iter().map(|m| (m.name, m.size)).collect();
    assert_eq!(seen, truth, "module list (name, size) in list order");
}

/// The Python base under the partition: the interpreter runs with the app's
/// seccomp filter on, no capabilities and a read-only root, and still works.
#[test]
fn python_runs_under_the_app_seccomp_profile() {
    let script = "import os, json\n\
        status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n\
        try:\n    open('/usr/lib/furnace-probe', 'w'); ro = False\n\
        except OSError as e:\n    ro = e.errno == 30\n\
        print(json.dumps({k: status[k].strip() for k in ('Seccomp', 'NoNewPrivs', 'CapEff')} | {'erofs': ro}))";
    let out = run("python", "python-policy", &[PYTHON, "-c", script]);
    let seen: serde_json::Value =
        serde_json::from_str(&stdout_of("python3 -c", &out).unwrap()).unwrap();
    assert_eq!(seen["Seccomp"], "2", "{seen}");
    assert_eq!(seen["NoNewPrivs"], "1");
    assert_eq!(seen["CapEff"], "0000000000000000");
    assert_eq!(seen["erofs"], true, "the root filesystem is read-only");
}

/// An app with no sidecar to talk to fails with the SDK's typed error, in its
/// own words, rather than a traceback or a hang.
#[test]
fn the_python_app_reports_a_missing_socket_clearly() {
    let out = run(
        "modules",
        "modules-nosock",
        &[PYTHON, MODULES_APP, "--socket", "/run/furnace/absent.sock"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("furnace-modules: /run/furnace/absent.sock:")
            && !stderr.contains("Traceback"),
        "{stderr}"
    );
}
