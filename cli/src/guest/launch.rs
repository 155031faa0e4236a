//! Starting and stopping a test guest under QEMU.
//!
//! The guest directory holds everything about one guest: `ram` (guest RAM as a
//! shared file), `qmp.sock`, `gdb.sock`, `control.sock` (the workload's command
//! port), `console.log`, `profile.json`, `qemu.pid` and `guest.json`.

use super::{initramfs, kernel};
use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const DEFAULT_ROOT: &str = "/run/furnace/guests";
pub const READY_MARKER: &str = "FURNACE-READY";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Tcg,
    Kvm,
}

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub name: String,
    pub root: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub accel: Accel,
    /// QEMU CPU model; `max` under TCG offers LA57, so the kernel uses 5-level paging.
    pub cpu: String,
    pub kaslr: bool,
    pub kernel_release: Option<String>,
    pub timeout: Duration,
}

/// What `guest.json` records about a running guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestRecord {
    pub name: String,
    pub kernel_release: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub accel: Accel,
    pub cpu: String,
    pub kaslr: bool,
    pub qemu_pid: i32,
}

pub fn guest_dir(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if !ok {
        bail!("guest name {name:?} must be 1-48 characters of a-z, 0-9 and '-', not starting with '-'");
    }
    Ok(())
}

/// Boots a guest and waits, bounded, for its workload to report ready.
/// Returns the guest directory.
pub fn up(options: &UpOptions) -> Result<PathBuf> {
    validate_name(&options.name)?;
    if options.memory_mib < 128 || options.memory_mib > 3072 {
        bail!(
            "--memory {} MiB is outside 128..=3072 (RAM must stay below the PCI hole)",
            options.memory_mib
        );
    }
    let dir = guest_dir(&options.root, &options.name);
    if let Some(pid) = running_qemu(&dir) {
        bail!(
            "guest {} is already up (QEMU pid {pid}); stop it with `furnace guest down {}`",
            options.name,
            options.name
        );
    }
    let kernel = kernel::ensure(options.kernel_release.as_deref())?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing stale {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let initrd = dir.join("initramfs.cpio.gz");
    initramfs::build(&kernel, &initrd)?;
    std::fs::copy(kernel.profile(), dir.join("profile.json")).context("copying the profile")?;

    let output = qemu_command(options, &dir, &kernel, &initrd)
        .output()
        .context("running qemu-system-x86_64; install it with `make deps`")?;
    if !output.status.success() {
        bail!(
            "QEMU failed to start ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let pid = read_pid(&dir).context("QEMU started but wrote no pid file")?;
    let record = GuestRecord {
        name: options.name.clone(),
        kernel_release: kernel.release.clone(),
        memory_mib: options.memory_mib,
        vcpus: options.vcpus,
        accel: options.accel,
        cpu: options.cpu.clone(),
        kaslr: options.kaslr,
        qemu_pid: pid,
    };
    std::fs::write(dir.join("guest.json"), serde_json::to_vec_pretty(&record)?)?;
    if let Err(e) = wait_ready(&dir, pid, options.timeout) {
        let _ = stop_qemu(&dir, pid);
        return Err(e);
    }
    Ok(dir)
}

fn qemu_command(
    options: &UpOptions,
    dir: &Path,
    kernel: &kernel::CachedKernel,
    initrd: &Path,
) -> Command {
    let p = |name: &str| dir.join(name).display().to_string();
    let accel = match options.accel {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
    };
    let mut append = String::from("console=ttyS0 panic=-1 quiet loglevel=3");
    if !options.kaslr {
        append.push_str(" nokaslr");
    }
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-name", &format!("furnace-{}", options.name)])
        .args([
            "-machine",
            &format!("pc,accel={accel},memory-backend=pc.ram"),
        ])
        .args(["-cpu", &options.cpu])
        .args(["-smp", &options.vcpus.to_string()])
        .args(["-m", &format!("{}M", options.memory_mib)])
        .args([
            "-object",
            &format!(
                "memory-backend-file,id=pc.ram,size={}M,mem-path={},share=on",
                options.memory_mib,
                p("ram")
            ),
        ])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append])
        .args(["-nodefaults", "-no-reboot", "-display", "none"])
        .args([
            "-chardev",
            &format!("file,id=console,path={}", p("console.log")),
        ])
        .args(["-serial", "chardev:console"])
        .args([
            "-chardev",
            &format!(
                "socket,id=control,path={},server=on,wait=off",
                p("control.sock")
            ),
        ])
        .args(["-serial", "chardev:control"])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", p("qmp.sock")),
        ])
        .args([
            "-gdb",
            &format!("unix:{},server=on,wait=off", p("gdb.sock")),
        ])
        .args(["-daemonize", "-pidfile", &p("qemu.pid")]);
    command
}

fn wait_ready(dir: &Path, pid: i32, timeout: Duration) -> Result<()> {
    let console = dir.join("console.log");
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains(READY_MARKER) {
            return Ok(());
        }
        if !alive(pid) {
            bail!(
                "QEMU exited before the guest was ready; console:\n{}",
                tail(&text, 30)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the guest was not ready within {timeout:?} (slow TCG? raise --timeout); console:\n{}",
                tail(&text, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Stops the guest's QEMU (if it runs) and removes its directory.
pub fn down(root: &Path, name: &str) -> Result<()> {
    validate_name(name)?;
    let dir = guest_dir(root, name);
    if !dir.exists() {
        bail!("there is no guest {name} under {}", root.display());
    }
    if let Some(pid) = running_qemu(&dir) {
        stop_qemu(&dir, pid)?;
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
}

fn read_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` exists and is not a zombie (a daemonized QEMU is reaped by
/// whatever runs as PID 1, which in a container may never do so).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The pid of the QEMU that serves `dir`, if it still runs. The pid must
/// belong to a QEMU started for this directory: a recycled pid is not ours.
fn running_qemu(dir: &Path) -> Option<i32> {
    let pid = read_pid(dir)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains("qemu-system")
        && cmdline.contains(&dir.join("qmp.sock").display().to_string()))
    .then_some(pid)
}

fn stop_qemu(dir: &Path, pid: i32) -> Result<()> {
    if running_qemu(dir) != Some(pid) {
        return Ok(());
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if alive(pid) {
        bail!("QEMU pid {pid} survived SIGKILL");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_names_are_checked() {
        assert!(validate_name("demo-1").is_ok());
        for bad in ["", "-x", "Demo", "a/b", "../x", &"x".repeat(49)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
