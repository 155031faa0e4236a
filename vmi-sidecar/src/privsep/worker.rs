//! The worker: confined before it reads guest memory, then the sidecar.

use super::check;
use super::client::{HelperClient, HelperDebugger, HelperMonitor, HelperSockets};
use super::confine::confine_self;
use super::wire::Channel;
use super::{fds, Plan};
use crate::driver::qemu::{ram_regions, QemuGuest};
use crate::driver::MappedRam;
use crate::linux::LinuxKernel;
use crate::profile::Profile;
use crate::server::Sidecar;
use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;

/// Takes ownership of descriptor `fd`, which the supervisor mapped.
fn inherited(fd: RawFd, what: &str) -> Result<OwnedFd> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        bail!("descriptor {fd} ({what}) is not open: the worker is started by furnace-vmi-sidecar, not by hand");
    }
    // SAFETY: the descriptor is open, and nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn run(args: Plan) -> Result<()> {
    let channel = inherited(fds::CHANNEL, "the helper's channel")?;
    let ram = std::fs::File::from(inherited(fds::RAM, "guest RAM")?);
    let admin = UnixListener::from(inherited(fds::ADMIN, "admin.sock")?);
    let mut profile_file = std::fs::File::from(inherited(fds::PROFILE, "the profile")?);
    let guest_dir = inherited(fds::GUEST_DIR, "the guest directory")?;
    drop(inherited(fds::EXE, "this binary")?);
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;

    let confinement = confine_self(guest_dir.as_fd()).context("confining the worker")?;
    drop(guest_dir);
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    tracing::info!(uid, landlock = %confinement.landlock, seccomp_rules = confinement.seccomp_rules, "worker confined: no capabilities, no network, no exec");

    let client = HelperClient::new(Channel::from_fd(channel));
    let monitor = HelperMonitor(Arc::clone(&client));
    let regions = ram_regions(&args.guest_dir, &monitor)?;
    let ram = MappedRam::from_file(&ram, &args.guest_dir.join("ram"), regions, true)?;
    let mut profile = Vec::new();
    profile_file
        .read_to_end(&mut profile)
        .with_context(|| format!("reading {}", args.profile.display()))?;
    let profile = Profile::from_json(&args.profile, &profile)?;
    let driver = QemuGuest::from_parts(
        &args.guest_dir,
        ram,
        Box::new(monitor),
        Box::new(HelperDebugger(Arc::clone(&client))),
    );
    let kernel = LinuxKernel::attach(Box::new(driver), profile)?;

    if args.confinement_check {
        let report = check::run(&client, &kernel);
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }

    let sockets = Arc::new(HelperSockets::new(Arc::clone(&client), &args.socket_dir));
    let admin_path = args.socket_dir.join("admin.sock");
    let sidecar = Sidecar::new(
        &args.guest,
        kernel,
        args.limits,
        sockets,
        admin,
        &admin_path,
    )?;
    sidecar.serve_admin().context("serving admin.sock")?;
    sidecar
        .start_watchdog()
        .context("starting the guest watchdog")?;
    tracing::info!(guest = %args.guest, admin = %sidecar.admin_socket().display(), "serving");
    if let Some(signal) = signals.forever().next() {
        tracing::info!(
            signal,
            "stopping: unregistering apps and resuming the guest"
        );
    }
    sidecar.shutdown();
    Ok(())
}
