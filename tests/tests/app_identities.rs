//! Each app partition runs as its own host id range, claimed by the shim
//! (`shim/src/id_ranges.rs`), so the sidecar's peer-uid check tells one app
//! from another. Two apps run at once on a real containerd, shim, guest and
//! sidecar; the test then hands app A app B's socket through a bind mount
//! in A's own mount namespace, the way a path leaking into the wrong
//! partition would, and A is refused both by the socket's owner and mode
//! and, with those opened up, by the sidecar itself.

use furnace_tests::ids::{partition_root_uid, range_index};
use furnace_tests::stack::FurnaceStack;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// The path the shim binds each app's socket at, inside its partition.
const APP_SOCKET_INSIDE: &str = "/run/furnace/vmi.sock";
const CLAIMS_DIR: &str = "/run/furnace/id-ranges";

fn start(stack: &FurnaceStack, id: &str) -> u32 {
    let config = stack
        .containerd
        .config_path()
        .with_file_name("furnace-exec.toml");
    std::fs::write(&config, "allow_exec = true\n").unwrap();
    stack
        .run_detached(
            id,
            &["--runtime-config-path", config.to_str().unwrap()],
            &["/furnace-probe", "hold"],
        )
        .unwrap();
    stack.task_pid(id).expect("the task runs")
}

fn vmi_ps(stack: &FurnaceStack, id: &str, exec_id: &str) -> Output {
    stack.containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        exec_id,
        id,
        "/furnace-probe",
        "vmi-ps",
    ])
}

fn text(out: &Output) -> String {
    format!(
        "{}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The claim file of the range `uid` starts, and who holds it.
fn claim_of(uid: u32) -> (PathBuf, String) {
    let index = range_index(uid).expect("a partition root starts a range");
    let path = Path::new(CLAIMS_DIR).join(index.to_string());
    let owner = std::fs::read_to_string(&path).unwrap_or_default();
    (path, owner)
}

fn sys(ret: libc::c_long, what: &str) -> std::io::Result<libc::c_long> {
    if ret < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(ret)
}

/// Mounts a clone of the host's `source` over `target` inside the mount
/// namespace of `pid`. It runs on a thread of its own: `setns` into a
/// mount namespace needs a thread that shares no filesystem context.
fn bind_into_namespace_of(pid: u32, source: &Path, target: &str) -> std::io::Result<()> {
    let source = CString::new(source.as_os_str().as_encoded_bytes()).unwrap();
    let target = CString::new(target).unwrap();
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
    std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: plain syscalls on owned, NUL-terminated strings and fds
        // this thread holds; the thread leaves the process's shared
        // filesystem context before it changes mount namespace.
        unsafe {
            sys(libc::unshare(libc::CLONE_FS).into(), "unshare")?;
            let tree = sys(
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    source.as_ptr(),
                    libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
                ),
                "open_tree",
            )?;
            let tree = OwnedFd::from_raw_fd(tree as i32);
            sys(
                libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS).into(),
                "setns",
            )?;
            sys(
                libc::syscall(
                    libc::SYS_move_mount,
                    tree.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    libc::MOVE_MOUNT_F_EMPTY_PATH,
                ),
                "move_mount",
            )?;
        }
        Ok(())
    })
    .join()
    .expect("the mounting thread does not panic")
}

fn wait_for_log(log: &Path, text: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(text)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Two apps at once: each runs as the root of its own claimed range, its
/// socket is its own, and app A handed B's socket is refused: first by the
/// kernel (B's socket is B's alone, 0600), then, with that socket opened to
/// everyone by the test, by the sidecar's peer-uid check. B is unaffected.
/// Removing A releases its claim.
#[test]
fn two_apps_have_their_own_host_ids_and_one_cannot_use_the_others_socket() {
    let stack = FurnaceStack::start("ids").expect("the Furnace stack starts");
    let a_pid = start(&stack, "ids-a");
    let b_pid = start(&stack, "ids-b");
    let (a_uid, b_uid) = (partition_root_uid(a_pid), partition_root_uid(b_pid));
    assert_ne!(a_uid, b_uid, "two running apps share a host uid");
    for (id, uid) in [("ids-a", a_uid), ("ids-b", b_uid)] {
        let socket = std::fs::metadata(stack.app_socket(id)).unwrap();
        assert_eq!(
            (socket.uid(), socket.mode() & 0o777),
            (uid, 0o600),
            "{id}'s socket is its own"
        );
        let (claim, owner) = claim_of(uid);
        assert!(
            owner.ends_with(&format!("/{id} app")),
            "{}: {owner:?}",
            claim.display()
        );
        let out = vmi_ps(&stack, id, "before");
        assert!(out.status.success(), "{id}: {}", text(&out));
    }

    let b_socket = stack.app_socket("ids-b");
    bind_into_namespace_of(a_pid, &b_socket, APP_SOCKET_INSIDE).unwrap();
    let out = vmi_ps(&stack, "ids-a", "handed-b-0600");
    assert!(!out.status.success(), "A used B's socket: {}", text(&out));
    assert!(
        text(&out).contains("Permission denied"),
        "the kernel refuses A at connect: {}",
        text(&out)
    );

    std::fs::set_permissions(&b_socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = vmi_ps(&stack, "ids-a", "handed-b-0666");
    std::fs::set_permissions(&b_socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(!out.status.success(), "A used B's socket: {}", text(&out));
    let log = stack.guest.dir.join("sidecar.log");
    assert!(
        wait_for_log(
            &log,
            "refused a connection from a uid the app was not registered for"
        ),
        "the sidecar logs its refusal of A ({}): {}",
        text(&out),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let refusal = log
        .lines()
        .find(|l| l.contains("refused a connection from a uid"))
        .unwrap_or_default();
    assert!(
        refusal.contains("ids-b") && refusal.contains(&format!("Some({a_uid})")),
        "the refusal names B's app and A's uid: {refusal}"
    );
    let out = vmi_ps(&stack, "ids-b", "after");
    assert!(out.status.success(), "B: {}", text(&out));

    stack.remove("ids-a");
    let (claim, owner) = claim_of(a_uid);
    assert!(
        !owner.ends_with("/ids-a app"),
        "{} still names the removed app: {owner:?}",
        claim.display()
    );
    stack.remove("ids-b");
    assert!(!claim_of(b_uid).1.ends_with("/ids-b app"));
}
