//! `ctr task exec` into a Furnace task whose provider config allows exec
//! (`allow_exec = true`, passed with `ctr run --runtime-config-path`), on a
//! real containerd, shim, guest and sidecar. The exec'd process must be as
//! locked in as the init: the kernel's own report from inside, and the
//! host's view of its namespaces and cgroups, are compared with the init's.

use furnace_tests::stack::FurnaceStack;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Output;
use std::sync::OnceLock;

fn stack() -> &'static FurnaceStack {
    static STACK: OnceLock<FurnaceStack> = OnceLock::new();
    STACK.get_or_init(|| FurnaceStack::start("exec").expect("the Furnace stack starts"))
}

/// A provider config that allows exec, in the containerd fixture's own
/// directory (removed with it).
fn exec_config() -> PathBuf {
    let path = stack()
        .containerd
        .config_path()
        .with_file_name("furnace-exec.toml");
    std::fs::write(&path, "allow_exec = true\n").unwrap();
    path
}

fn start_task(id: &str) {
    let config = exec_config();
    let config = config.to_str().unwrap();
    stack()
        .run_detached(
            id,
            &["--runtime-config-path", config],
            &["/furnace-probe", "hold"],
        )
        .unwrap();
}

fn exec(id: &str, exec_id: &str, extra: &[&str], args: &[&str]) -> Output {
    let mut argv = vec!["task", "exec", "--exec-id", exec_id];
    argv.extend_from_slice(extra);
    argv.push(id);
    argv.extend_from_slice(args);
    stack().containerd.ctr(&argv)
}

fn namespaces_of(pid: u32) -> Vec<String> {
    ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"]
        .iter()
        .map(|ns| {
            std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
                .map(|l| l.display().to_string())
                .unwrap_or_else(|e| format!("{ns}: {e}"))
        })
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
}

fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

/// The kernel's report from inside an exec'd probe: the init's seccomp
/// mode, no_new_privs, no capabilities, the same uid map, no fds but 0-2,
/// and a pid in the partition's pid namespace (not 1: that is the init).
/// Its exit code and both streams reach ctr.
#[test]
fn an_exec_is_locked_in_like_the_init() {
    let s = stack();
    start_task("execpolicy");
    let out = exec("execpolicy", "report", &[], &["/furnace-probe", "policy"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: Value = serde_json::from_slice(&out.stdout).expect("the probe prints JSON");
    assert_eq!(p["status"]["Seccomp"], "2", "{p}");
    assert_eq!(p["status"]["NoNewPrivs"], "1");
    assert_eq!(p["status"]["CapEff"], "0000000000000000");
    assert_eq!(p["status"]["CapPrm"], "0000000000000000");
    assert_eq!(p["status"]["CapBnd"], "0000000000000000");
    let mapped = p["uid_map"][0][1].as_u64().unwrap_or(0) as u32;
    assert!(furnace_tests::ids::range_index(mapped).is_some(), "{p}");
    assert_eq!(p["rootfs_write"], "EROFS");
    assert_eq!(p["interfaces"], serde_json::json!(["lo"]));
    assert_eq!(p["af_inet_socket"], "EPERM");
    assert_eq!(p["fds_at_start"], serde_json::json!([0, 1, 2]));
    assert_ne!(
        p["pid"], 1,
        "a second process in the partition's pid namespace"
    );
    assert_eq!(p["cgroup"]["pids.max"], "30");

    let out = exec(
        "execpolicy",
        "streams",
        &[],
        &["/bin/sh", "-c", "echo to-out; echo to-err >&2; exit 5"],
    );
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "to-out");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-err"));
    s.remove("execpolicy");
}

/// The host's view of a detached exec: the same seven namespaces and the
/// same cgroups as the init, the init's host uid, listed by `ctr task ps`;
/// `ctr task kill --exec-id` ends it alone, and the init keeps running.
#[test]
fn a_detached_exec_shares_the_partition_and_is_killed_alone() {
    let s = stack();
    start_task("execdetach");
    let init = s.task_pid("execdetach").expect("init pid");
    let out = exec(
        "execdetach",
        "holder",
        &["--detach"],
        &["/furnace-probe", "hold"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ps = s.containerd.ctr_ok(&["task", "ps", "execdetach"]).unwrap();
    let pids: Vec<u32> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    // Neither the init (furnace-init) nor the app it runs as its child.
    let exec_pid = *pids
        .iter()
        .find(|p| **p != init && parent_of(**p) != Some(init))
        .unwrap_or_else(|| panic!("no exec pid in {ps}"));
    assert_eq!(namespaces_of(exec_pid), namespaces_of(init));
    assert_eq!(cgroup_of(exec_pid), cgroup_of(init));
    assert_eq!(
        furnace_tests::ids::partition_root_uid(exec_pid),
        furnace_tests::ids::partition_root_uid(init)
    );

    s.containerd
        .ctr_ok(&["task", "kill", "--exec-id", "holder", "execdetach"])
        .unwrap();
    let gone = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        !PathBuf::from(format!("/proc/{exec_pid}")).exists()
    });
    assert!(gone, "the exec process {exec_pid} survived its kill");
    assert_eq!(s.task_status("execdetach").as_deref(), Some("RUNNING"));
    s.remove("execdetach");
}

/// What the policy refuses for an exec names the field: here a user other
/// than the container's (a terminal is refused the same way, tested in
/// furnace-runtime: `ctr task exec -t` needs a console this test has not).
/// An exec of a missing program fails with the errno from inside.
#[test]
fn an_exec_the_policy_refuses_says_why() {
    let s = stack();
    start_task("execrefuse");
    let out = exec("execrefuse", "user", &["--user", "1000"], &["/bin/true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("process.user"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = exec("execrefuse", "missing", &[], &["/no/such/program"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/no/such/program") && stderr.contains("ENOENT"),
        "{stderr}"
    );
    assert_eq!(s.task_status("execrefuse").as_deref(), Some("RUNNING"));
    s.remove("execrefuse");
}
