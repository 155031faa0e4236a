//! Escape attempts that are one system call (or a few). Where a call could do
//! harm if it were allowed, it gets arguments the kernel rejects only after
//! checking the caller's privilege (see `Report::privilege`).

use crate::escape::{combine, Context, Report};
use crate::outcome;
use nix::errno::Errno;
use nix::sched::CloneFlags;
use std::ffi::c_long;
use std::os::fd::AsRawFd;
use std::path::Path;

fn sys(ret: c_long) -> Result<c_long, Errno> {
    Errno::result(ret)
}

/// Escaped iff the call returned an fd; closes it.
fn fd_call(ret: c_long) -> Report {
    let result = sys(ret);
    if let Ok(fd) = result {
        // SAFETY: the fd was just returned to us.
        unsafe { libc::close(fd as i32) };
    }
    Report::success(&result)
}

pub fn mount(_: &Context) -> Report {
    use nix::mount::{umount2, MntFlags, MsFlags};
    let target = if Path::new("/mnt").is_dir() {
        "/mnt"
    } else {
        let _ = std::fs::create_dir("/tmp/furnace-probe-mnt");
        "/tmp/furnace-probe-mnt"
    };
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let result = nix::mount::mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some("size=1m"));
    if result.is_ok() {
        let _ = umount2(target, MntFlags::MNT_DETACH);
    }
    Report::success(&result).detail(format!("tmpfs on {target}"))
}

fn unshare(flags: CloneFlags) -> Report {
    Report::success(&nix::sched::unshare(flags))
}

pub fn unshare_user(_: &Context) -> Report {
    unshare(CloneFlags::CLONE_NEWUSER)
}

pub fn unshare_mount(_: &Context) -> Report {
    unshare(CloneFlags::CLONE_NEWNS)
}

pub fn unshare_net(_: &Context) -> Report {
    unshare(CloneFlags::CLONE_NEWNET)
}

pub fn setns(context: &Context) -> Report {
    let mut targets = vec![
        ("/proc/self/ns/net".to_string(), CloneFlags::CLONE_NEWNET),
        ("/proc/self/ns/mnt".to_string(), CloneFlags::CLONE_NEWNS),
        ("/proc/self/ns/user".to_string(), CloneFlags::CLONE_NEWUSER),
    ];
    let host = context.options.host_pid;
    if host != context.probe_pid {
        targets.push((format!("/proc/{host}/ns/mnt"), CloneFlags::CLONE_NEWNS));
        targets.push((format!("/proc/{host}/ns/net"), CloneFlags::CLONE_NEWNET));
    }
    let tries = targets
        .into_iter()
        .map(|(path, kind)| {
            let report = match crate::io(std::fs::File::open(&path)) {
                Ok(file) => Report::success(&nix::sched::setns(&file, kind)),
                Err(e) => Report::new(false, format!("{e:?}")).detail("open"),
            };
            (path, report)
        })
        .collect();
    combine(tries)
}

pub fn chroot(_: &Context) -> Report {
    Report::success(&nix::unistd::chroot("/tmp")).detail("chroot /tmp")
}

pub fn pivot_root(_: &Context) -> Report {
    let new = c"/furnace-probe-no-such-new-root";
    let old = c"/furnace-probe-no-such-old-root";
    // SAFETY: two valid C strings.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, new.as_ptr(), old.as_ptr()) };
    Report::privilege(&sys(ret))
}

/// A host pid that is the probe itself (the default pid 1 in a pid
/// namespace) proves nothing.
fn on_target(context: &Context, result: Result<c_long, Errno>, report: Report) -> Report {
    let pid = context.options.host_pid;
    let visible = outcome(&nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        None,
    ));
    let mut report = report
        .data("pid", pid.into())
        .data("kill_0", visible.into());
    if pid == context.probe_pid {
        report.escaped = false;
        report.detail = format!("pid {pid} is the probe itself");
    } else if result == Err(Errno::ESRCH) {
        report.escaped = false;
    }
    report
}

pub fn ptrace_host_pid(context: &Context) -> Report {
    // PTRACE_SEIZE, not PTRACE_ATTACH: the same permission check, but it
    // does not stop the target should it succeed. The tracee is released
    // when this child exits.
    // SAFETY: ptrace takes plain integers here.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_SEIZE,
            context.options.host_pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    let result = sys(ret);
    on_target(context, result, Report::success(&result))
}

pub fn process_vm_readv_host_pid(context: &Context) -> Report {
    let mut buf = [0u8; 8];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Any address: EFAULT still means the permission check passed.
    let remote = libc::iovec {
        iov_base: 0x40_0000 as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: one local iovec over `buf`; the remote side is only read.
    let ret = unsafe { libc::process_vm_readv(context.options.host_pid, &local, 1, &remote, 1, 0) };
    let result = sys(ret as c_long);
    on_target(context, result, Report::privilege(&result))
}

pub fn keyctl(_: &Context) -> Report {
    const KEY_SPEC_PROCESS_KEYRING: libc::c_int = -2;
    let payload = b"x";
    // SAFETY: valid C strings and payload; the key dies with this process.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            c"furnace-probe".as_ptr(),
            payload.as_ptr(),
            payload.len(),
            KEY_SPEC_PROCESS_KEYRING,
        )
    };
    Report::success(&sys(ret)).detail("add_key to the process keyring")
}

pub fn bpf(_: &Context) -> Report {
    const BPF_MAP_CREATE: libc::c_int = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // union bpf_attr, map-create part: type, key size, value size, entries.
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 4, 1]);
    // SAFETY: attr is 128 readable bytes.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_ptr(), 128u32) };
    fd_call(ret).detail("BPF_MAP_CREATE")
}

pub fn perf_event_open(_: &Context) -> Report {
    // struct perf_event_attr, version 0 (64 bytes): PERF_TYPE_SOFTWARE,
    // PERF_COUNT_SW_CPU_CLOCK, disabled | exclude_kernel | exclude_hv.
    let mut attr = [0u64; 8];
    attr[0] = 1 | (64 << 32);
    attr[5] = 1 | (1 << 5) | (1 << 6);
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    // SAFETY: attr is 64 readable bytes; this process, any cpu, no group.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            0,
            -1,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    fd_call(ret)
}

pub fn io_uring_setup(_: &Context) -> Report {
    let mut params = [0u32; 30];
    // SAFETY: params is a zeroed struct io_uring_params (120 bytes).
    let ret = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    fd_call(ret)
}

pub fn userfaultfd(_: &Context) -> Report {
    // SAFETY: flags only.
    let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    fd_call(ret)
}

#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

/// The "shocker" attack: open a file by a handle, relative to a mount fd.
pub fn open_by_handle_at(_: &Context) -> Report {
    // A plain fd, not O_PATH: the kernel resolves the mount fd (and takes
    // no O_PATH fd) before it checks CAP_DAC_READ_SEARCH.
    // SAFETY: a valid C string.
    let mount_fd = unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if let Err(e) = Errno::result(mount_fd) {
        return Report::new(false, format!("{e:?}")).detail("open /");
    }
    let mut handle = FileHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id = 0i32;
    // SAFETY: handle has room for 128 bytes, as it says.
    let named = sys(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            &mut handle,
            &mut mount_id,
            0,
        )
    });
    if named.is_err() {
        // Shocker's guess: FILEID_INO32_GEN for inode 2, an ext root.
        handle.handle_bytes = 8;
        handle.handle_type = 1;
        handle.f_handle = [0; 128];
        handle.f_handle[0] = 2;
    }
    // SAFETY: a valid handle struct; both fds are closed below.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd,
            &handle,
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    // SAFETY: our own fd.
    unsafe { libc::close(mount_fd) };
    let result = sys(ret);
    if let Ok(fd) = result {
        // SAFETY: the fd was just returned to us.
        unsafe { libc::close(fd as i32) };
    }
    let how = match named {
        Ok(_) => "handle of /".to_string(),
        Err(e) => format!("guessed handle (name_to_handle_at: {e:?})"),
    };
    let report = Report::privilege(&result);
    let detail = match report.detail.as_str() {
        "" => how,
        d => format!("{how}; {d}"),
    };
    report.detail(detail)
}

pub fn kexec_load(_: &Context) -> Report {
    // Both a foreign architecture and too many segments: EINVAL once past
    // the CAP_SYS_BOOT check, never a load (nor, with 0 segments, an unload).
    const KEXEC_ARCH_ARM: libc::c_ulong = 40 << 16;
    const TOO_MANY_SEGMENTS: libc::c_ulong = 17;
    // SAFETY: no memory is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kexec_load,
            0 as libc::c_ulong,
            TOO_MANY_SEGMENTS,
            std::ptr::null::<libc::c_void>(),
            KEXEC_ARCH_ARM,
        )
    };
    Report::privilege(&sys(ret))
}

pub fn init_module(_: &Context) -> Report {
    let image = [0u8; 64];
    // SAFETY: 64 readable bytes that are no ELF module.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len(),
            c"".as_ptr(),
        )
    };
    Report::privilege(&sys(ret))
}

pub fn finit_module(_: &Context) -> Report {
    // fd -1: EBADF once past the CAP_SYS_MODULE check.
    // SAFETY: no memory but an empty C string.
    let ret = unsafe { libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0) };
    Report::privilege(&sys(ret))
}

pub fn reboot(_: &Context) -> Report {
    // SAFETY: CAD_OFF only disables Ctrl-Alt-Del rebooting.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_reboot,
            libc::LINUX_REBOOT_MAGIC1,
            libc::LINUX_REBOOT_MAGIC2,
            libc::LINUX_REBOOT_CMD_CAD_OFF,
            std::ptr::null::<libc::c_void>(),
        )
    };
    let result = sys(ret);
    let report = Report::success(&result).detail("LINUX_REBOOT_CMD_CAD_OFF");
    if result == Err(Errno::EINVAL) {
        return report.detail("CAP_SYS_BOOT in a child pid namespace (CAD_OFF: EINVAL)");
    }
    report
}

fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> Report {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    fd_call(fd as c_long)
}

pub fn socket_netlink(_: &Context) -> Report {
    socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)
}

pub fn socket_inet(_: &Context) -> Report {
    socket(libc::AF_INET, libc::SOCK_STREAM, 0)
}

pub fn socket_packet(_: &Context) -> Report {
    socket(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        (libc::ETH_P_ALL as u16).to_be() as libc::c_int,
    )
}

pub fn socket_raw(_: &Context) -> Report {
    socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)
}

pub fn sethostname(_: &Context) -> Report {
    let current = match nix::sys::utsname::uname() {
        Ok(u) => u.nodename().to_os_string(),
        Err(e) => return Report::new(false, format!("uname: {e:?}")),
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(current.as_os_str());
    // SAFETY: bytes is valid for its length.
    let ret = unsafe { libc::sethostname(bytes.as_ptr().cast(), bytes.len()) };
    Report::success(&sys(ret as c_long)).detail("set to its current value")
}

pub fn clock_settime(_: &Context) -> Report {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec.
    if let Err(e) = Errno::result(unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) }) {
        return Report::new(false, format!("clock_gettime: {e:?}"));
    }
    // SAFETY: a valid timespec.
    let ret = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &now) };
    Report::success(&sys(ret as c_long)).detail("set to the current time")
}

pub fn iopl(_: &Context) -> Report {
    // SAFETY: raises, then drops, this process's I/O privilege level.
    let result = sys(unsafe { libc::syscall(libc::SYS_iopl, 3) });
    if result.is_ok() {
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_iopl, 0) };
    }
    Report::success(&result)
}

pub fn ioperm(_: &Context) -> Report {
    // SAFETY: grants, then drops, access to port 0x80.
    let result = sys(unsafe { libc::syscall(libc::SYS_ioperm, 0x80, 1, 1) });
    if result.is_ok() {
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_ioperm, 0x80, 1, 0) };
    }
    Report::success(&result)
}

pub fn swapon(_: &Context) -> Report {
    // SAFETY: a valid C string naming nothing.
    let ret =
        unsafe { libc::syscall(libc::SYS_swapon, c"/furnace-probe-no-such-swap".as_ptr(), 0) };
    Report::privilege(&sys(ret))
}

pub fn acct(_: &Context) -> Report {
    // SAFETY: a valid C string naming nothing.
    let ret = unsafe { libc::acct(c"/furnace-probe-no-such-acct".as_ptr()) };
    Report::privilege(&sys(ret as c_long))
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

pub fn capset(_: &Context) -> Report {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_ADMIN: u32 = 21;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a v3 header and two data structs, as the kernel expects.
    let got = sys(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) });
    if let Err(e) = got {
        return Report::new(false, format!("capget: {e:?}"));
    }
    let before = data[0].permitted;
    data[0].effective |= 1 << CAP_SYS_ADMIN;
    // SAFETY: as above.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    Report::success(&sys(ret)).detail(format!("raise CAP_SYS_ADMIN; permitted was {before:#x}"))
}

pub fn fanotify_init(_: &Context) -> Report {
    const FAN_CLASS_NOTIF_CLOEXEC: libc::c_uint = 1;
    // SAFETY: flags only.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fanotify_init,
            FAN_CLASS_NOTIF_CLOEXEC,
            libc::O_RDONLY,
        )
    };
    fd_call(ret)
}

pub fn syslog(_: &Context) -> Report {
    const SYSLOG_ACTION_READ_ALL: libc::c_int = 3;
    let mut buf = [0u8; 64];
    // SAFETY: buf is writable for its length.
    let ret = unsafe {
        libc::klogctl(
            SYSLOG_ACTION_READ_ALL,
            buf.as_mut_ptr().cast(),
            buf.len() as i32,
        )
    };
    Report::success(&sys(ret as c_long)).detail("read the kernel log")
}

pub fn ioctl_tiocsti(_: &Context) -> Report {
    let space = b' ';
    // SAFETY: TIOCSTI reads one byte.
    let ret = unsafe { libc::ioctl(std::io::stdin().as_raw_fd(), libc::TIOCSTI, &space) };
    Report::success(&sys(ret as c_long)).detail("push a space into fd 0's input")
}
