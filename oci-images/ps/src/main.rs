//! `furnace-ps`: the guest's process list as the kernel's task list holds it,
//! read through the app's VMI socket. Nothing runs inside the guest.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Prints the guest's processes (PID, PPID, UID, NAME, task address, page-table root).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The VMI socket; the runtime mounts the app's own socket here.
    #[arg(long, default_value = furnace_api::client::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// A JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let processes = match furnace_api::Vmi::connect(&args.socket).and_then(|vmi| vmi.processes()) {
        Ok(processes) => processes,
        Err(e) => {
            eprintln!("furnace-ps: {}: {e}", args.socket.display());
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&processes) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("furnace-ps: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", furnace_api::table::processes(&processes));
    }
    ExitCode::SUCCESS
}
