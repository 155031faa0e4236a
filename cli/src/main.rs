use clap::{Parser, Subcommand};
use furnace::{facilities, guest, profile, sidecar, vmi};
use furnace_vmi::VmiError;

/// Furnace: tenant VM introspection under containerd.
#[derive(Debug, Parser)]
#[command(name = "furnace", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Local test guests (real Debian kernel under QEMU).
    #[command(subcommand)]
    Guest(guest::GuestCommand),
    /// Kernel profiles (Volatility 3 ISF).
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
    /// Introspect a guest, a snapshot, or a guest through its sidecar.
    Vmi(vmi::VmiArgs),
    /// Register and list the apps of a guest's VMI sidecar.
    Sidecar(sidecar::SidecarArgs),
    /// Write a facilities key pair: NAME.key and NAME.pub.
    Keygen(facilities::KeygenArgs),
    /// Run a tenant backend that apps reach through their facilities relay.
    Backend(facilities::BackendArgs),
}

fn main() {
    let cli = Cli::parse();
    // `furnace backend` reports refused apps as warnings, so it shows them
    // by default; the other commands stay quiet unless FURNACE_LOG asks.
    let default = match cli.command {
        Command::Backend(_) => "warn",
        _ => "error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FURNACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Guest(c) => guest::run(c),
        Command::Profile(c) => profile::run(c),
        Command::Vmi(args) => vmi::run(args),
        Command::Sidecar(args) => sidecar::run(args),
        Command::Keygen(args) => facilities::keygen(args),
        Command::Backend(args) => facilities::backend(args),
    };
    if let Err(error) = result {
        // Typed VMI errors carry their code, so scripts can tell kinds apart.
        match error.downcast_ref::<VmiError>() {
            Some(vmi) => {
                let code = vmi.code().as_str_name().trim_start_matches("ERROR_CODE_");
                eprintln!("furnace: error [{code}]: {error:#}")
            }
            None => eprintln!("furnace: error: {error:#}"),
        }
        std::process::exit(1);
    }
}
