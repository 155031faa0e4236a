//! `ctr` against `io.furnace.v1`, end to end: a real containerd started by
//! the test (own root, state and socket), the real shim, a real guest and
//! sidecar, and the probe image built from our Dockerfile. No mocks.

use furnace_tests::containerd::NAMESPACE;
use furnace_tests::stack::FurnaceStack;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

fn stack() -> &'static FurnaceStack {
    static STACK: OnceLock<FurnaceStack> = OnceLock::new();
    STACK.get_or_init(|| FurnaceStack::start("shim").expect("the Furnace stack starts"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..100 {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after 10 s waiting for {what}");
}

/// `ctr run --rm` exits with the command's exit code, and both streams arrive.
#[test]
fn run_passes_exit_code_stdout_and_stderr() {
    let s = stack();
    let out = s.run("exitcode", &[], &["/furnace-probe", "exit", "7"]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "out");
    assert!(
        text(&out.stderr).contains("err"),
        "stderr: {}",
        text(&out.stderr)
    );
    let out = s.run(
        "shell",
        &[],
        &["/bin/sh", "-c", "echo hello from sh; exit 0"],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "hello from sh");
    assert!(
        s.traces_of("exitcode").is_empty(),
        "{:?}",
        s.traces_of("exitcode")
    );
}

/// ps, metrics, pause, resume, kill and delete on a detached task, each
/// checked against the host: the cgroup's procs, its limit files, the
/// freezer state; and nothing left after delete.
#[test]
fn task_ps_metrics_pause_resume_kill_delete() {
    let s = stack();
    let id = "lifecycle";
    s.run_detached(id, &[], &["/furnace-probe", "hold"])
        .unwrap();
    let pid = s.task_pid(id).expect("the task has a pid");
    let cgroup = format!("furnace/{NAMESPACE}/{id}");

    let ps = s.containerd.ctr_ok(&["task", "ps", id]).unwrap();
    assert!(
        ps.lines()
            .any(|l| l.split_whitespace().next() == Some(&pid.to_string())),
        "{ps}"
    );
    let procs =
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/{cgroup}/cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "{procs}"
    );

    let metrics = s.containerd.ctr_ok(&["task", "metrics", id]).unwrap();
    let value = |key: &str| {
        metrics
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(key)).then(|| f.next().map(str::to_owned))?
            })
            .unwrap_or_else(|| panic!("{key} missing from:\n{metrics}"))
    };
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/{cgroup}/memory.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(value("memory.limit_in_bytes"), limit.trim());
    assert_eq!(value("memory.limit_in_bytes"), (300u64 << 20).to_string());
    assert_eq!(value("pids.limit"), "30");

    let freezer = format!("/sys/fs/cgroup/freezer/{cgroup}/freezer.state");
    s.containerd.ctr_ok(&["task", "pause", id]).unwrap();
    assert_eq!(std::fs::read_to_string(&freezer).unwrap().trim(), "FROZEN");
    assert_eq!(s.task_status(id).as_deref(), Some("PAUSED"));
    s.containerd.ctr_ok(&["task", "resume", id]).unwrap();
    assert_eq!(std::fs::read_to_string(&freezer).unwrap().trim(), "THAWED");
    assert_eq!(s.task_status(id).as_deref(), Some("RUNNING"));

    s.containerd
        .ctr_ok(&["task", "kill", "-s", "SIGKILL", id])
        .unwrap();
    wait_until("the task to stop", || {
        s.task_status(id).as_deref() == Some("STOPPED")
    });
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the init is gone"
    );
    let deleted = s.containerd.ctr(&["task", "delete", id]);
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    assert!(
        text(&deleted.stderr).contains("137"),
        "SIGKILL's status: {}",
        text(&deleted.stderr)
    );
    s.containerd.ctr_ok(&["container", "delete", id]).unwrap();
    assert_eq!(s.traces_of(id), Vec::<String>::new());
}

/// `--log-uri binary:///…` (nerdctl's log driver: a logger reading fds 3
/// and 4) and `--log-uri file:///…` both receive the app's output.
#[test]
fn log_uri_binary_and_file() {
    let s = stack();
    let dir = tempfile::tempdir().unwrap();
    let logger = dir.path().join("logger.sh");
    std::fs::write(
        &logger,
        format!(
            "#!/bin/sh\n# containerd's logging protocol: stdout on 3, stderr on 4, ready when 5 closes\nexec 5>&-\ncat <&3 > {0}/stdout.log &\ncat <&4 > {0}/stderr.log\nwait\necho \"$CONTAINER_NAMESPACE/$CONTAINER_ID\" > {0}/who\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let uri = format!("binary://{}", logger.display());
    let out = s.run(
        "binlog",
        &["--log-uri", &uri],
        &["/furnace-probe", "exit", "3"],
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    wait_until("the logger to finish", || dir.path().join("who").exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stdout.log"))
            .unwrap()
            .trim(),
        "out"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stderr.log"))
            .unwrap()
            .trim(),
        "err"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("who"))
            .unwrap()
            .trim(),
        format!("{NAMESPACE}/binlog")
    );

    let file = dir.path().join("app.log");
    let uri = format!("file://{}", file.display());
    let out = s.run(
        "filelog",
        &["--log-uri", &uri],
        &["/furnace-probe", "exit", "0"],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let logged = std::fs::read_to_string(&file).unwrap();
    assert!(
        logged.contains("out") && logged.contains("err"),
        "{logged:?}"
    );
}

/// A detached task outlives a containerd restart and is still managed
/// afterwards: listed with the same pid, killed, waited for and deleted.
#[test]
fn a_detached_task_survives_a_containerd_restart() {
    // Restarting containerd would disturb the other tests' ctr calls.
    let mut s = FurnaceStack::start("restart").expect("a second stack");
    let id = "survivor";
    s.run_detached(id, &[], &["/furnace-probe", "hold"])
        .unwrap();
    let pid = s.task_pid(id).expect("pid");
    let shims = s.containerd.pids_of_shims();
    assert_eq!(shims.len(), 1, "one shim serves the task: {shims:?}");

    s.containerd.restart().unwrap();
    assert_eq!(s.task_pid(id), Some(pid), "same task after the restart");
    assert_eq!(s.task_status(id).as_deref(), Some("RUNNING"));
    assert_eq!(s.containerd.pids_of_shims(), shims, "the same shim");
    s.containerd.ctr_ok(&["task", "pause", id]).unwrap();
    s.containerd.ctr_ok(&["task", "resume", id]).unwrap();
    s.containerd
        .ctr_ok(&["task", "kill", "-s", "SIGKILL", id])
        .unwrap();
    wait_until("the task to stop", || {
        s.task_status(id).as_deref() == Some("STOPPED")
    });
    s.containerd.ctr_ok(&["task", "delete", id]).unwrap();
    s.containerd.ctr_ok(&["container", "delete", id]).unwrap();
    assert_eq!(s.traces_of(id), Vec::<String>::new());
    wait_until("the shim to exit", || {
        s.containerd.pids_of_shims().is_empty()
    });
}
