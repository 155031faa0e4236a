//! `furnace-probe escape`: real attempts at breaking out, each run in a
//! forked child so that side effects (a new namespace, a chroot, a seccomp
//! kill) stay with the child and every attempt becomes a reported result.

use crate::{files, limits, syscalls, Startup};
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Every attempt, in report order: adding one is one line here.
pub const ATTEMPTS: &[(&str, Attempt)] = &[
    ("mount", syscalls::mount),
    ("unshare_user", syscalls::unshare_user),
    ("unshare_mount", syscalls::unshare_mount),
    ("unshare_net", syscalls::unshare_net),
    ("setns", syscalls::setns),
    ("chroot", syscalls::chroot),
    ("pivot_root", syscalls::pivot_root),
    ("ptrace_host_pid", syscalls::ptrace_host_pid),
    (
        "process_vm_readv_host_pid",
        syscalls::process_vm_readv_host_pid,
    ),
    ("keyctl", syscalls::keyctl),
    ("bpf", syscalls::bpf),
    ("perf_event_open", syscalls::perf_event_open),
    ("io_uring_setup", syscalls::io_uring_setup),
    ("userfaultfd", syscalls::userfaultfd),
    ("open_by_handle_at", syscalls::open_by_handle_at),
    ("kexec_load", syscalls::kexec_load),
    ("init_module", syscalls::init_module),
    ("finit_module", syscalls::finit_module),
    ("reboot", syscalls::reboot),
    ("socket_netlink", syscalls::socket_netlink),
    ("socket_inet", syscalls::socket_inet),
    ("socket_packet", syscalls::socket_packet),
    ("socket_raw", syscalls::socket_raw),
    ("sethostname", syscalls::sethostname),
    ("clock_settime", syscalls::clock_settime),
    ("iopl", syscalls::iopl),
    ("ioperm", syscalls::ioperm),
    ("swapon", syscalls::swapon),
    ("acct", syscalls::acct),
    ("capset", syscalls::capset),
    ("fanotify_init", syscalls::fanotify_init),
    ("syslog", syscalls::syslog),
    ("ioctl_tiocsti", syscalls::ioctl_tiocsti),
    ("sysrq_trigger", files::sysrq_trigger),
    ("dev_mem", files::dev_mem),
    ("dev_kmsg", files::dev_kmsg),
    ("mknod", files::mknod),
    ("proc_kcore", files::proc_kcore),
    ("proc_self_exe_overwrite", files::proc_self_exe_overwrite),
    ("write_sys", files::write_sys),
    ("proc_sys_write", files::proc_sys_write),
    ("proc_sys_core_pattern", files::proc_sys_core_pattern),
    ("cgroup_release_agent", files::cgroup_release_agent),
    ("cgroup_limits_write", files::cgroup_limits_write),
    ("leaked_host_fd", files::leaked_host_fd),
    ("sidecar_admin_socket", files::sidecar_admin_socket),
    ("other_app_socket", files::other_app_socket),
    ("fork_bomb", limits::fork_bomb),
    ("memory_balloon", limits::memory_balloon),
];

pub type Attempt = fn(&Context) -> Report;

/// How long one attempt may take before the probe kills it.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct Options {
    pub host_pid: i32,
    pub guest: String,
    pub other_socket: Option<PathBuf>,
    pub only: Option<Vec<String>>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            host_pid: 1,
            guest: "furnace-test".into(),
            other_socket: None,
            only: None,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "--host-pid" => {
                    let v = value()?;
                    options.host_pid = v.parse().map_err(|_| format!("bad --host-pid {v:?}"))?;
                }
                "--guest" => options.guest = value()?,
                "--other-socket" => options.other_socket = Some(value()?.into()),
                "--only" => {
                    let names: Vec<String> = value()?.split(',').map(str::to_string).collect();
                    if let Some(bad) = names.iter().find(|n| !ATTEMPTS.iter().any(|(a, _)| a == n))
                    {
                        return Err(format!("unknown attempt {bad:?}"));
                    }
                    options.only = Some(names);
                }
                other => return Err(format!("unknown escape option {other:?}")),
            }
        }
        Ok(options)
    }
}

/// What every attempt may look at.
pub struct Context {
    pub options: Options,
    pub startup: Startup,
    /// The probe's own pid (the attempt's parent).
    pub probe_pid: i32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    #[serde(default)]
    pub name: String,
    pub escaped: bool,
    pub outcome: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub data: Map<String, Value>,
}

/// Errors that mean the kernel refused on permission grounds (or does not
/// have the call at all).
pub fn is_denial(e: Errno) -> bool {
    matches!(e, Errno::EPERM | Errno::EACCES | Errno::ENOSYS)
}

impl Report {
    pub fn new(escaped: bool, outcome: impl Into<String>) -> Report {
        Report {
            escaped,
            outcome: outcome.into(),
            ..Report::default()
        }
    }

    /// Escaped iff the call succeeded.
    pub fn success<T>(result: &Result<T, Errno>) -> Report {
        Report::new(result.is_ok(), crate::outcome(result))
    }

    /// For calls made with deliberately invalid arguments that the kernel
    /// checks only after the caller's privilege: any error other than a
    /// denial means the privilege was there.
    pub fn privilege<T>(result: &Result<T, Errno>) -> Report {
        let mut report = Report::success(result);
        if let Err(e) = result {
            if !is_denial(*e) {
                report.escaped = true;
                report.detail = "past the kernel's privilege check (harmless arguments)".into();
            }
        }
        report
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Report {
        self.detail = detail.into();
        self
    }

    pub fn data(mut self, key: &str, value: Value) -> Report {
        self.data.insert(key.into(), value);
        self
    }
}

/// Several tries that make up one attempt: escaped if any escaped; the
/// outcome is the first escaped one's, else the first one's.
pub fn combine(tries: Vec<(String, Report)>) -> Report {
    let detail = tries
        .iter()
        .map(|(label, r)| match r.detail.as_str() {
            "" => format!("{label}: {}", r.outcome),
            d => format!("{label}: {} ({d})", r.outcome),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let chosen = tries
        .iter()
        .find(|(_, r)| r.escaped)
        .or(tries.first())
        .map(|(_, r)| r.clone())
        .unwrap_or_else(|| Report::new(false, "nothing to try"));
    Report { detail, ..chosen }
}

pub fn run(options: &Options, startup: &Startup) -> Value {
    let context = Context {
        options: options.clone(),
        startup: startup.clone(),
        probe_pid: nix::unistd::getpid().as_raw(),
    };
    let attempts: Vec<Report> = ATTEMPTS
        .iter()
        .filter(|(name, _)| match &options.only {
            Some(only) => only.iter().any(|o| o == name),
            None => true,
        })
        .map(|(name, attempt)| Report {
            name: name.to_string(),
            ..run_in_child(*attempt, &context)
        })
        .collect();
    json!({ "attempts": attempts })
}

fn run_in_child(attempt: Attempt, context: &Context) -> Report {
    let (reader, writer) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => return Report::new(false, format!("probe error: pipe: {e:?}")),
    };
    // SAFETY: the probe is single-threaded; the child only runs the attempt
    // and leaves with _exit.
    match unsafe { fork() } {
        Err(e) => Report::new(false, format!("probe error: fork: {e:?}")),
        Ok(ForkResult::Child) => {
            drop(reader);
            // When an attempt runs the container out of memory, the OOM
            // killer should pick the attempt, not the probe (often pid 1,
            // whose death ends the container and the report).
            let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
            let report = attempt(context);
            let text = serde_json::to_vec(&report).unwrap_or_default();
            let _ = std::fs::File::from(writer).write_all(&text);
            // SAFETY: leaves without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(writer);
            collect(child, reader)
        }
    }
}

fn collect(child: Pid, reader: OwnedFd) -> Report {
    let (text, timed_out) = read_until_eof(&reader, ATTEMPT_TIMEOUT);
    if timed_out {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    }
    let status = waitpid(child, None);
    if timed_out {
        return Report::new(false, "timeout")
            .detail(format!("killed after {}s", ATTEMPT_TIMEOUT.as_secs()));
    }
    match serde_json::from_slice::<Report>(&text) {
        Ok(report) => report,
        Err(_) => {
            let how = match status {
                Ok(WaitStatus::Signaled(_, signal, _)) => format!("killed by {signal:?}"),
                Ok(WaitStatus::Exited(_, code)) => format!("exited {code} without a report"),
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("waitpid: {e:?}"),
            };
            Report::new(false, how)
        }
    }
}

/// Reads `fd` to its end, giving up after `timeout`; true if it gave up.
pub fn read_until_eof(fd: &OwnedFd, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, true);
        }
        let mut poll_fd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, 60_000) as libc::c_int;
        // SAFETY: one valid pollfd.
        match Errno::result(unsafe { libc::poll(&mut poll_fd, 1, ms) }) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return (out, false),
        }
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => return (out, false),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) => {}
            Err(_) => return (out, false),
        }
    }
}
