//! `furnace vmi`: introspect a live guest directory or a snapshot file.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use furnace_api::v1::GuestInfo;
use furnace_api::{Symbol, Translation, Vmi};
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
    /// An app socket of a guest's sidecar (e.g. /run/furnace/vmi.sock in a container).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
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
    let source = Source::open(&args.target, args.profile)?;
    match args.command {
        VmiCommand::Ps => {
            let processes = source.processes()?;
            emit(args.json, &processes, || {
                furnace_api::table::processes(&processes)
            })
        }
        VmiCommand::Modules => {
            let modules = source.modules()?;
            emit(args.json, &modules, || {
                furnace_api::table::modules(&modules)
            })
        }
        VmiCommand::Sym { names } => {
            let symbols = names
                .iter()
                .map(|name| {
                    Ok(Symbol {
                        name: name.clone(),
                        address: source.symbol_address(name)?,
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
            let buf = source.read(address, size, physical, pid)?;
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
            let t = source.translate(address, pid)?;
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
            let info = source.info()?;
            emit(args.json, &info, || {
                format!(
                    "guest         {}\ndriver        {}\nbanner        {}\nkaslr offset  {:#x}\npaging        {}\nmemory        {} MiB\n",
                    info.name, info.id, info.kernel_banner, info.kaslr_offset, info.page_mode, info.memory_size >> 20
                )
            })
        }
    }
}

/// Where the answers come from: the guest read in this process, or a sidecar.
enum Source {
    Local(Box<LinuxKernel>),
    Sidecar(Vmi),
}

impl Source {
    fn open(target: &Target, profile: Option<PathBuf>) -> Result<Self> {
        let (driver, default_profile): (Box<dyn Driver>, Option<PathBuf>) =
            match (&target.guest_dir, &target.snapshot, &target.socket) {
                (Some(dir), _, _) => (
                    Box::new(QemuGuest::attach(dir)?),
                    Some(dir.join("profile.json")),
                ),
                (None, Some(file), _) => (Box::new(Snapshot::open(file)?), None),
                (None, None, Some(socket)) => return Ok(Source::Sidecar(Vmi::connect(socket)?)),
                (None, None, None) => {
                    anyhow::bail!(
                        "say which guest: --guest-dir DIR, --snapshot FILE or --socket SOCKET"
                    )
                }
            };
        let profile_path = profile
            .or(default_profile)
            .context("--profile is required with --snapshot")?;
        let profile = Profile::load(&profile_path)?;
        Ok(Source::Local(Box::new(LinuxKernel::attach(
            driver, profile,
        )?)))
    }

    fn processes(&self) -> Result<Vec<furnace_api::Process>> {
        Ok(match self {
            Source::Local(k) => k.processes()?,
            Source::Sidecar(v) => v.processes()?,
        })
    }

    fn modules(&self) -> Result<Vec<furnace_api::Module>> {
        Ok(match self {
            Source::Local(k) => k.modules()?,
            Source::Sidecar(v) => v.modules()?,
        })
    }

    fn symbol_address(&self, name: &str) -> Result<u64> {
        Ok(match self {
            Source::Local(k) => k.symbol_address(name)?,
            Source::Sidecar(v) => v.symbol_address(name)?,
        })
    }

    fn read(&self, address: u64, size: u64, physical: bool, pid: Option<u32>) -> Result<Vec<u8>> {
        Ok(match self {
            Source::Local(k) => {
                let mut buf = vec![0u8; size as usize];
                match (physical, pid) {
                    (true, _) => k.driver().read_physical(address, &mut buf)?,
                    (false, Some(pid)) => k.read_virtual(k.process_dtb(pid)?, address, &mut buf)?,
                    (false, None) => k.read_kernel(address, &mut buf)?,
                }
                buf
            }
            Source::Sidecar(v) if physical => v.read_physical(address, size)?,
            Source::Sidecar(v) => v.read_virtual(pid.unwrap_or(0), address, size)?,
        })
    }

    fn translate(&self, address: u64, pid: Option<u32>) -> Result<Translation> {
        Ok(match (self, pid) {
            (Source::Local(k), pid) => {
                let t = match pid {
                    Some(pid) => k.user_to_physical(pid, address)?,
                    None => k.kernel_to_physical(address)?,
                };
                Translation {
                    virtual_address: address,
                    physical_address: t.physical,
                    page_size: t.page_size,
                }
            }
            (Source::Sidecar(v), Some(pid)) => v.translate_user(pid, address)?,
            (Source::Sidecar(v), None) => v.translate_kernel(address)?,
        })
    }

    fn info(&self) -> Result<GuestInfo> {
        Ok(match self {
            Source::Local(k) => GuestInfo {
                name: String::new(),
                id: k.driver().describe(),
                memory_size: k.driver().physical_size(),
                os_type: "linux".into(),
                page_mode: format!("{:?}", k.paging_mode()),
                vcpu_count: k
                    .driver()
                    .vcpu_registers()
                    .map(|r| r.vcpu_count())
                    .transpose()?
                    .unwrap_or(0),
                kernel_banner: k.banner()?,
                kaslr_offset: k.location().virtual_shift,
            },
            Source::Sidecar(v) => v.info()?,
        })
    }
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
