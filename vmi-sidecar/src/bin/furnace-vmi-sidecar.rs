//! `furnace-vmi-sidecar`: the per-guest VMI server. It attaches to one
//! guest and serves the VMI API to the apps the runtime registers. It
//! starts as root and splits itself (`furnace_vmi::privsep`): a small
//! privileged helper, and a confined worker that parses guest memory.

use anyhow::{Context, Result};
use clap::Parser;
use furnace_config::{ProviderConfig, SidecarConfig};
use furnace_vmi::privsep::{supervisor, worker, Plan};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "furnace-vmi-sidecar", version, about)]
struct Args {
    /// The guest's name; sockets go to <socket-root>/guests/<guest>/.
    #[arg(long)]
    guest: String,
    /// The running guest's directory (holds `ram`, `qmp.sock` and `gdb.sock`).
    #[arg(long)]
    guest_dir: PathBuf,
    /// ISF profile of the guest kernel; default: `profile.json` in the guest directory.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// The provider config the shim reads too; its `[sidecar]` table sets
    /// the per-app limits and the worker's uid. Default:
    /// /etc/furnace/furnace.toml if it exists.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Root of Furnace's sockets. Default: the config's `socket_root`
    /// (/run/furnace unless the file says otherwise).
    #[arg(long)]
    socket_root: Option<PathBuf>,
    /// Starts the worker as it would serve, has it attempt what a parser
    /// taken over by a hostile guest would (open files, open sockets, exec,
    /// signal, QMP and gdb monitor commands), prints what each got as one
    /// JSON line, and exits.
    #[arg(long)]
    confinement_check: bool,
    /// Internal: run as the worker the supervisor started (its socket
    /// directory is then `--socket-root`).
    #[arg(long, hide = true)]
    worker: bool,
    /// Internal: the worker's `[sidecar]` limits, as JSON.
    #[arg(long, hide = true)]
    limits: Option<String>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FURNACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let code = match if args.worker {
        run_worker(args).map(|()| 0)
    } else {
        run_supervisor(&args)
    } {
        Ok(code) => code,
        Err(e) => {
            eprintln!("furnace-vmi-sidecar: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run_supervisor(args: &Args) -> Result<i32> {
    let config = ProviderConfig::load_from(args.config.as_deref())?;
    let socket_root = args.socket_root.as_ref().unwrap_or(&config.socket_root);
    let source = ProviderConfig::file_for(args.config.as_deref())
        .map_or_else(|| "none (the defaults)".into(), |f| f.display().to_string());
    tracing::info!(config = %source, socket_root = %socket_root.display(), "provider config");
    supervisor::run(&Plan {
        guest: args.guest.clone(),
        guest_dir: args.guest_dir.clone(),
        profile: profile_path(args),
        socket_dir: socket_root.join("guests").join(&args.guest),
        limits: config.sidecar.clone(),
        confinement_check: args.confinement_check,
    })
}

fn run_worker(args: Args) -> Result<()> {
    let limits: SidecarConfig = serde_json::from_str(args.limits.as_deref().unwrap_or("{}"))
        .context("the worker's --limits")?;
    worker::run(Plan {
        profile: profile_path(&args),
        guest: args.guest,
        guest_dir: args.guest_dir,
        socket_dir: args.socket_root.context("the worker needs --socket-root")?,
        limits,
        confinement_check: args.confinement_check,
    })
}

fn profile_path(args: &Args) -> PathBuf {
    args.profile
        .clone()
        .unwrap_or_else(|| args.guest_dir.join("profile.json"))
}
