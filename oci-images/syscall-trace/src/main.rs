//! `furnace-syscall-trace`: the guest's system calls (and, with `--process`,
//! its process starts and exits) as one JSON object per line, with the field
//! names of DRAKVUF's `syscalls` and `procmon` plugins, so tooling written
//! for DRAKVUF output reads it unchanged.

mod drakvuf;

use clap::Parser;
use furnace_api::v1::EventSpec;
use furnace_api::{ApiError, Vmi};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Traces the guest's system calls (`--syscalls`) and processes (`--process`).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The VMI socket; the runtime mounts the app's own socket here.
    #[arg(long, default_value = furnace_api::client::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Comma-separated syscall names; `all` for every call.
    #[arg(long, value_delimiter = ',')]
    syscalls: Vec<String>,
    /// Also report the syscalls' returns.
    #[arg(long)]
    exits: bool,
    /// Report process exec and exit.
    #[arg(long)]
    process: bool,
    /// Only this process.
    #[arg(long, default_value_t = 0)]
    pid: u32,
    /// Only tasks with this name.
    #[arg(long, default_value = "")]
    comm: String,
    /// Hold the guest on each event until it is printed (needs `pause`).
    #[arg(long)]
    sync: bool,
    /// Spend this long on each event before taking the next: a stand-in for
    /// slow analysis. With `--sync` the guest waits that long too.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// The most undelivered events the sidecar keeps for this app.
    #[arg(long, default_value_t = 0)]
    queue: u32,
    /// Exit after this many events (0: never).
    #[arg(long, default_value_t = 0)]
    max_events: u64,
    /// Exit once no event has come for this long (0: never).
    #[arg(long, default_value_t = 0)]
    idle_exit_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("furnace-syscall-trace: {e}");
            ExitCode::FAILURE
        }
    }
}

fn specs(args: &Args) -> Vec<EventSpec> {
    let mut specs = Vec::new();
    if !args.syscalls.is_empty() {
        let names: Vec<&str> = args
            .syscalls
            .iter()
            .map(String::as_str)
            .filter(|n| *n != "all")
            .collect();
        let mut spec = EventSpec::syscalls(&names);
        if args.exits {
            spec = spec.exits(true);
        }
        specs.push(spec);
    }
    if args.process {
        specs.push(EventSpec::processes(true, true));
    }
    specs
        .into_iter()
        .map(|mut spec| {
            spec = spec.pid(args.pid).comm(&args.comm).queue(args.queue);
            if args.sync {
                spec = spec.sync();
            }
            spec
        })
        .collect()
}

fn run(args: &Args) -> Result<(), ApiError> {
    let specs = specs(args);
    if specs.is_empty() {
        return Err(ApiError::new(
            furnace_api::ErrorCode::InvalidArgument,
            "nothing to trace: give --syscalls, --process or both",
        ));
    }
    let vmi = Vmi::connect(&args.socket)?;
    let subscriptions = specs
        .into_iter()
        .map(|spec| vmi.subscribe(spec))
        .collect::<Result<Vec<_>, _>>()?;
    eprintln!(
        "furnace-syscall-trace: subscribed ({})",
        subscriptions
            .iter()
            .map(|s| s.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    let mut last_event = Instant::now();
    // One subscription blocks in a long poll; several take turns.
    let poll = Duration::from_millis(if subscriptions.len() == 1 { 1000 } else { 50 });
    let mut to_ack: Vec<Vec<u64>> = vec![Vec::new(); subscriptions.len()];
    'outer: loop {
        let mut quiet = true;
        for (subscription, acks) in subscriptions.iter().zip(to_ack.iter_mut()) {
            let batch = vmi.next_events(subscription, 64, poll, &std::mem::take(acks))?;
            if batch.dropped > 0 {
                quiet = false;
                emit(&mut out, &drakvuf::dropped(batch.dropped))?;
            }
            for event in batch.events {
                quiet = false;
                emit(&mut out, &drakvuf::line(&event))?;
                if args.delay_ms > 0 {
                    std::thread::sleep(Duration::from_millis(args.delay_ms));
                }
                if event.sync {
                    acks.push(event.id);
                }
                printed += 1;
                if args.max_events > 0 && printed >= args.max_events {
                    vmi.ack(acks)?;
                    break 'outer;
                }
            }
        }
        if !quiet {
            last_event = Instant::now();
        } else if args.idle_exit_ms > 0
            && last_event.elapsed() >= Duration::from_millis(args.idle_exit_ms)
        {
            break;
        }
    }
    for subscription in &subscriptions {
        vmi.unsubscribe(subscription)?;
    }
    Ok(())
}

fn emit(out: &mut impl Write, line: &serde_json::Value) -> Result<(), ApiError> {
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| ApiError::new(furnace_api::ErrorCode::Internal, format!("stdout: {e}")))
}
