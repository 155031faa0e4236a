//! `exec`: a new process inside a running partition, from the launch helper.
//!
//! libcontainer 0.7's tenant builder rebuilds the spec's `linux` section
//! from the namespaces and cgroup path alone, so a process it execs runs
//! without the partition's seccomp filter (docs/shim.md). Furnace joins the
//! partition itself instead, the way `runc exec` does, and gives the process
//! everything the init has: cgroups, every namespace, user, groups,
//! rlimits, `no_new_privs`, no capabilities, and the same seccomp filter,
//! loaded last, just before `execve`.
//!
//! The helper forks a child that joins the cgroups and namespaces; the
//! child forks the process (a pid namespace applies to children only) and
//! exits, so the process passes to the shim, the nearest subreaper. A
//! failure before `execve` comes back as text on a close-on-exec pipe.
//! A filter that notifies its refusals sends its fd back to the helper,
//! which hands it to the partition's seccomp agent (`seccomp_handover`).

use super::protocol::{Reply, STDIO_FDS};
use super::seccomp_handover;
use libcgroups::common::{create_cgroup_manager, CgroupConfig, CgroupManager};
use libcontainer::syscall::syscall::create_syscall;
use nix::sched::CloneFlags;
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};
use oci_spec::runtime::{Process, Spec};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Joined in this order: the user namespace first, so the others (owned by
/// it) can be entered with the capabilities it grants; mount last.
const NAMESPACES: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `process` inside the partition whose init is `init_pid` and whose
/// hardened spec is `bundle/config.json`; the process's stdio is on
/// [`STDIO_FDS`]. Replies with its (host) pid.
pub(super) fn exec(bundle: &Path, init_pid: u32, process: &Process) -> Reply {
    match spawn(bundle, init_pid, process) {
        Ok(pid) => Reply::Created { pid },
        Err(message) => Reply::Failed { message },
    }
}

fn spawn(bundle: &Path, init_pid: u32, process: &Process) -> Result<u32, String> {
    let spec_path = bundle.join("config.json");
    let spec = Spec::load(&spec_path).map_err(|e| format!("read {}: {e}", spec_path.display()))?;
    let linux = spec.linux().clone().unwrap_or_default();
    let cgroups_path = linux
        .cgroups_path()
        .clone()
        .ok_or("the partition's spec has no cgroupsPath")?;
    let namespaces = open_namespaces(init_pid)?;
    let programs = candidates(process)?;
    let seccomp = linux.seccomp().as_ref();
    let agent = seccomp
        .filter(|s| libcontainer::seccomp::is_notify(s))
        .and_then(|s| s.listener_path().clone());
    let handover = match agent {
        Some(_) => Some(UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?),
        None => None,
    };

    // Nothing of the helper may be read through /proc once it is inside.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("prctl(PR_SET_DUMPABLE): {e}"))?;
    let (report_read, report_write) = pipe()?;
    let (pid_read, pid_write) = pipe()?;
    // SAFETY: the helper is single-threaded, so the child may do anything.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((report_read, pid_read));
            let outcome = join(&cgroups_path, &namespaces).and_then(|()| {
                // SAFETY: still single-threaded.
                match unsafe { fork() }.map_err(|e| format!("fork inside: {e}"))? {
                    ForkResult::Child => {
                        drop(pid_write);
                        let process_side = handover.as_ref().map(|(_, p)| p);
                        let err = become_process(process, &programs, seccomp, process_side);
                        report(&report_write, &err);
                        // SAFETY: leave without running the helper's exit handlers.
                        unsafe { libc::_exit(127) }
                    }
                    ForkResult::Parent { child } => {
                        let mut pid_write = File::from(pid_write);
                        pid_write
                            .write_all(child.as_raw().to_string().as_bytes())
                            .map_err(|e| format!("report the pid: {e}"))
                    }
                }
            });
            if let Err(err) = outcome {
                report(&report_write, &err);
            }
            // SAFETY: as above.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop((report_write, pid_write));
            let helper_side = handover.map(|(h, _)| h);
            let mut pid = String::new();
            let _ = File::from(pid_read).read_to_string(&mut pid);
            let _ = nix::sys::wait::waitpid(child, None);
            let started: Option<u32> = pid.trim().parse().ok();
            let handed = match (&helper_side, &agent, started) {
                (Some(side), Some(listener), Some(pid)) => {
                    hand_over(side, listener, bundle, init_pid, pid)
                }
                _ => Ok(()),
            };
            drop(helper_side);
            let mut failure = String::new();
            let _ = File::from(report_read).read_to_string(&mut failure);
            if !failure.is_empty() {
                return Err(failure);
            }
            handed?;
            started.ok_or_else(|| "the exec process was not started".into())
        }
    }
}

/// Forwards the exec process's notify fd, if it loaded its filter, to the
/// agent. A failure kills the process: its refusals would go uncounted.
fn hand_over(
    helper_side: &UnixStream,
    listener: &Path,
    bundle: &Path,
    init_pid: u32,
    pid: u32,
) -> Result<(), String> {
    let forwarded = seccomp_handover::receive(helper_side).and_then(|fd| match fd {
        Some(fd) => seccomp_handover::forward(
            helper_side,
            &fd,
            listener,
            &seccomp_handover::state(bundle, init_pid, pid),
        ),
        None => Ok(()),
    });
    if forwarded.is_err() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    forwarded
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn report(to: &OwnedFd, message: &str) {
    let _ = nix::unistd::write(to, message.as_bytes());
}

/// The init's namespaces that differ from the helper's own (joining one's
/// own user namespace is an error, and a sandbox has none of its own).
fn open_namespaces(init_pid: u32) -> Result<Vec<(File, CloneFlags)>, String> {
    let mut joined = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = format!("/proc/{init_pid}/ns/{name}");
        let file = File::open(&theirs).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("the task's init (pid {init_pid}) has exited"),
            _ => format!("open {theirs}: {e}"),
        })?;
        let ours = File::open(format!("/proc/self/ns/{name}"))
            .map_err(|e| format!("open /proc/self/ns/{name}: {e}"))?;
        let same = match (file.metadata(), ours.metadata()) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        };
        if !same {
            joined.push((file, flag));
        }
    }
    Ok(joined)
}

/// In the child: the partition's cgroups (from the host's view, so before
/// any namespace), then its namespaces.
fn join(cgroups_path: &Path, namespaces: &[(File, CloneFlags)]) -> Result<(), String> {
    let manager = create_cgroup_manager(CgroupConfig {
        cgroup_path: cgroups_path.to_owned(),
        systemd_cgroup: false,
        container_name: String::new(),
    })
    .map_err(|e| format!("cgroups {}: {e}", cgroups_path.display()))?;
    manager
        .add_task(Pid::this())
        .map_err(|e| format!("join cgroups {}: {e}", cgroups_path.display()))?;
    let syscall = create_syscall();
    for (file, flag) in namespaces {
        syscall
            .set_ns(file.as_raw_fd(), *flag)
            .map_err(|e| format!("setns({flag:?}): {e}"))?;
    }
    Ok(())
}

/// In the grandchild, now inside every namespace: becomes `process` and
/// execs the first of `programs` that exists; returns only on failure.
fn become_process(
    process: &Process,
    programs: &[CString],
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
    handover: Option<&UnixStream>,
) -> String {
    let (args, env) = match prepare(process) {
        Ok(argv) => argv,
        Err(e) => return e,
    };
    if let Some(filter) = seccomp {
        match libcontainer::seccomp::initialize_seccomp(filter) {
            Ok(Some(notify_fd)) => {
                let sent = handover
                    .ok_or_else(|| "a notifying filter but no agent to hand it to".to_string())
                    .and_then(|side| seccomp_handover::send(side, notify_fd));
                let _ = nix::unistd::close(notify_fd);
                if let Err(e) = sent {
                    return e;
                }
            }
            Ok(None) => {}
            Err(e) => return format!("load the partition's seccomp filter: {e}"),
        }
    }
    let mut last = nix::errno::Errno::ENOENT;
    for program in programs {
        let Err(e) = nix::unistd::execve(program, &args, &env);
        last = e;
        if !matches!(e, nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) {
            return format!("exec {}: {e}", program.to_string_lossy());
        }
    }
    let name = process
        .args()
        .iter()
        .flatten()
        .next()
        .cloned()
        .unwrap_or_default();
    format!("exec {name}: {last} (not found in the partition)")
}

type Argv = (Vec<CString>, Vec<CString>);

fn prepare(process: &Process) -> Result<Argv, String> {
    for (from, to) in STDIO_FDS.iter().zip(0..) {
        // SAFETY: dup2 onto 0, 1, 2 of fds the caller handed us.
        if unsafe { libc::dup2(*from, to) } < 0 {
            return Err(format!("stdio: {}", std::io::Error::last_os_error()));
        }
    }
    let syscall = create_syscall();
    syscall
        .close_range(0)
        .map_err(|e| format!("close inherited fds: {e}"))?;
    let user = process.user();
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    syscall
        .set_groups(&groups)
        .map_err(|e| format!("setgroups: {e}"))?;
    syscall
        .set_id(Uid::from_raw(user.uid()), Gid::from_raw(user.gid()))
        .map_err(|e| format!("set uid {} gid {}: {e}", user.uid(), user.gid()))?;
    for rlimit in process.rlimits().iter().flatten() {
        syscall
            .set_rlimit(rlimit)
            .map_err(|e| format!("rlimit {:?}: {e}", rlimit.typ()))?;
    }
    nix::unistd::chdir(process.cwd())
        .map_err(|e| format!("chdir {}: {e}", process.cwd().display()))?;
    if process.no_new_privileges() == Some(true) {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    }
    let caps = process.capabilities().clone().unwrap_or_default();
    libcontainer::capabilities::drop_privileges(&caps, syscall.as_ref())
        .map_err(|e| format!("drop capabilities: {e}"))?;
    let cstrings = |v: &[String]| -> Result<Vec<CString>, String> {
        v.iter()
            .map(|s| CString::new(s.as_bytes()).map_err(|_| format!("{s:?} holds a NUL byte")))
            .collect()
    };
    let args = cstrings(process.args().as_deref().unwrap_or_default())?;
    let env = cstrings(process.env().as_deref().unwrap_or_default())?;
    Ok((args, env))
}

/// Where `args[0]` may be: itself when it holds a slash, else each
/// directory of the process's own `PATH` joined with it, tried in order
/// inside the partition (its root, not the helper's).
fn candidates(process: &Process) -> Result<Vec<CString>, String> {
    let program = process
        .args()
        .as_ref()
        .and_then(|a| a.first())
        .ok_or("the exec process has no args")?;
    let paths: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        let search = process
            .env()
            .iter()
            .flatten()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        search
            .split(':')
            .filter(|dir| !dir.is_empty())
            .map(|dir| Path::new(dir).join(program))
            .collect()
    };
    paths
        .into_iter()
        .map(|p| {
            CString::new(p.into_os_string().into_encoded_bytes())
                .map_err(|_| format!("{program:?} holds a NUL byte"))
        })
        .collect()
}
