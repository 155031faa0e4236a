//! A private, real containerd for the end-to-end tests: Debian's containerd
//! 1.6 (`/usr/bin/containerd`), driven with the real `ctr`. There is no mock.
//!
//! Each [`TestContainerd`] has its own gRPC and ttrpc sockets under
//! `/run/furnace-test/containerd/<label>-<pid>/`, so tests never talk to the
//! system's containerd (`/run/containerd/containerd.sock`). Its root and
//! state are either private directories beside them, `0700 root` as on a
//! provider's host ([`Layout::Private`]), or containerd's own defaults
//! ([`Layout::Stock`]): no fixture is kinder than production. containerd is
//! started with [`shim_dir`] and [`bin_dir`] first on its `PATH`, which is
//! where containerd's runtime v2 looks up `containerd-shim-furnace-v1` for
//! `--runtime io.furnace.v1`.
//!
//! One thing is shared with the system: containerd 1.6 shims put their
//! sockets in `/run/containerd/s/<hash of address, namespace and id>`, so
//! the names never collide with the system's; the teardown removes those of
//! shims it had to kill.
//!
//! Teardown (on drop, or from an `atexit` hook for fixtures kept in statics)
//! kills and deletes what is left in the `furnace-test` namespace, stops this
//! containerd and any shim still serving it, lazily unmounts everything under
//! the fixture directory and removes it. Only processes the tests started are
//! signalled, by pid.

use crate::bin_dir;
use crate::host::{
    children_of, fresh_fixture_dir, has_exited, remove_cgroups, shims_of, sockets_of,
    stdout_if_success, stop, unmount_under, wait_gone, STOP_TIMEOUT,
};
use crate::stack::ROOTFS_ROOT;
use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// The real containerd and ctr binaries (Debian's containerd 1.6).
pub const CONTAINERD: &str = "/usr/bin/containerd";
pub const CTR: &str = "/usr/bin/ctr";
/// The containerd namespace every test works in.
pub const NAMESPACE: &str = "furnace-test";
/// Where fixture directories are created.
pub const FIXTURE_ROOT: &str = "/run/furnace-test/containerd";
/// The runtime name ctr and CRI use for Furnace.
pub const FURNACE_RUNTIME: &str = "io.furnace.v1";

const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds each `ctr` command the teardown runs.
const TEARDOWN_CTR_TIMEOUT: &str = "20s";

/// A running private containerd; see the module documentation.
pub struct TestContainerd {
    /// The fixture directory, `/run/furnace-test/containerd/<label>-<pid>`.
    pub dir: PathBuf,
    /// containerd's gRPC socket, `<dir>/containerd.sock` (what `ctr --address` takes).
    pub address: PathBuf,
    /// containerd's log (stdout and stderr, appended across restarts).
    pub log: PathBuf,
    pid: i32,
}

/// What the teardown needs, kept for the `atexit` hook.
struct Started {
    dir: PathBuf,
    address: PathBuf,
    pid: i32,
}

static STARTED: Mutex<Vec<Started>> = Mutex::new(Vec::new());
static ATEXIT: Once = Once::new();

extern "C" fn tear_down_started() {
    let started = std::mem::take(&mut *registry());
    for s in started {
        tear_down(&s);
    }
}

fn registry() -> std::sync::MutexGuard<'static, Vec<Started>> {
    STARTED.lock().unwrap_or_else(|p| p.into_inner())
}

/// The directories a [`TestContainerd`] keeps its root and state in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `<fixture>/root` and `<fixture>/state`, both `0700 root` as a
    /// containerd whose state directory predates it has them (containerd
    /// itself makes a new state directory 0711, and leaves an existing one
    /// as it is; a shim that ran first creates `/run/containerd` 0700).
    Private,
    /// containerd's own defaults, `/var/lib/containerd` and `/run/containerd`,
    /// as Debian's package runs it: the config names only the sockets.
    /// There can be one at a time on a machine.
    Stock,
    /// [`Layout::Private`]'s directories, with containerd's CRI plugin on
    /// and configured as docs/containerd-furnace.toml says (`crate::cri`).
    /// `restrict_oom_score_adj` is CRI's option of that name (see
    /// `crate::cri::containerd_config`).
    Cri { restrict_oom_score_adj: bool },
}

/// containerd's default root and state (`Layout::Stock`).
pub const STOCK_ROOT: &str = "/var/lib/containerd";
pub const STOCK_STATE: &str = "/run/containerd";

impl TestContainerd {
    /// [`TestContainerd::start_with`] on the [`Layout::Private`] layout.
    pub fn start(label: &str) -> Result<TestContainerd> {
        Self::start_with(label, Layout::Private)
    }

    /// Creates a fresh fixture directory for `label` (removing a stale one of
    /// the same name), writes its `config.toml`, starts containerd and waits
    /// until `ctr version` gets an answer from it (at most 10 s; on failure
    /// the error carries the tail of the log). The sockets and the log are in
    /// the fixture directory whatever the layout.
    pub fn start_with(label: &str, layout: Layout) -> Result<TestContainerd> {
        let dir = fresh_fixture_dir(Path::new(FIXTURE_ROOT), label)?;
        let address = dir.join("containerd.sock");
        let config = match layout {
            Layout::Private | Layout::Cri { .. } => {
                for sub in ["root", "state"] {
                    let path = dir.join(sub);
                    std::fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                }
                if let Layout::Cri {
                    restrict_oom_score_adj,
                } = layout
                {
                    crate::cri::containerd_config(&dir, &address, restrict_oom_score_adj)?
                } else {
                    private_config_toml(&dir, &address)
                }
            }
            Layout::Stock => {
                refuse_a_running_stock_containerd()?;
                sockets_only_config_toml(&address)
            }
        };
        std::fs::write(dir.join("config.toml"), config)?;
        let log = dir.join("containerd.log");
        let pid = match spawn(&dir.join("config.toml"), &log) {
            Ok(pid) => pid,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let containerd = TestContainerd {
            dir,
            address,
            log,
            pid,
        };
        ATEXIT.call_once(|| {
            // SAFETY: registering a plain extern "C" function has no preconditions.
            unsafe { libc::atexit(tear_down_started) };
        });
        registry().push(containerd.started());
        containerd.wait_ready()?;
        Ok(containerd)
    }

    /// containerd's pid.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// The config file containerd runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Runs `ctr --address <sock> --namespace furnace-test ARGS`, returning
    /// its output whatever the exit status.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args).output().expect("ctr runs")
    }

    /// `ctr` against this containerd, not yet started (for a long-running
    /// one such as `ctr events`).
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_in(NAMESPACE, args)
    }

    /// `ctr` in another containerd namespace (CRI's is `k8s.io`).
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Command {
        let mut command = Command::new(CTR);
        command
            .arg("--address")
            .arg(&self.address)
            .args(["--namespace", namespace])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Like [`TestContainerd::ctr`], returning stdout; fails with stderr when
    /// ctr exits non-zero.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        stdout_if_success(&format!("ctr {args:?}"), &self.ctr(args))
    }

    /// The server's version as `ctr version` prints it (e.g. `1.6.20~ds1`).
    pub fn server_version(&self) -> Result<String> {
        let out = self.ctr_ok(&["version"])?;
        server_version_of(&out)
            .with_context(|| format!("ctr version printed no server version:\n{out}"))
    }

    /// Imports an OCI archive (as `buildah push … oci-archive:FILE:NAME`
    /// writes it) with plain `ctr images import`, and returns the image name
    /// as ctr lists it: the archive's `org.opencontainers.image.ref.name`,
    /// unchanged (e.g. `furnace/probe:dev`). With several images in the
    /// archive, the first one ctr unpacks.
    pub fn import_image(&self, archive: &Path) -> Result<String> {
        let archive_str = archive.to_str().context("archive paths are UTF-8")?;
        let out = self.ctr_ok(&["images", "import", archive_str])?;
        // ctr prints `unpacking NAME (sha256:…)...done` per image.
        let name = out
            .lines()
            .filter_map(|l| l.strip_prefix("unpacking "))
            .filter_map(|l| l.split(" (sha256:").next())
            .next()
            .with_context(|| format!("ctr images import {archive_str} named no image:\n{out}"))?
            .to_owned();
        let listed = self.ctr_ok(&["images", "ls", "-q"])?;
        anyhow::ensure!(
            listed.lines().any(|l| l == name),
            "ctr unpacked {name} but does not list it:\n{listed}"
        );
        Ok(name)
    }

    /// Stops containerd with SIGTERM (waiting at most 5 s for it to exit) and
    /// starts it again with the same directories and sockets, then waits until
    /// it answers. Shims are separate processes and are left alone.
    pub fn restart(&mut self) -> Result<()> {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        if !wait_gone(self.pid, STOP_TIMEOUT) {
            bail!(
                "containerd {} did not exit within {STOP_TIMEOUT:?} of SIGTERM; log tail:\n{}",
                self.pid,
                log_tail(&self.log)
            );
        }
        self.pid = spawn(&self.config_path(), &self.log)?;
        if let Some(s) = registry().iter_mut().find(|s| s.dir == self.dir) {
            s.pid = self.pid;
        }
        self.wait_ready()
    }

    /// Pids of the `containerd-shim-*` processes serving this containerd:
    /// those whose command line carries `-address <this containerd's socket>`.
    pub fn pids_of_shims(&self) -> Vec<u32> {
        shims_of(&self.address)
    }

    fn started(&self) -> Started {
        Started {
            dir: self.dir.clone(),
            address: self.address.clone(),
            pid: self.pid,
        }
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if has_exited(self.pid) {
                bail!(
                    "containerd {} exited while starting; log tail:\n{}",
                    self.pid,
                    log_tail(&self.log)
                );
            }
            if self.address.exists() {
                let out = Command::new(CTR)
                    .arg("--address")
                    .arg(&self.address)
                    .args(["--connect-timeout", "1s", "version"])
                    .stdin(Stdio::null())
                    .output()?;
                if out.status.success() {
                    return Ok(());
                }
                last = String::from_utf8_lossy(&out.stderr).into_owned();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "containerd {} did not answer on {} within {READY_TIMEOUT:?} (last ctr error: {last}); log tail:\n{}",
            self.pid,
            self.address.display(),
            log_tail(&self.log)
        )
    }
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        registry().retain(|s| s.dir != self.dir);
        tear_down(&self.started());
    }
}

/// Where `scripts/build-shim.sh` puts the shim as installed (static, built
/// for size) with its launch helper: `target/furnace-shim`.
pub fn shim_dir() -> PathBuf {
    bin_dir().with_file_name("furnace-shim")
}

/// The `containerd-shim-furnace-v1` containerd will find first on its
/// `PATH` ([`shim_dir`]), checked together with the `furnace-init` beside
/// it that the shim runs every app under as PID 1 and the relay it starts
/// for an app with a backend; panics when one is
/// missing or older than the sources it is built from, naming the script
/// that builds them.
pub fn require_furnace_shim() -> PathBuf {
    let build = "run `scripts/build-shim.sh` (`make build` does)";
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let staged: [(&str, &[&str]); 3] = [
        (
            "containerd-shim-furnace-v1",
            &[
                "shim/src",
                "runtime/src",
                "runtime/seccomp",
                "config/src",
                "api/src",
                "facilities/broker/src",
            ],
        ),
        ("furnace-init", &["init/src"]),
        (
            "furnace-fac-relay",
            &["facilities/src", "facilities/broker/src", "api/src"],
        ),
    ];
    for (name, sources) in staged {
        let binary = shim_dir().join(name);
        let built = std::fs::metadata(&binary)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| panic!("{} is missing; {build}", binary.display()));
        for dir in sources {
            if let Some(newer) = newest_file(&workspace.join(dir)).filter(|(t, _)| *t > built) {
                panic!(
                    "{} is older than {}; {build}",
                    binary.display(),
                    newer.1.display()
                );
            }
        }
    }
    shim_dir().join("containerd-shim-furnace-v1")
}

fn newest_file(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            if path.is_dir() {
                newest_file(&path)
            } else {
                Some((e.metadata().ok()?.modified().ok()?, path))
            }
        })
        .max()
}

/// The workspace's `target/images/<name>.tar`, as `scripts/images.sh` builds
/// it; panics when it is missing.
pub fn image_archive(name: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace");
    let archive = workspace.join("target/images").join(format!("{name}.tar"));
    assert!(
        archive.is_file(),
        "{} is missing; run `scripts/images.sh` to build the test images",
        archive.display()
    );
    archive
}

/// Starts containerd with `config`, logging to `log` (appended), with
/// [`shim_dir`] and [`bin_dir`] first on its `PATH`; returns its pid.
fn spawn(config: &Path, log: &Path) -> Result<i32> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut dirs = vec![shim_dir(), bin_dir()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let child = Command::new(CONTAINERD)
        .arg("--config")
        .arg(config)
        .env("PATH", std::env::join_paths(dirs)?)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {CONTAINERD}"))?;
    // Waited for by pid (waitpid), so dropping the handle is fine.
    Ok(child.id() as i32)
}

/// A [`Layout::Stock`] containerd must be the only one on the stock
/// directories: a second one would wait forever for the metadata lock.
fn refuse_a_running_stock_containerd() -> Result<()> {
    let system_socket = Path::new(STOCK_STATE).join("containerd.sock");
    if !system_socket.exists() {
        return Ok(());
    }
    let answered = Command::new(CTR)
        .arg("--address")
        .arg(&system_socket)
        .args(["--connect-timeout", "1s", "version"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if answered {
        bail!(
            "a containerd already runs on the stock layout ({STOCK_ROOT}, {STOCK_STATE}; it answers on {}); \
             the stock-layout tests start their own there and cannot share it: stop it and run them again",
            system_socket.display()
        );
    }
    Ok(())
}

/// The `config.toml` of a [`Layout::Stock`] fixture: socket paths and
/// nothing else, so root, state and every plugin keep containerd's defaults.
fn sockets_only_config_toml(address: &Path) -> String {
    format!(
        r#"version = 2

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"
"#,
        address = address.display(),
    )
}

/// The `config.toml` of a [`Layout::Private`] fixture: version 2, private
/// root, state and sockets, CRI disabled (the tests use ctr, and CRI is slow
/// to start).
fn private_config_toml(dir: &Path, address: &Path) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        address = address.display(),
    )
}

/// The version in the `Server:` section of `ctr version`'s output.
fn server_version_of(out: &str) -> Option<String> {
    let server = out.split("Server:").nth(1)?;
    server
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// ctr for the teardown, with every call bounded.
fn teardown_ctr(address: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(CTR)
        .arg("--address")
        .arg(address)
        .args(["--namespace", NAMESPACE])
        .args(["--connect-timeout", "2s", "--timeout", TEARDOWN_CTR_TIMEOUT])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tear_down(s: &Started) {
    let mut containers = Vec::new();
    if !has_exited(s.pid) {
        let ids = |what: &str| -> Vec<String> {
            teardown_ctr(&s.address, &[what, "ls", "-q"])
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        };
        for task in ids("tasks") {
            let _ = teardown_ctr(&s.address, &["tasks", "kill", "-s", "SIGKILL", &task]);
            let _ = teardown_ctr(&s.address, &["tasks", "delete", "-f", &task]);
        }
        containers = ids("containers");
        for container in &containers {
            let _ = teardown_ctr(&s.address, &["containers", "delete", container]);
        }
    }
    if !stop(s.pid) {
        eprintln!("TestContainerd: containerd {} would not die", s.pid);
    }
    for shim in shims_of(&s.address) {
        let sockets = sockets_of(shim, "/run/containerd/s/");
        // A shim containerd could not clean up may still run a container's
        // init as its child: it dies too, and its (then empty) cgroup goes.
        for child in children_of(shim) {
            let cgroups = std::fs::read_to_string(format!("/proc/{child}/cgroup"));
            let _ = kill(Pid::from_raw(child as i32), Signal::SIGKILL);
            if wait_gone(child as i32, STOP_TIMEOUT) {
                remove_cgroups(&cgroups.unwrap_or_default());
            }
        }
        let _ = kill(Pid::from_raw(shim as i32), Signal::SIGKILL);
        if wait_gone(shim as i32, STOP_TIMEOUT) {
            sockets.iter().for_each(|s| drop(std::fs::remove_file(s)));
        } else {
            eprintln!("TestContainerd: shim {shim} would not die");
        }
    }
    // What the shims of this containerd's containers could not clean up
    // themselves (killed above) is left under the shim's rootfs directory.
    for container in &containers {
        let partition = Path::new(ROOTFS_ROOT).join(NAMESPACE).join(container);
        if partition.exists() {
            unmount_under(&partition);
            let _ = std::fs::remove_dir_all(&partition);
        }
    }
    unmount_under(&s.dir);
    if let Err(e) = std::fs::remove_dir_all(&s.dir) {
        eprintln!("TestContainerd: removing {}: {e}", s.dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_server_version() {
        let out = "Client:\n  Version:  1.6.20~ds1\n\nServer:\n  Version:  1.6.20~ds1\n  UUID: x\n";
        assert_eq!(server_version_of(out).as_deref(), Some("1.6.20~ds1"));
        assert_eq!(server_version_of("Client:\n  Version: 1\n"), None);
    }
}
