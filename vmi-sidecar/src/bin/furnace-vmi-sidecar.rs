//! `furnace-vmi-sidecar`: the privileged, per-guest VMI server. It attaches
//! to one guest and serves the VMI API to the apps the runtime registers.

use anyhow::{Context, Result};
use clap::Parser;
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::linux::LinuxKernel;
use furnace_vmi::profile::Profile;
use furnace_vmi::server::{Limits, Sidecar};
use serde::Deserialize;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "furnace-vmi-sidecar", version, about)]
struct Args {
    /// The guest's name; sockets go to <socket-root>/guests/<guest>/.
    #[arg(long)]
    guest: String,
    /// The running guest's directory (holds `ram` and `qmp.sock`).
    #[arg(long)]
    guest_dir: PathBuf,
    /// ISF profile of the guest kernel; default: `profile.json` in the guest directory.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Provider config (TOML); the `[sidecar]` table sets per-app limits.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, default_value = "/run/furnace")]
    socket_root: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    sidecar: Limits,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FURNACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let limits = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<ConfigFile>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
                .sidecar
        }
        None => Limits::default(),
    };
    let profile_path = args
        .profile
        .clone()
        .unwrap_or_else(|| args.guest_dir.join("profile.json"));
    let driver = QemuGuest::attach(&args.guest_dir)?;
    let kernel = LinuxKernel::attach(Box::new(driver), Profile::load(&profile_path)?)?;
    let dir = args.socket_root.join("guests").join(&args.guest);
    let sidecar = Sidecar::new(&args.guest, kernel, limits, &dir)
        .with_context(|| format!("preparing {}", dir.display()))?;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
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
