//! `furnace guest`: local test guests — a real Debian kernel under QEMU with a
//! busybox workload that prints its own view as ground truth.

pub mod console;
pub mod initramfs;
pub mod kernel;
pub mod launch;

use anyhow::Result;
use clap::{Args, Subcommand};
use launch::{Accel, UpOptions};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Boot a guest and wait until its workload is ready; prints the guest directory last.
    Up(UpArgs),
    /// Stop a guest and remove its directory.
    Down {
        name: String,
        #[arg(long, default_value = launch::DEFAULT_ROOT)]
        root: PathBuf,
    },
    /// Fetch (if needed) and unpack a Debian cloud kernel and build its profile; prints the cache directory.
    FetchKernel {
        /// Kernel release, e.g. 6.1.0-56-cloud-amd64; default: Debian's current cloud kernel.
        #[arg(long)]
        release: Option<String>,
    },
    /// Ask the guest's workload for its own process list (ground truth).
    Ps {
        name: String,
        #[arg(long, default_value = launch::DEFAULT_ROOT)]
        root: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    name: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// tcg works everywhere; kvm needs /dev/kvm (nested KVM may hang at boot).
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    accel: Accel,
    /// QEMU CPU model; `max` gives LA57, so the kernel runs with 5-level paging.
    #[arg(long, default_value = "qemu64")]
    cpu: String,
    /// Boot with `nokaslr`.
    #[arg(long)]
    no_kaslr: bool,
    /// Kernel release; default: Debian's current cloud kernel.
    #[arg(long)]
    kernel: Option<String>,
    /// Seconds to wait for the workload's ready marker.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    #[arg(long, default_value = launch::DEFAULT_ROOT)]
    root: PathBuf,
}

pub fn run(command: GuestCommand) -> Result<()> {
    match command {
        GuestCommand::Up(args) => {
            let dir = launch::up(&UpOptions {
                name: args.name,
                root: args.root,
                memory_mib: args.memory,
                vcpus: args.vcpus,
                accel: args.accel,
                cpu: args.cpu,
                kaslr: !args.no_kaslr,
                kernel_release: args.kernel,
                timeout: Duration::from_secs(args.timeout),
            })?;
            println!("{}", dir.display());
        }
        GuestCommand::Down { name, root } => launch::down(&root, &name)?,
        GuestCommand::FetchKernel { release } => {
            println!("{}", kernel::ensure(release.as_deref())?.dir.display());
        }
        GuestCommand::Ps { name, root, json } => {
            let processes =
                console::processes(&launch::guest_dir(&root, &name), Duration::from_secs(30))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&processes)?);
            } else {
                println!("{:>7} {:>7} {:<8} NAME", "PID", "PPID", "USER");
                for p in processes {
                    println!("{:>7} {:>7} {:<8} {}", p.pid, p.ppid, p.user, p.name);
                }
            }
        }
    }
    Ok(())
}
