//! `furnace-ps`: the guest's process list as the kernel's task list holds it,
//! read through the app's VMI socket. Nothing runs inside the guest. When
//! the container names a backend (`furnace.dev/backend`), the same output
//! also goes to it, sealed, through the facilities relay.

use clap::Parser;
use furnace_api::facilities::Endpoint;
use furnace_api::Facilities;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    let output = if args.json {
        match serde_json::to_string_pretty(&processes) {
            Ok(json) => format!("{json}\n"),
            Err(e) => {
                eprintln!("furnace-ps: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        furnace_api::table::processes(&processes)
    };
    print!("{output}");
    if Endpoint::runtime_has_backend() {
        if let Err(e) = to_backend(output.as_bytes()) {
            eprintln!("furnace-ps: reporting to the backend: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// Sends the output and waits until the backend has it.
fn to_backend(output: &[u8]) -> Result<(), furnace_api::ApiError> {
    let fac = Facilities::connect_default()?;
    fac.notify(output)?;
    fac.flush(Duration::from_secs(30))
}
