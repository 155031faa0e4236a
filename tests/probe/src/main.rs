//! `furnace-probe`: runs inside a Furnace partition and reports, as one JSON
//! document on stdout, what it can and cannot do. The end-to-end tests parse
//! this output, so the field names below are a contract: add fields freely,
//! but do not rename or remove any.
//!
//! An *outcome* is a string: `"ok"` when the call succeeded, else the errno's
//! name as `nix::errno::Errno`'s `Debug` prints it (`"EPERM"`, `"EROFS"`, …),
//! or a short description for the few outcomes that are no errno
//! (`"SIGKILL"`, `"timeout"`).
//!
//! # `furnace-probe policy`
//!
//! One object:
//!
//! - `fds_at_start`: `[int]`, the fds open when `main` began (from
//!   `/proc/self/fd`, without the fd that listed it).
//! - `status`: `{Seccomp, NoNewPrivs, CapEff, CapPrm, CapBnd, Uid, Gid}`, each
//!   the string value from `/proc/self/status`, trimmed, with runs of
//!   whitespace turned into one space (`"Uid": "0 0 0 0"`).
//! - `uid_map`, `gid_map`: `[[inside, outside, count]]`.
//! - `rootfs_write`: outcome of creating `/furnace-probe-write-test`.
//! - `tmp_write`: outcome of writing a file in `/tmp`.
//! - `interfaces`: `[string]`, sorted; `interfaces_source`: `"getifaddrs"` or
//!   `"/proc/net/dev"` (used when `getifaddrs` fails, e.g. netlink is denied).
//! - `af_inet_socket`: outcome of `socket(AF_INET, SOCK_STREAM, 0)`.
//! - `cgroup`: `{"pids.max", "memory.limit_in_bytes", "memory.max",
//!   "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max"}`, each the file's
//!   trimmed contents, or the outcome of the last path tried when none could be
//!   read; `cgroup_sources`: `{file: path it was read from}`; `cgroup_paths`:
//!   `{controller: path}` from `/proc/self/cgroup` (`""` is the v2 entry).
//! - `hostname`: string; `pid`: int (1 in a pid namespace); `cwd`: string or
//!   the outcome of `getcwd`.
//! - `vmi_socket`: `"socket"` when `/run/furnace/vmi.sock` is a unix socket,
//!   `"not a socket"`, or the outcome of `stat`.
//! - `masked_paths`: `{path: "null" | "empty" | "visible" | outcome}` for the
//!   usual masked `/proc` and `/sys` paths: `"null"` is a bind of `/dev/null`,
//!   `"empty"` an empty directory.
//! - `mounts`: `[{mount_point, fstype, options, super_options}]` from
//!   `/proc/self/mountinfo`.
//! - `errors`: `{field: message}` for fields that could not be collected.
//!
//! # `furnace-probe escape [--host-pid N] [--guest G] [--other-socket PATH] [--only a,b]`
//!
//! `{"attempts": [{name, escaped, outcome, detail, data}]}`, one entry per
//! attempt in this order (`escape::ATTEMPTS`): `mount`, `unshare_user`,
//! `unshare_mount`, `unshare_net`, `setns`, `chroot`, `pivot_root`,
//! `ptrace_host_pid`, `process_vm_readv_host_pid`, `keyctl`, `bpf`,
//! `perf_event_open`, `io_uring_setup`, `userfaultfd`, `open_by_handle_at`,
//! `kexec_load`, `init_module`, `finit_module`, `reboot`, `socket_netlink`,
//! `socket_inet`, `socket_packet`, `socket_raw`, `sethostname`,
//! `clock_settime`, `iopl`, `ioperm`, `swapon`, `acct`, `capset`,
//! `fanotify_init`, `syslog`, `ioctl_tiocsti`, `sysrq_trigger`, `dev_mem`,
//! `dev_kmsg`, `mknod`, `proc_kcore`, `proc_self_exe_overwrite`, `write_sys`,
//! `proc_sys_write`, `proc_sys_core_pattern`, `cgroup_release_agent`,
//! `cgroup_limits_write`, `leaked_host_fd`, `sidecar_admin_socket`,
//! `other_app_socket`, `fork_bomb`, `memory_balloon`.
//!
//! `escaped` is true only when the dangerous thing actually worked. Mostly
//! that means the call succeeded; the exceptions:
//! - `pivot_root`, `process_vm_readv_host_pid`, `open_by_handle_at`,
//!   `kexec_load`, `init_module`, `finit_module`, `swapon`, `acct` pass
//!   harmless arguments the kernel rejects only after checking privilege, so
//!   any errno but EPERM, EACCES or ENOSYS (and ESRCH for the pid ones) is
//!   an escape;
//! - `ptrace_host_pid` and `process_vm_readv_host_pid` never escape when
//!   the pid is the probe itself (pid 1 by default in a pid namespace);
//! - `mknod` escapes only if the node it made also opens;
//! - `proc_kcore` escapes only if it reads bytes (`"empty"` when masked);
//! - `leaked_host_fd` (outcome `"EBADF"` when clean, `"leaked"` otherwise)
//!   escapes if any fd >= 3 was open at start or `getcwd` fails or is
//!   unreachable; `data`: `leaked_fds`, `cwd`;
//! - `fork_bomb` escapes at 4096 children; `data.children`;
//! - `memory_balloon` escapes at 4 GiB; the outcome is `"SIGKILL"` when the
//!   OOM killer stopped it; `data`: `mib`, `signal`, `exit_code`.
//!
//! Attempts made of several tries (`setns`, `dev_kmsg`, `write_sys`,
//! `proc_self_exe_overwrite`, `cgroup_*`, `other_app_socket`) report the
//! first escaped try's outcome, else the first try's, and every try in
//! `detail`. `detail` is free text; `data` an object, often empty. Each
//! attempt runs in a forked child, so a seccomp kill or a crash becomes an
//! outcome (`"killed by SIGSYS"`) instead of ending the probe; a hung one is
//! killed after 120 s (`"timeout"`). `--only` runs the named attempts only.
//! Defaults: `--host-pid 1`, `--guest furnace-test`.
//!
//! # `furnace-probe vmi-ps [--socket PATH]`
//!
//! The guest's processes as a JSON array, serialized exactly as
//! `furnace vmi ps --json` prints them (`furnace_api::v1::Process`). Default
//! socket: `/run/furnace/vmi.sock`. On error: the error on stderr, exit 1.
//!
//! # `furnace-probe vmi-hammer N MS`
//!
//! N `WritePhysical` calls through `/run/furnace/vmi.sock`, MS ms apart, one
//! line per call with its error code (`NOT_PERMITTED` for an app without
//! `write`).
//!
//! # `furnace-probe refuse N [hold]`
//!
//! Exactly N syscalls the filter refuses (`refuse.rs`), then
//! `{"made": N, "outcomes": {"EPERM": N}}`; with `hold`, then as `hold`.
//!
//! # `furnace-probe fac STEP...`
//!
//! The app's facilities session, one JSON line per step (`fac.rs` lists
//! the steps and the line's fields).
//!
//! # `furnace-probe hold`
//!
//! Prints `ready\n`, then sleeps until a signal ends it; on SIGTERM, SIGINT or
//! SIGHUP it exits with 128 + the signal's number (as pid 1 of a pid
//! namespace it would otherwise ignore them).
//!
//! # `furnace-probe exit N`
//!
//! Writes `out\n` to stdout and `err\n` to stderr and exits with code N.

mod cgroup;
mod escape;
mod fac;
mod files;
mod limits;
mod policy;
mod refuse;
mod syscalls;
mod vmi;

use nix::errno::Errno;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::AsRawFd;

/// What was open before the probe opened anything.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    /// From listing `/proc/self/fd`.
    pub fds: Vec<i32>,
    /// Every fd in 3..=1024 that `fstat` did not answer with EBADF; taken
    /// before the listing, so it cannot see the listing's own fd.
    pub fstat_open: Vec<i32>,
    pub listing_error: Option<String>,
}

impl Startup {
    fn take() -> Startup {
        let fstat_open = (3..=1024)
            .filter(|&fd| nix::sys::stat::fstat(fd) != Err(Errno::EBADF))
            .collect();
        let mut startup = Startup {
            fstat_open,
            ..Startup::default()
        };
        match list_fds() {
            Ok(fds) => startup.fds = fds,
            Err(e) => {
                startup.listing_error = Some(format!("/proc/self/fd: {e:?}"));
                startup.fds = (0..3)
                    .filter(|&fd| nix::sys::stat::fstat(fd) != Err(Errno::EBADF))
                    .chain(startup.fstat_open.iter().copied())
                    .collect();
            }
        }
        startup
    }

    /// Fds at 3 or above that were open at start.
    pub fn leaked(&self) -> Vec<i32> {
        let set: BTreeSet<i32> = self
            .fds
            .iter()
            .chain(&self.fstat_open)
            .copied()
            .filter(|&fd| fd >= 3)
            .collect();
        set.into_iter().collect()
    }
}

fn list_fds() -> Result<Vec<i32>, Errno> {
    use nix::fcntl::OFlag;
    let mut dir = nix::dir::Dir::open(
        "/proc/self/fd",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let own = dir.as_raw_fd();
    let mut fds = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        if let Some(fd) = entry.file_name().to_str().ok().and_then(|s| s.parse().ok()) {
            if fd != own {
                fds.push(fd);
            }
        }
    }
    fds.sort_unstable();
    Ok(fds)
}

/// `"ok"` or the errno's name.
pub fn outcome<T>(result: &Result<T, Errno>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

pub fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

pub fn io<T>(result: std::io::Result<T>) -> Result<T, Errno> {
    result.map_err(|e| errno_of(&e))
}

/// Writes a line to stdout; a closed stdout is no reason to panic.
pub fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Writes a line to stderr, ignoring failure.
pub fn complain(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "furnace-probe: {text}");
}

fn print_json(value: &serde_json::Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => say(&text),
        Err(e) => complain(&format!("serializing the report: {e}")),
    }
}

const USAGE: &str = "usage: furnace-probe policy
       furnace-probe escape [--host-pid N] [--guest G] [--other-socket PATH] [--only a,b]
       furnace-probe vmi-ps [--socket PATH]
       furnace-probe vmi-hammer N MS
       furnace-probe refuse N [hold]
       furnace-probe hold
       furnace-probe exit N";

fn usage(problem: &str) -> ! {
    complain(&format!("{problem}\n{USAGE}"));
    std::process::exit(2)
}

extern "C" fn exit_on_signal(signal: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + signal) }
}

fn hold() -> ! {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only calls _exit.
        let _ = unsafe { signal(s, SigHandler::Handler(exit_on_signal)) };
    }
    say("ready");
    loop {
        nix::unistd::pause();
    }
}

fn exit_with(code: &str) -> ! {
    let Ok(code) = code.parse::<i32>() else {
        usage(&format!("{code:?} is not an exit code"))
    };
    let _ = std::io::stdout()
        .write_all(b"out\n")
        .and_then(|()| std::io::stdout().flush());
    let _ = std::io::stderr().write_all(b"err\n");
    std::process::exit(code)
}

fn main() {
    // Before anything else opens a file.
    let startup = Startup::take();
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some((command, rest)) = args.split_first() else {
        usage("no command")
    };
    match command.as_str() {
        "policy" => print_json(&policy::collect(&startup)),
        "escape" => match escape::Options::parse(rest) {
            Ok(options) => print_json(&escape::run(&options, &startup)),
            Err(problem) => usage(&problem),
        },
        "vmi-ps" => std::process::exit(vmi::ps(rest)),
        "vmi-hammer" => std::process::exit(vmi::hammer(rest)),
        "fac" => std::process::exit(fac::run(rest)),
        "refuse" => match refuse::run(rest) {
            Some((report, then_hold)) => {
                print_json(&report);
                if then_hold {
                    hold()
                }
            }
            None => usage("refuse takes a count and, optionally, hold"),
        },
        "hold" => hold(),
        "exit" => match rest {
            [code] => exit_with(code),
            _ => usage("exit takes one exit code"),
        },
        other => usage(&format!("unknown command {other:?}")),
    }
}
