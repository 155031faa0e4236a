//! Escape attempts through paths: devices, `/proc`, `/sys`, cgroup files,
//! leaked fds and other unix sockets. Nothing is ever written to a file that
//! opens for writing: the open is the attempt.

use crate::escape::{combine, Context, Report};
use crate::{cgroup, io, outcome};
use nix::errno::Errno;
use serde_json::json;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

fn open_write(path: &Path) -> Report {
    Report::success(&io(OpenOptions::new().write(true).open(path)).map(drop))
}

fn open_read(path: &Path) -> Report {
    let result = io(OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path));
    Report::success(&result.map(drop))
}

fn tries_on(paths: &[&str], attempt: fn(&Path) -> Report) -> Report {
    combine(
        paths
            .iter()
            .map(|p| (p.to_string(), attempt(Path::new(p))))
            .collect(),
    )
}

pub fn sysrq_trigger(_: &Context) -> Report {
    open_write(Path::new("/proc/sysrq-trigger")).detail("open for write only")
}

pub fn dev_mem(_: &Context) -> Report {
    open_read(Path::new("/dev/mem"))
}

pub fn dev_kmsg(_: &Context) -> Report {
    tries_on(&["/dev/kmsg", "/dev/kmem", "/dev/port"], open_read)
}

pub fn mknod(_: &Context) -> Report {
    use nix::sys::stat::{makedev, Mode, SFlag};
    let path = Path::new("/tmp/furnace-probe-mem");
    let _ = std::fs::remove_file(path);
    let made = nix::sys::stat::mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        makedev(1, 1),
    );
    let mut report = Report::success(&made);
    if made.is_ok() {
        // A node nobody can open (device cgroup, nodev) is no escape.
        let opened = io(std::fs::File::open(path));
        report.escaped = opened.is_ok();
        report.detail = format!("char 1:1 made; open: {}", outcome(&opened));
        let _ = std::fs::remove_file(path);
    }
    report
}

pub fn proc_kcore(_: &Context) -> Report {
    let mut file = match io(std::fs::File::open("/proc/kcore")) {
        Ok(f) => f,
        Err(e) => return Report::new(false, format!("{e:?}")),
    };
    let mut buf = [0u8; 4];
    match io(file.read(&mut buf)) {
        Ok(0) => Report::new(false, "empty").detail("opens but reads nothing (masked)"),
        Ok(n) => Report::new(true, "ok").detail(format!("read {n} bytes of kernel memory")),
        Err(e) => Report::new(false, format!("{e:?}")).detail("read"),
    }
}

pub fn proc_self_exe_overwrite(_: &Context) -> Report {
    tries_on(&["/proc/self/exe", "/proc/1/exe"], open_write)
}

pub fn write_sys(_: &Context) -> Report {
    let create = |path: &Path| {
        let result = io(OpenOptions::new().write(true).create_new(true).open(path));
        if result.is_ok() {
            let _ = std::fs::remove_file(path);
        }
        Report::success(&result.map(drop))
    };
    combine(vec![
        (
            "/sys/kernel/uevent_helper".into(),
            open_write(Path::new("/sys/kernel/uevent_helper")),
        ),
        (
            "/sys/kernel/furnace-probe".into(),
            create(Path::new("/sys/kernel/furnace-probe")),
        ),
    ])
}

pub fn proc_sys_write(_: &Context) -> Report {
    open_write(Path::new("/proc/sys/kernel/hostname"))
}

pub fn proc_sys_core_pattern(_: &Context) -> Report {
    open_write(Path::new("/proc/sys/kernel/core_pattern"))
}

/// Opens each existing path for writing; `ENOENT` when none exists.
fn write_any(paths: Vec<PathBuf>, nothing: &str) -> Report {
    let tries: Vec<(String, Report)> = paths
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| (p.display().to_string(), open_write(&p)))
        .collect();
    if tries.is_empty() {
        return Report::new(false, "ENOENT").detail(nothing);
    }
    combine(tries)
}

pub fn cgroup_release_agent(_: &Context) -> Report {
    let root = Path::new("/sys/fs/cgroup");
    let mut paths = vec![root.join("release_agent")];
    if let Ok(entries) = std::fs::read_dir(root) {
        paths.extend(entries.flatten().map(|e| e.path().join("release_agent")));
    }
    write_any(paths, "no release_agent visible")
}

pub fn cgroup_limits_write(_: &Context) -> Report {
    let memberships = cgroup::memberships().unwrap_or_default();
    let paths = cgroup::FILES
        .iter()
        .filter_map(|(file, controller)| cgroup::existing(file, controller, &memberships))
        .collect();
    write_any(paths, "no cgroup limit file visible")
}

fn fd_target(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("{:?}", crate::errno_of(&e)))
}

/// CVE-2024-21626: a host directory fd (or a host cwd) handed to the app.
pub fn leaked_host_fd(context: &Context) -> Report {
    let leaked = context.startup.leaked();
    let mut details = Vec::new();
    for &fd in &leaked {
        // SAFETY: a valid C string; the result is closed below.
        let parent = unsafe {
            libc::openat(
                fd,
                c"..".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        let parent = match Errno::result(parent) {
            Ok(p) => {
                let target = fd_target(p);
                // SAFETY: our own fd.
                unsafe { libc::close(p) };
                target
            }
            Err(e) => format!("{e:?}"),
        };
        details.push(format!(
            "fd {fd} -> {}, its '..' -> {parent}",
            fd_target(fd)
        ));
    }
    let cwd = nix::unistd::getcwd().map(|p| p.display().to_string());
    let unreachable = matches!(&cwd, Ok(c) if c.starts_with("(unreachable)"));
    let cwd_text = cwd.clone().unwrap_or_else(|e| format!("{e:?}"));
    details.push(format!("cwd {cwd_text}"));
    let (escaped, outcome) = if !leaked.is_empty() {
        (true, "leaked".to_string())
    } else if let Err(e) = cwd {
        (true, format!("{e:?}"))
    } else if unreachable {
        (true, "unreachable cwd".to_string())
    } else {
        (false, "EBADF".to_string())
    };
    Report::new(escaped, outcome)
        .detail(details.join("; "))
        .data("leaked_fds", json!(leaked))
        .data("cwd", json!(cwd_text))
}

fn connect(path: &Path) -> Report {
    Report::success(&io(UnixStream::connect(path)).map(drop))
}

pub fn sidecar_admin_socket(context: &Context) -> Report {
    let path = format!("/run/furnace/guests/{}/admin.sock", context.options.guest);
    connect(Path::new(&path)).detail(path)
}

pub fn other_app_socket(context: &Context) -> Report {
    if let Some(path) = &context.options.other_socket {
        return connect(path).detail(path.display().to_string());
    }
    let dir = format!("/run/furnace/guests/{}/apps", context.options.guest);
    let entries = match io(std::fs::read_dir(&dir)) {
        Ok(entries) => entries,
        Err(e) => return Report::new(false, format!("{e:?}")).detail(dir),
    };
    let tries: Vec<(String, Report)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .map(|p| (p.display().to_string(), connect(&p)))
        .collect();
    if tries.is_empty() {
        return Report::new(false, "ENOENT").detail(format!("no *.sock in {dir}"));
    }
    combine(tries)
}
