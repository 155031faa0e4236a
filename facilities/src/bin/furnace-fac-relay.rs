//! The per-app facilities relay (docs/facilities.md, "The relay"): serves
//! the app's socket and relays to the tenant backend.

use clap::Parser;
use furnace_fac::confinement;
use furnace_fac::relay::{Limits, Relay};
use furnace_fac::storage::Store;
use furnace_fac_broker::BrokerClient;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a SIGTERM waits for sessions to hand the backend their outbox.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(name = "furnace-fac-relay", version, about)]
#[command(group(clap::ArgGroup::new("app").required(true).args(["listen", "broker"])))]
struct Args {
    /// The app's facilities socket to create; the relay dials the backend itself.
    #[arg(long)]
    listen: Option<PathBuf>,
    /// The shim's broker socket, for a relay confined without network: it
    /// hands over the app's listening socket and every backend connection
    /// (furnace_fac_broker).
    #[arg(long)]
    broker: Option<PathBuf>,
    /// host:port of the tenant backend (with --broker, the address the shim dials).
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

/// Messages of up to 16 MiB pass through one at a time: glibc would map and
/// unmap each buffer (a page fault per 4 KiB, a quarter of the relay's time
/// in `docs/benchmarks.md`). Kept in the heap instead, and given back only
/// past this much free.
const KEEP_FREE: i32 = 32 << 20;

fn main() {
    // SAFETY: mallopt only sets allocator parameters, before any thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP_FREE);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE);
    }
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
    let broker = args.broker.as_ref().map(BrokerClient::new);
    // Taken before the runtime starts: the broker client blocks.
    let listener = match (&broker, &args.listen) {
        (Some(b), _) => b.listener().map_err(|e| e.to_string())?,
        (None, Some(path)) => {
            let _ = std::fs::remove_file(path);
            std::os::unix::net::UnixListener::bind(path)
                .map_err(|e| format!("binding {}: {e}", path.display()))?
        }
        (None, None) => unreachable!("clap requires --listen or --broker"),
    };
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    tracing::info!("confinement: {}", confinement::describe());
    let relay = Arc::new(Relay {
        backend: args.backend,
        broker,
        limits: Limits {
            max_message_bytes: args.max_message_bytes,
            messages_per_second: args.messages_per_second,
            max_bytes_in_flight: args.max_bytes_in_flight,
        },
        storage,
        backoff: (Duration::from_millis(100), Duration::from_secs(5)),
        rate_limited: Arc::default(),
    });
    if let Some(broker) = relay.broker.clone() {
        report_rate_limited(broker, Arc::clone(&relay.rate_limited))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| e.to_string())?;
        tracing::info!("serving the app for the backend at {}", relay.backend);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("watching for SIGTERM: {e}"))?;
        tokio::select! {
            served = relay.serve(listener) => served.map_err(|e| e.to_string()),
            _ = term.recv() => {
                // The app's task has ended: hand the backend what was
                // accepted, for a while, then go.
                let left = Relay::drain(DRAIN).await;
                if left > 0 {
                    tracing::warn!("stopping with {left} sessions still open: what they hold for the backend is lost");
                }
                Ok(())
            }
        }
    })
}

/// How often the relay's rate-limit count is sent to the shim, when it changed.
const REPORT_PERIOD: Duration = Duration::from_millis(250);

/// Sends the shim `count` whenever it changed, for as long as the relay runs.
fn report_rate_limited(broker: BrokerClient, count: Arc<AtomicU64>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("rate-report".into())
        .spawn(move || {
            let mut reported = 0;
            loop {
                std::thread::sleep(REPORT_PERIOD);
                let now = count.load(Ordering::Relaxed);
                if now != reported {
                    match broker.report_rate_limited(now) {
                        Ok(()) => reported = now,
                        Err(e) => tracing::warn!("reporting rate-limit refusals to the shim: {e}"),
                    }
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("starting the rate-limit reporter: {e}"))
}
