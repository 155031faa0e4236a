//! `furnace-hidden-procs`: a cross-view detector. It lists the guest's
//! processes twice, from the kernel's task list and from its pid idr
//! (`views.rs`), and reports every process that one view has and the other
//! lacks: what a rootkit that unlinks itself from the task list leaves behind.
//!
//! The views must be taken of the same moment. With the `pause` permission
//! the guest is held for one look at both; without it, the look is repeated
//! and only what stays inconsistent across every round is reported, so a
//! process starting or exiting between two reads is not mistaken for a
//! hidden one.
//!
//! Exit status, as diff(1): 0 nothing hidden, 1 hidden processes found, 2 trouble.

mod views;
mod xarray;

use clap::Parser;
use furnace_api::{ApiError, ErrorCode, Vmi};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use views::{Finding, Kernel, Layout};

/// Reports guest processes missing from the task list or from the pid idr.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The VMI socket; the runtime mounts the app's own socket here.
    #[arg(long, default_value = furnace_api::client::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Looks to take when the guest cannot be paused; a finding must be in all of them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// A JSON report instead of text.
    #[arg(long)]
    json: bool,
}

/// How long the guest may stay paused for one look.
const PAUSE_LEASE: Duration = Duration::from_secs(5);
const BETWEEN_ROUNDS: Duration = Duration::from_millis(200);

#[derive(Serialize)]
struct Report {
    /// The last look, its findings narrowed to those every look had.
    #[serde(flatten)]
    look: Look,
    /// Whether the guest was paused for the look (one round), or the looks repeated.
    paused: bool,
    rounds: u32,
}

#[derive(Serialize)]
struct Look {
    /// Processes on the task list and in the pid idr.
    task_list: usize,
    pid_idr: usize,
    findings: Vec<Finding>,
}

fn look(vmi: &Vmi, layout: &Layout) -> Result<Look, String> {
    let task_list = views::task_list(vmi).map_err(|e| format!("the task list: {e}"))?;
    let pid_idr = views::pid_idr(&Kernel(vmi), layout).map_err(|e| format!("the pid idr: {e}"))?;
    Ok(Look {
        task_list: task_list.len(),
        pid_idr: pid_idr.len(),
        findings: views::compare(&task_list, &pid_idr),
    })
}

/// One look with the guest paused, when the app may pause it.
fn paused_look(vmi: &Vmi, layout: &Layout) -> Result<Option<Look>, String> {
    let lease = match vmi.pause(PAUSE_LEASE) {
        Ok(lease) => lease,
        Err(ApiError {
            code: ErrorCode::NotPermitted,
            ..
        }) => return Ok(None),
        Err(e) => return Err(format!("pausing the guest: {e}")),
    };
    let result = look(vmi, layout);
    let resumed = vmi.resume(&lease);
    let look = result?;
    resumed.map_err(|e| format!("resuming the guest: {e}"))?;
    Ok(Some(look))
}

fn detect(args: &Args) -> Result<Report, String> {
    let vmi = Vmi::connect(&args.socket).map_err(|e| format!("{}: {e}", args.socket.display()))?;
    let layout = Layout::of(&vmi).map_err(|e| format!("the guest's profile: {e}"))?;
    if let Some(look) = paused_look(&vmi, &layout)? {
        return Ok(Report {
            look,
            paused: true,
            rounds: 1,
        });
    }
    let mut last = look(&vmi, &layout)?;
    let mut rounds = 1;
    while rounds < args.rounds && !last.findings.is_empty() {
        std::thread::sleep(BETWEEN_ROUNDS);
        let next = look(&vmi, &layout)?;
        let persisting = last
            .findings
            .into_iter()
            .filter(|f| next.findings.contains(f))
            .collect();
        last = Look {
            findings: persisting,
            ..next
        };
        rounds += 1;
    }
    Ok(Report {
        look: last,
        paused: false,
        rounds,
    })
}

fn text(report: &Report) -> String {
    let how = if report.paused {
        "guest paused for the look".to_string()
    } else {
        format!("{} looks, guest running", report.rounds)
    };
    let mut out = format!(
        "{} processes on the task list, {} in the pid idr ({how})\n",
        report.look.task_list, report.look.pid_idr
    );
    if report.look.findings.is_empty() {
        out += "no hidden processes\n";
    }
    for f in &report.look.findings {
        let view = match f.missing_from {
            views::MissingFrom::TaskList => "the task list",
            views::MissingFrom::PidIdr => "the pid idr",
        };
        out += &format!(
            "HIDDEN pid {} ({}) task {:#x}: missing from {view}\n",
            f.process.pid, f.process.name, f.process.task
        );
    }
    out
}

fn main() -> ExitCode {
    let args = Args::parse();
    let report = match detect(&args) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("furnace-hidden-procs: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("furnace-hidden-procs: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", text(&report));
    }
    if report.look.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
