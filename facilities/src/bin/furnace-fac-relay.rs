//! The per-app facilities relay (docs/facilities.md, "The relay"): serves
//! the app's socket and relays to the tenant backend.

use clap::Parser;
use furnace_fac::relay::{Limits, Relay};
use furnace_fac::storage::Store;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Parser)]
#[command(name = "furnace-fac-relay", version, about)]
struct Args {
    /// The app's facilities socket to create.
    #[arg(long)]
    listen: PathBuf,
    /// host:port of the tenant backend.
    #[arg(long)]
    backend: String,
    /// The app's storage directory; no storage without it.
    #[arg(long)]
    storage: Option<PathBuf>,
    #[arg(long, default_value_t = 16 << 20)]
    storage_quota: u64,
    #[arg(long, default_value_t = Limits::default().max_message_bytes)]
    max_message_bytes: u64,
    #[arg(long, default_value_t = Limits::default().messages_per_second)]
    messages_per_second: u32,
    #[arg(long, default_value_t = Limits::default().max_bytes_in_flight)]
    max_bytes_in_flight: u64,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FURNACE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Err(e) = run(args) {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let storage = match &args.storage {
        Some(dir) => Some(Arc::new(Mutex::new(
            Store::open(dir, args.storage_quota).map_err(|e| e.to_string())?,
        ))),
        None => None,
    };
    let relay = Arc::new(Relay {
        backend: args.backend,
        limits: Limits {
            max_message_bytes: args.max_message_bytes,
            messages_per_second: args.messages_per_second,
            max_bytes_in_flight: args.max_bytes_in_flight,
        },
        storage,
        backoff: (Duration::from_millis(100), Duration::from_secs(5)),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let _ = std::fs::remove_file(&args.listen);
        let listener = tokio::net::UnixListener::bind(&args.listen)
            .map_err(|e| format!("binding {}: {e}", args.listen.display()))?;
        tracing::info!(
            "serving {} for the backend at {}",
            args.listen.display(),
            relay.backend
        );
        relay.serve(listener).await.map_err(|e| e.to_string())
    })
}
