//! End-to-end: the sidecar's privilege separation (docs/sidecar.md), on a
//! real guest. The process that holds the app sockets and parses guest
//! memory is checked from the host, in `/proc`; then the worker, confined
//! exactly as when it serves, attempts what a parser taken over by a
//! hostile guest would, and each attempt must be refused by the kernel
//! (errno) or by the helper.

use furnace_api::v1::Permission;
use furnace_tests::*;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::OnceLock;

fn fixture() -> &'static GuestWithSidecar {
    static FIXTURE: OnceLock<GuestWithSidecar> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        GuestWithSidecar::start("confine").expect("the guest and its sidecar start")
    })
}

/// Whether process `pid` holds an open descriptor on socket inode `inode`.
fn holds_socket(pid: i32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == wanted))
}

/// The inode of the listening unix socket bound at `path`, from /proc/net/unix.
fn listening_inode(path: &std::path::Path) -> u64 {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let path = path.to_str().unwrap();
    table
        .lines()
        .skip(1)
        .find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path; flags 00010000 = listening.
            (cols.len() == 8 && cols[7] == path && cols[3] == "00010000")
                .then(|| cols[6].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no listening socket at {path} in /proc/net/unix"))
}

#[test]
fn the_process_serving_the_apps_has_no_privilege() {
    let f = fixture();
    let socket = f
        .sidecar
        .register("confined-app", &[Permission::Read], 4242);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().uid(),
        4242,
        "the helper chowned it"
    );
    let worker = f.sidecar.worker_pid();
    let supervisor = f.sidecar.child.lock().unwrap().id() as i32;
    let inode = listening_inode(&socket);
    assert!(
        holds_socket(worker, inode),
        "the worker listens on the app's socket"
    );
    assert!(
        !holds_socket(supervisor, inode),
        "the helper kept no copy of it"
    );

    let status = proc_status(worker);
    println!(
        "worker {worker}: Uid {} | Gid {} | CapEff {} | CapPrm {} | CapBnd {} | NoNewPrivs {} | Seccomp {} | Seccomp_filters {}",
        status["Uid"], status["Gid"], status["CapEff"], status["CapPrm"], status["CapBnd"],
        status["NoNewPrivs"], status["Seccomp"], status.get("Seccomp_filters").map_or("?", |s| s)
    );
    assert_eq!(status["CapEff"], "0000000000000000");
    assert_eq!(status["CapPrm"], "0000000000000000");
    assert_eq!(status["CapBnd"], "0000000000000000");
    assert_eq!(status["NoNewPrivs"], "1");
    assert_eq!(status["Seccomp"], "2", "a seccomp filter");
    for ids in ["Uid", "Gid"] {
        let all: Vec<&str> = status[ids].split_whitespace().collect();
        assert_eq!(
            all, ["99000"; 4],
            "{ids}: real, effective, saved and fs ids are the worker's"
        );
    }
    assert_eq!(status["Groups"], "", "no supplementary groups");
    // Its own network namespace, which has no device but a loopback that is down.
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(
        ns(worker),
        ns(supervisor),
        "the worker has a network namespace of its own"
    );
    let devices = std::fs::read_to_string(format!("/proc/{worker}/net/dev")).unwrap();
    let names: Vec<&str> = devices
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(names, ["lo"]);

    // And it still serves: the app reads the guest's processes through it.
    let vmi = furnace_api::Vmi::connect(&socket).unwrap();
    f.guest.assert_ps_matches(|_| Ok(vmi.processes()?));
    f.sidecar.admin().unregister("confined-app").unwrap();
    assert!(
        !socket.exists(),
        "the helper removed the socket on unregister"
    );
}

#[test]
fn a_taken_over_worker_is_refused_files_sockets_exec_signals_and_monitor_commands() {
    let f = fixture();
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(bin_dir().join("furnace-vmi-sidecar"))
        .args(["--guest", "check", "--guest-dir", f.guest.dir_str()])
        .arg("--socket-root")
        .arg(root.path())
        .arg("--confinement-check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the check ran: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "one JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report["uid"], 99000);
    let banner = f.sidecar.admin().health().unwrap().kernel_banner;
    assert_eq!(
        report["banner"],
        banner.as_str(),
        "the confined worker still reads the guest"
    );

    let outcome = |attempt: &str| -> String {
        let a = report["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["attempt"] == attempt)
            .unwrap_or_else(|| panic!("no attempt {attempt:?}"));
        assert_eq!(a["refused"], true, "{attempt} was not refused: {a}");
        a["outcome"].as_str().unwrap().to_owned()
    };
    // Landlock refuses paths outside the guest directory, readable or not.
    assert_eq!(outcome("open /etc/shadow"), "EACCES");
    assert_eq!(outcome("open /etc/passwd"), "EACCES");
    // seccomp: no sockets of any family, no exec, no signals to others.
    assert_eq!(outcome("socket AF_INET"), "EPERM");
    assert_eq!(outcome("socket AF_UNIX"), "EPERM");
    assert_eq!(outcome("execve /bin/true"), "EPERM");
    assert_eq!(outcome("kill the supervisor"), "EPERM");
    // The helper: no QMP beyond the driver's commands, no gdb monitor commands.
    let hmp = outcome("QMP human-monitor-command");
    assert!(hmp.contains("refused by the sidecar's helper"), "{hmp}");
    outcome("gdb qRcmd (monitor command)");
    assert!(
        stderr.contains("refused a request the helper does not serve"),
        "the helper logged the QMP refusal: {stderr}"
    );
    assert!(
        stderr.contains("\"qRcmd,"),
        "the helper logged the refused gdb packet: {stderr}"
    );
    // The refused debugger session left the guest running, breakpoints cleared.
    assert!(
        guest_running(&f.guest),
        "the guest runs after the refused gdb session"
    );
    assert!(!f.guest.dir.join("gdb.sock.owner").exists());
}
