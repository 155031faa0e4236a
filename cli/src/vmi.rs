//! `furnace vmi`: introspect a live guest directory or a snapshot file.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use furnace_api::{Symbol, Translation};
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::driver::snapshot::Snapshot;
use furnace_vmi::driver::Driver;
use furnace_vmi::linux::LinuxKernel;
use furnace_vmi::profile::Profile;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct VmiArgs {
    #[command(subcommand)]
    command: VmiCommand,
    #[command(flatten)]
    target: Target,
    /// ISF profile of the guest kernel; default: `profile.json` in the guest directory.
    #[arg(long, global = true)]
    profile: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Args)]
#[group(multiple = false)]
struct Target {
    /// A running guest's directory (holds `ram` and `qmp.sock`).
    #[arg(long, global = true)]
    guest_dir: Option<PathBuf>,
    /// A memory snapshot: raw (`pmemsave`) or ELF (`dump-guest-memory`).
    #[arg(long, global = true)]
    snapshot: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum VmiCommand {
    /// The process list.
    Ps,
    /// Loaded kernel modules.
    Modules,
    /// Run-time addresses of kernel symbols (KASLR applied).
    Sym { names: Vec<String> },
    /// Read guest memory: kernel virtual by default.
    Read {
        #[arg(long, value_parser = parse_u64)]
        address: u64,
        #[arg(long, value_parser = parse_u64, default_value = "64")]
        size: u64,
        /// Treat the address as guest-physical.
        #[arg(long, conflicts_with = "pid")]
        physical: bool,
        /// Read in this process's address space.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Translate a virtual address: kernel (kv2p) or, with --pid, user (uv2p).
    Translate {
        #[arg(long, value_parser = parse_u64)]
        address: u64,
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Kernel banner, KASLR shift, page-table root and memory size.
    Info,
}

/// The largest read `furnace vmi read` performs, so a typo cannot allocate gigabytes.
const MAX_READ: u64 = 64 << 20;

fn parse_u64(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a number (decimal or 0x-hex): {e}"))
}

pub fn run(args: VmiArgs) -> Result<()> {
    let kernel = attach(&args.target, args.profile)?;
    match args.command {
        VmiCommand::Ps => {
            let processes = kernel.processes()?;
            emit(args.json, &processes, || {
                let mut out = format!(
                    "{:>7} {:>7} {:>6} {:<16} {:>18} {:>12}\n",
                    "PID", "PPID", "UID", "NAME", "TASK", "DTB"
                );
                for p in &processes {
                    out += &format!(
                        "{:>7} {:>7} {:>6} {:<16} {:#18x} {:#12x}\n",
                        p.pid, p.ppid, p.uid, p.name, p.task, p.dtb
                    );
                }
                out
            })
        }
        VmiCommand::Modules => {
            let modules = kernel.modules()?;
            emit(args.json, &modules, || {
                let mut out = format!("{:<24} {:>18} {:>10}\n", "NAME", "BASE", "SIZE");
                for m in &modules {
                    out += &format!("{:<24} {:#18x} {:>10}\n", m.name, m.base, m.size);
                }
                out
            })
        }
        VmiCommand::Sym { names } => {
            let symbols = names
                .iter()
                .map(|name| {
                    Ok(Symbol {
                        name: name.clone(),
                        address: kernel.symbol_address(name)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            emit(args.json, &symbols, || {
                symbols
                    .iter()
                    .map(|s| format!("{:#018x} {}\n", s.address, s.name))
                    .collect()
            })
        }
        VmiCommand::Read {
            address,
            size,
            physical,
            pid,
        } => {
            anyhow::ensure!(
                size <= MAX_READ,
                "--size {size} exceeds the {MAX_READ}-byte limit of one read"
            );
            let mut buf = vec![0u8; size as usize];
            match (physical, pid) {
                (true, _) => kernel.driver().read_physical(address, &mut buf)?,
                (false, Some(pid)) => {
                    kernel.read_virtual(kernel.process_dtb(pid)?, address, &mut buf)?
                }
                (false, None) => kernel.read_kernel(address, &mut buf)?,
            }
            #[derive(Serialize)]
            struct Read {
                address: u64,
                hex: String,
            }
            let read = Read {
                address,
                hex: hex::encode(&buf),
            };
            emit(args.json, &read, || hexdump(address, &buf))
        }
        VmiCommand::Translate { address, pid } => {
            let t = match pid {
                Some(pid) => kernel.user_to_physical(pid, address)?,
                None => kernel.kernel_to_physical(address)?,
            };
            let t = Translation {
                virtual_address: address,
                physical_address: t.physical,
                page_size: t.page_size,
            };
            emit(args.json, &t, || {
                format!(
                    "{:#x} -> {:#x} (page {} KiB)\n",
                    t.virtual_address,
                    t.physical_address,
                    t.page_size / 1024
                )
            })
        }
        VmiCommand::Info => {
            #[derive(Serialize)]
            struct Info {
                driver: String,
                banner: String,
                kaslr_virtual_shift: u64,
                kaslr_physical_shift: u64,
                kernel_dtb: u64,
                paging: String,
                memory_bytes: u64,
            }
            let location = kernel.location();
            let info = Info {
                driver: kernel.driver().describe(),
                banner: kernel.banner()?,
                kaslr_virtual_shift: location.virtual_shift,
                kaslr_physical_shift: location.physical_shift,
                kernel_dtb: location.dtb,
                paging: format!("{:?}", location.paging_mode),
                memory_bytes: kernel.driver().physical_size(),
            };
            emit(args.json, &info, || {
                format!(
                    "driver        {}\nbanner        {}\nkaslr shift   {:#x} (virtual), {:#x} (physical)\nkernel dtb    {:#x}\npaging        {}\nmemory        {} MiB\n",
                    info.driver, info.banner, info.kaslr_virtual_shift, info.kaslr_physical_shift, info.kernel_dtb, info.paging, info.memory_bytes >> 20
                )
            })
        }
    }
}

fn attach(target: &Target, profile: Option<PathBuf>) -> Result<LinuxKernel> {
    let (driver, default_profile): (Box<dyn Driver>, Option<PathBuf>) =
        match (&target.guest_dir, &target.snapshot) {
            (Some(dir), _) => (
                Box::new(QemuGuest::attach(dir)?),
                Some(dir.join("profile.json")),
            ),
            (None, Some(file)) => (Box::new(Snapshot::open(file)?), None),
            (None, None) => anyhow::bail!("say which guest: --guest-dir DIR or --snapshot FILE"),
        };
    let profile_path = profile
        .or(default_profile)
        .context("--profile is required with --snapshot")?;
    let profile = Profile::load(&profile_path)?;
    Ok(LinuxKernel::attach(driver, profile)?)
}

fn emit<T: Serialize + ?Sized>(json: bool, value: &T, text: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

fn hexdump(address: u64, bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, row)| {
            let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
            let ascii: String = row
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            format!(
                "{:016x}  {:<47}  {}\n",
                address + 16 * i as u64,
                hex.join(" "),
                ascii
            )
        })
        .collect()
}
