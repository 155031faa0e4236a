//! The partition policy seen from inside a container under `io.furnace.v1`
//! (real containerd, shim, guest and sidecar; the probe image from our
//! Dockerfile): what the kernel reports to the app, an escape battery that
//! must fail attempt by attempt, and VMI through the mounted socket.

use furnace_api::v1::Permission;
use furnace_api::Process;
use furnace_tests::stack::FurnaceStack;
use serde_json::Value;
use std::sync::OnceLock;

fn stack() -> &'static FurnaceStack {
    static STACK: OnceLock<FurnaceStack> = OnceLock::new();
    STACK.get_or_init(|| FurnaceStack::start("part").expect("the Furnace stack starts"))
}

fn probe(id: &str, args: &[&str]) -> Value {
    let out = stack().run(id, &[], args);
    assert!(
        out.status.success(),
        "probe {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the probe prints JSON")
}

/// Seccomp filter mode, no_new_privs, no capabilities, a non-root host uid,
/// EROFS, only `lo`, EPERM for AF_INET, fds 0-2 only, and the cgroup limits
/// of DESIGN.md read back from the app's own cgroup files.
#[test]
fn the_kernel_reports_the_policy_to_the_app() {
    let p = probe("policy", &["/furnace-probe", "policy"]);
    assert_eq!(p["status"]["Seccomp"], "2", "{p}");
    assert_eq!(p["status"]["NoNewPrivs"], "1");
    assert_eq!(p["status"]["CapEff"], "0000000000000000");
    assert_eq!(p["status"]["CapPrm"], "0000000000000000");
    assert_eq!(p["status"]["CapBnd"], "0000000000000000");
    let map = &p["uid_map"][0];
    assert_eq!(map[0], 0, "container root…");
    assert!(map[1].as_u64().unwrap() >= 1000, "…is no host root: {map}");
    assert_eq!(p["gid_map"][0][1], map[1]);
    assert_eq!(p["rootfs_write"], "EROFS");
    assert_eq!(p["tmp_write"], "ok");
    assert_eq!(p["interfaces"], serde_json::json!(["lo"]));
    assert_eq!(p["af_inet_socket"], "EPERM");
    assert_eq!(p["fds_at_start"], serde_json::json!([0, 1, 2]));
    assert_eq!(
        p["pid"], 2,
        "own pid namespace, under furnace-init as PID 1"
    );
    assert_eq!(p["vmi_socket"], "socket");
    assert_eq!(p["cgroup"]["pids.max"], "30");
    assert_eq!(
        p["cgroup"]["memory.limit_in_bytes"],
        (300u64 << 20).to_string()
    );
    assert_eq!(p["cgroup"]["cpu.cfs_quota_us"], "200000");
    assert_eq!(p["cgroup"]["cpu.cfs_period_us"], "100000");
}

/// The host's view of a running app: its init runs as the first host uid
/// of one of the provider's id ranges, not as root.
#[test]
fn the_app_runs_as_an_unprivileged_host_uid() {
    let s = stack();
    s.run_detached("hostuid", &[], &["/furnace-probe", "hold"])
        .unwrap();
    let pid = s.task_pid("hostuid").expect("pid");
    let uid = furnace_tests::ids::partition_root_uid(pid);
    assert_eq!(furnace_tests::ids::of(pid, "Gid"), [uid; 4]);
    s.remove("hostuid");
}

/// The attempts `furnace-probe escape` makes (`tests/probe/src/escape.rs`),
/// in report order: one dropped or renamed fails the battery.
const ESCAPE_ATTEMPTS: [&str; 49] = [
    "mount",
    "unshare_user",
    "unshare_mount",
    "unshare_net",
    "setns",
    "chroot",
    "pivot_root",
    "ptrace_host_pid",
    "process_vm_readv_host_pid",
    "keyctl",
    "bpf",
    "perf_event_open",
    "io_uring_setup",
    "userfaultfd",
    "open_by_handle_at",
    "kexec_load",
    "init_module",
    "finit_module",
    "reboot",
    "socket_netlink",
    "socket_inet",
    "socket_packet",
    "socket_raw",
    "sethostname",
    "clock_settime",
    "iopl",
    "ioperm",
    "swapon",
    "acct",
    "capset",
    "fanotify_init",
    "syslog",
    "ioctl_tiocsti",
    "sysrq_trigger",
    "dev_mem",
    "dev_kmsg",
    "mknod",
    "proc_kcore",
    "proc_self_exe_overwrite",
    "write_sys",
    "proc_sys_write",
    "proc_sys_core_pattern",
    "cgroup_release_agent",
    "cgroup_limits_write",
    "leaked_host_fd",
    "sidecar_admin_socket",
    "other_app_socket",
    "fork_bomb",
    "memory_balloon",
];

/// 49 escape attempts from inside, each asserted to fail, with the errno
/// or signal the kernel returned; a memory balloon is OOM-killed inside the
/// partition while a second app and the sidecar carry on.
#[test]
fn the_escape_battery_fails_attempt_by_attempt() {
    let s = stack();
    let other = s
        .sidecar
        .register("escape-other", &[Permission::Read], 100_000);
    s.run_detached("neighbour", &[], &["/furnace-probe", "hold"])
        .unwrap();
    let neighbour = s.task_pid("neighbour").expect("pid");
    let host_pid = s.containerd.pid().to_string();
    let report = probe(
        "escape",
        &[
            "/furnace-probe",
            "escape",
            "--host-pid",
            &host_pid,
            "--guest",
            &s.guest.name,
            "--other-socket",
            other.to_str().unwrap(),
        ],
    );
    let attempts = report["attempts"].as_array().expect("attempts");
    let made: Vec<&str> = attempts
        .iter()
        .map(|a| a["name"].as_str().expect("each attempt has a name"))
        .collect();
    assert_eq!(made, ESCAPE_ATTEMPTS, "the attempts the battery made");
    let escaped: Vec<&Value> = attempts.iter().filter(|a| a["escaped"] != false).collect();
    assert!(escaped.is_empty(), "escaped: {escaped:#?}");
    let outcome = |name: &str| -> String {
        attempts
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("no attempt {name}"))["outcome"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for seccomp_denied in [
        "mount",
        "unshare_user",
        "setns",
        "chroot",
        "keyctl",
        "bpf",
        "perf_event_open",
        "io_uring_setup",
        "userfaultfd",
        "open_by_handle_at",
        "kexec_load",
        "init_module",
        "reboot",
        "socket_netlink",
        "socket_inet",
        "socket_packet",
    ] {
        assert_eq!(outcome(seccomp_denied), "EPERM", "{seccomp_denied}");
    }
    assert!(["ESRCH", "EPERM"].contains(&outcome("ptrace_host_pid").as_str()));
    assert!(["ENOENT", "EACCES", "EROFS"].contains(&outcome("sysrq_trigger").as_str()));
    assert!(["ENOENT", "EACCES", "EPERM"].contains(&outcome("dev_mem").as_str()));
    assert!(["EACCES", "ETXTBSY", "EROFS", "EPERM"]
        .contains(&outcome("proc_self_exe_overwrite").as_str()));
    assert_eq!(outcome("leaked_host_fd"), "EBADF");
    assert!(["ENOENT", "EACCES"].contains(&outcome("sidecar_admin_socket").as_str()));
    assert!(["ENOENT", "EACCES"].contains(&outcome("other_app_socket").as_str()));
    let bomb = attempts.iter().find(|a| a["name"] == "fork_bomb").unwrap();
    assert_eq!(bomb["outcome"], "EAGAIN");
    assert!(bomb["data"]["children"].as_u64().unwrap() < 30, "{bomb}");
    let balloon = attempts
        .iter()
        .find(|a| a["name"] == "memory_balloon")
        .unwrap();
    assert_eq!(balloon["outcome"], "SIGKILL", "{balloon}");
    assert!(balloon["data"]["mib"].as_u64().unwrap() <= 300, "{balloon}");

    assert_eq!(
        s.task_pid("neighbour"),
        Some(neighbour),
        "the other app still runs"
    );
    assert_eq!(s.task_status("neighbour").as_deref(), Some("RUNNING"));
    assert!(
        s.sidecar.admin().health().is_ok(),
        "the sidecar still answers"
    );
    s.remove("neighbour");
    s.sidecar.admin().unregister("escape-other").unwrap();
}

/// An app reads the guest's process list through `/run/furnace/vmi.sock`,
/// and it equals the guest's own ps.
#[test]
fn an_app_sees_the_guests_own_ps_through_its_socket() {
    let s = stack();
    s.guest.assert_ps_matches(|_| {
        let out = s.run("vmips", &[], &["/furnace-probe", "vmi-ps"]);
        anyhow::ensure!(
            out.status.success(),
            "vmi-ps: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice::<Vec<Process>>(&out.stdout)?)
    });
    assert!(
        s.traces_of("vmips").is_empty(),
        "{:?}",
        s.traces_of("vmips")
    );
}

/// An OOM kill inside a partition reaches containerd as a TaskOOM event
/// for that container (what CRI reports as OOMKilled), seen on
/// `ctr events`; the app itself carries on and exits normally.
#[test]
fn an_oom_kill_is_published_as_task_oom() {
    let s = stack();
    let log = s.containerd.config_path().with_file_name("events-oom.log");
    let mut events = s
        .containerd
        .ctr_command(&["events"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ctr events starts");
    let logged = |what: &[&str]| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().any(|l| what.iter().all(|w| l.contains(w)))
    };
    // Subscribed once an event of our own (a namespace label) shows up.
    let subscribed = (0..50).any(|round| {
        let label = format!("oom-test={round}");
        let _ = s.containerd.ctr(&[
            "namespaces",
            "label",
            furnace_tests::containerd::NAMESPACE,
            &label,
        ]);
        std::thread::sleep(std::time::Duration::from_millis(100));
        logged(&["/namespaces/update"])
    });

    let report = probe(
        "oomkill",
        &["/furnace-probe", "escape", "--only", "memory_balloon"],
    );
    let seen = subscribed
        && (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            logged(&["/tasks/oom", "oomkill"])
        });
    let _ = events.kill();
    let _ = events.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        subscribed,
        "ctr events never showed our namespace label: {text}"
    );
    assert!(
        seen,
        "no /tasks/oom for oomkill in: {text}\nprobe: {report}"
    );
}
