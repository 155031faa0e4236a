//! Shared fixtures for the end-to-end tests: the real test guest (booted
//! through the `furnace` binary), the binaries under test, and ground truth
//! from the guest's own view.
//!
//! Guests are stopped when the test process exits (an `atexit` hook), so a
//! failing or panicking test does not leave QEMU behind.

use anyhow::{bail, Context, Result};
use furnace::guest::console::{self, GuestProcess};
use furnace::guest::initramfs::{TENANT_UID, WORKERS};
use furnace_api::Process;
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::driver::VmControl;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

pub mod audit;
pub mod containerd;
pub mod cri;
pub mod docker;
pub mod go_tools;
mod host;
pub mod ids;
pub mod kube;
pub use host::stdout_if_success;
pub mod relays;
pub mod running;
pub mod stack;
pub mod tenant;
pub mod tenants;
pub mod walks;

pub const GUEST_ROOT: &str = "/run/furnace/guests";
pub const GROUND_TRUTH_TIMEOUT: Duration = Duration::from_secs(60);

/// Serializes the tests of one test binary that must not overlap on its
/// shared guest (a pause, a breakpoint, a signal's timing).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the release binaries are: `FURNACE_BIN_DIR` (set by `make test`) or
/// the target directory this test binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FURNACE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_owned()
}

pub fn furnace_bin() -> PathBuf {
    let bin = bin_dir().join("furnace");
    assert!(
        bin.is_file(),
        "{} is missing; run `make test` (it builds the binaries first)",
        bin.display()
    );
    bin
}

/// Runs `furnace ARGS`, returning its output whatever the exit status.
pub fn furnace(args: &[&str]) -> Output {
    Command::new(furnace_bin())
        .args(args)
        .output()
        .expect("furnace runs")
}

/// Runs `furnace ARGS` and parses its stdout as JSON; fails with stderr if it failed.
pub fn furnace_json<T: serde::de::DeserializeOwned>(args: &[&str]) -> Result<T> {
    let out = furnace(args);
    if !out.status.success() {
        bail!(
            "furnace {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("furnace {args:?} printed no JSON"))
}

static STARTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

extern "C" fn stop_started_guests() {
    let names = std::mem::take(&mut *STARTED.lock().unwrap_or_else(|p| p.into_inner()));
    for name in names {
        let _ = Command::new(furnace_bin())
            .args(["guest", "down", &name])
            .output();
    }
}

/// A booted test guest.
pub struct TestGuest {
    pub name: String,
    pub dir: PathBuf,
    /// Held while a test pauses the guest, so other tests' ground truth stays prompt.
    pausing: Mutex<()>,
}

impl TestGuest {
    /// Boots `furnace guest up` with a name unique to this process and `extra` flags.
    pub fn start(label: &str, extra: &[&str]) -> Result<TestGuest> {
        let name = format!("t-{label}-{}", std::process::id());
        {
            let mut started = STARTED.lock().unwrap_or_else(|p| p.into_inner());
            if started.is_empty() {
                // SAFETY: registering a plain extern "C" function has no preconditions.
                unsafe { libc::atexit(stop_started_guests) };
            }
            started.push(name.clone());
        }
        let mut args = vec!["guest", "up", name.as_str()];
        args.extend_from_slice(extra);
        let out = furnace(&args);
        if !out.status.success() {
            bail!(
                "furnace guest up {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dir = PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .trim(),
        );
        anyhow::ensure!(
            dir.is_dir(),
            "guest up printed {dir:?}, which is not a directory"
        );
        Ok(TestGuest {
            name,
            dir,
            pausing: Mutex::new(()),
        })
    }

    /// The guest a benchmark measures: the running one named by
    /// `FURNACE_BENCH_GUEST_DIR`, or a fresh boot labelled `label`.
    pub fn for_bench(label: &str) -> Result<TestGuest> {
        let Some(dir) = std::env::var_os("FURNACE_BENCH_GUEST_DIR") else {
            eprintln!("booting a test guest (set FURNACE_BENCH_GUEST_DIR to use a running one)...");
            return TestGuest::start(label, &[]);
        };
        let dir = PathBuf::from(dir);
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("the guest directory is named after the guest")?
            .to_owned();
        Ok(TestGuest {
            name,
            dir,
            pausing: Mutex::new(()),
        })
    }

    pub fn dir_str(&self) -> &str {
        self.dir.to_str().expect("guest directories are UTF-8")
    }

    /// The guest's own process list, fresh.
    pub fn ground_truth_ps(&self) -> Result<Vec<GuestProcess>> {
        console::processes(&self.dir, GROUND_TRUTH_TIMEOUT)
    }

    /// Takes the guest's own ps, then, with the guest paused, what `observe`
    /// sees, and asserts the (pid, name) sets are equal and the workload's
    /// processes have the parent and uid the guest reports. Kernel worker
    /// threads may come and go between the two looks, so a mismatch is retried
    /// twice before the test fails.
    pub fn assert_ps_matches(&self, observe: impl Fn(&QemuGuest) -> Result<Vec<Process>>) {
        let _one_at_a_time = self.pausing.lock().unwrap_or_else(|p| p.into_inner());
        let qemu = QemuGuest::attach(&self.dir).expect("attach for pause/resume");
        let mut last = String::new();
        for _ in 0..3 {
            let truth = self.ground_truth_ps().expect("the guest prints its ps");
            qemu.pause().expect("pause");
            let seen = observe(&qemu);
            qemu.resume().expect("resume");
            let seen = seen.expect("VMI reads the process list");
            match set_difference(&ground_truth_set(&truth), &vmi_set(&seen)) {
                None => return assert_workers_as_in_guest(&truth, &seen),
                Some(diff) => last = diff,
            }
        }
        panic!("VMI's process list differs from the guest's ps three times running:\n{last}");
    }

    /// Runs `f` with the guest stopped over QMP, one such look at a time
    /// (shared with [`TestGuest::assert_ps_matches`]), and resumes it after.
    pub fn while_paused<T>(&self, f: impl FnOnce() -> T) -> T {
        let _one_at_a_time = self.pausing.lock().unwrap_or_else(|p| p.into_inner());
        let qemu = QemuGuest::attach(&self.dir).expect("attach for pause/resume");
        qemu.pause().expect("pause");
        let result = f();
        qemu.resume().expect("resume");
        result
    }

    /// Kills QEMU outright, as a crash would.
    pub fn kill_qemu(&self) -> Result<()> {
        let pid: i32 = std::fs::read_to_string(self.dir.join("qemu.pid"))?
            .trim()
            .parse()?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}/exe")).exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("QEMU {pid} did not die")
    }
}

fn assert_workers_as_in_guest(truth: &[GuestProcess], seen: &[Process]) {
    for worker in WORKERS {
        let t = truth
            .iter()
            .find(|p| p.name == *worker)
            .unwrap_or_else(|| panic!("the guest runs {worker}"));
        let s = seen
            .iter()
            .find(|p| p.name == *worker)
            .unwrap_or_else(|| panic!("VMI sees {worker}"));
        assert_eq!(s.ppid, t.ppid, "{worker} ppid");
        let uid = match t.user.as_str() {
            "root" => 0,
            "tenant" => TENANT_UID,
            other => panic!("unexpected user {other}"),
        };
        assert_eq!(s.uid, uid, "{worker} uid");
        assert_ne!(s.dtb, 0, "{worker} is a user process and has page tables");
    }
}

/// The kernel's workqueue workers show their current queue in `ps`
/// (`kworker/0:1-events`, see `wq_worker_comm`); the task's own comm is the
/// part before the first '-'. Every other name is compared exactly.
pub fn comm_as_ps_shows_it(guest_ps_name: &str) -> String {
    match guest_ps_name.strip_prefix("kworker/") {
        Some(rest) => format!("kworker/{}", rest.split('-').next().unwrap_or(rest)),
        None => guest_ps_name.to_owned(),
    }
}

pub fn ground_truth_set(ps: &[GuestProcess]) -> BTreeSet<(u32, String)> {
    ps.iter()
        .map(|p| (p.pid, comm_as_ps_shows_it(&p.name)))
        .collect()
}

pub fn vmi_set(ps: &[Process]) -> BTreeSet<(u32, String)> {
    ps.iter().map(|p| (p.pid, p.name.clone())).collect()
}

/// Describes how two (pid, name) sets differ, or `None` when equal.
pub fn set_difference(
    truth: &BTreeSet<(u32, String)>,
    seen: &BTreeSet<(u32, String)>,
) -> Option<String> {
    if truth == seen {
        return None;
    }
    Some(format!(
        "only in the guest's ps: {:?}\nonly in VMI: {:?}",
        truth.difference(seen).collect::<Vec<_>>(),
        seen.difference(truth).collect::<Vec<_>>()
    ))
}

/// The kernel cache directory of the current kernel (`make test` sets it).
pub fn kernel_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("FURNACE_KERNEL_DIR").expect(
        "FURNACE_KERNEL_DIR is not set; run the tests with `make test`, which fetches the kernel first",
    ))
}

static SIDECARS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

extern "C" fn stop_started_sidecars() {
    let pids = std::mem::take(&mut *SIDECARS.lock().unwrap_or_else(|p| p.into_inner()));
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The real `furnace-vmi-sidecar` serving a test guest. Killed when the test
/// process exits (an `atexit` hook), or earlier by [`TestSidecar::kill`].
pub struct TestSidecar {
    pub child: Mutex<std::process::Child>,
    pub admin_socket: PathBuf,
}

impl TestSidecar {
    pub fn start(guest: &TestGuest, extra: &[&str]) -> Result<TestSidecar> {
        let admin_socket = guest.dir.join("admin.sock");
        let _ = std::fs::remove_file(&admin_socket);
        let log = std::fs::File::create(guest.dir.join("sidecar.log"))?;
        let child = Command::new(bin_dir().join("furnace-vmi-sidecar"))
            .args(["--guest", &guest.name, "--guest-dir", guest.dir_str()])
            .args(extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting furnace-vmi-sidecar")?;
        {
            let mut pids = SIDECARS.lock().unwrap_or_else(|p| p.into_inner());
            if pids.is_empty() {
                // SAFETY: registering a plain extern "C" function has no preconditions.
                unsafe { libc::atexit(stop_started_sidecars) };
            }
            pids.push(child.id() as i32);
        }
        let sidecar = TestSidecar {
            child: Mutex::new(child),
            admin_socket,
        };
        for _ in 0..200 {
            if let Ok(admin) = furnace_api::Admin::connect(&sidecar.admin_socket) {
                if admin.health().is_ok() {
                    return Ok(sidecar);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the sidecar did not answer on {} within 10 s; see {}/sidecar.log",
            sidecar.admin_socket.display(),
            guest.dir.display()
        )
    }

    /// SIGKILLs the sidecar, as a crash would, and reaps it.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn admin(&self) -> furnace_api::Admin {
        furnace_api::Admin::connect(&self.admin_socket).expect("the sidecar's admin socket answers")
    }

    /// The pid of the sidecar's confined worker: the supervisor's one child.
    pub fn worker_pid(&self) -> i32 {
        let supervisor = self.child.lock().unwrap_or_else(|p| p.into_inner()).id() as i32;
        let children = children_of(supervisor);
        assert_eq!(
            children.len(),
            1,
            "the sidecar {supervisor} has one child, its worker: {children:?}"
        );
        children[0]
    }

    /// Registers `app` with `permissions` (as for `furnace sidecar register`) and returns its socket.
    pub fn register(
        &self,
        app: &str,
        permissions: &[furnace_api::v1::Permission],
        uid: u32,
    ) -> PathBuf {
        let request = furnace_api::v1::RegisterRequest {
            app_id: app.into(),
            permissions: permissions.iter().map(|p| *p as i32).collect(),
            uid,
            gid: uid,
        };
        PathBuf::from(
            self.admin()
                .register(&request)
                .expect("register")
                .socket_path,
        )
    }
}

/// The pids whose parent is `parent`, from `/proc/*/stat`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let after_comm = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
        if after_comm.split_whitespace().nth(1) == Some(&parent.to_string()) {
            children.push(pid);
        }
    }
    children
}

/// `/proc/<pid>/status` as key → value.
pub fn proc_status(pid: i32) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/<pid>/status")
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// A test guest with its sidecar, the fixture most API tests share.
pub struct GuestWithSidecar {
    pub guest: TestGuest,
    pub sidecar: TestSidecar,
}

impl GuestWithSidecar {
    pub fn start(label: &str) -> Result<GuestWithSidecar> {
        let guest = TestGuest::start(label, &[])?;
        let sidecar = TestSidecar::start(&guest, &[])?;
        Ok(GuestWithSidecar { guest, sidecar })
    }
}

/// Waits (polling QMP every 5 ms, up to `timeout`) until QEMU reports the
/// guest not running: something, such as a sync event, holds it.
pub fn wait_until_held(qemu: &QemuGuest, timeout: Duration) {
    use furnace_vmi::driver::RunState;
    let since = std::time::Instant::now();
    while qemu.run_state().expect("query-status") == RunState::Running {
        assert!(
            since.elapsed() < timeout,
            "nothing held the guest within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether QEMU reports the guest running, asked over QMP.
pub fn guest_running(guest: &TestGuest) -> bool {
    use furnace_vmi::driver::RunState;
    let qemu = QemuGuest::attach(&guest.dir).expect("attach");
    qemu.run_state().expect("query-status") == RunState::Running
}

/// Runs the Python SDK's `python3 -m furnace_vmi ARGS` with Debian's python3.
pub fn python_sdk(args: &[&str]) -> Output {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/python");
    Command::new("/usr/bin/python3")
        .arg("-m")
        .arg("furnace_vmi")
        .args(args)
        .env("PYTHONPATH", sdk)
        .output()
        .expect("python3 runs")
}
