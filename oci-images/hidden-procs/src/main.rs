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
//! With a backend (the facilities socket `/run/furnace/fac.sock` exists, or
//! `--facilities PATH`), the report also goes to the tenant's backend as
//! one JSON notify ([`BackendMessage`]), after the report on stdout, and the
//! app waits (`--flush-timeout`) until the backend has it. A failed scan is
//! reported there too, with `error` instead of the findings.
//!
//! Exit status, as diff(1): 0 nothing hidden, 1 hidden processes found, 2
//! trouble, including a report the backend did not take (the report on
//! stdout is printed all the same).

mod backend;
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
    #[command(flatten)]
    backend: backend::BackendArgs,
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

/// What the backend gets: one notify per run, JSON.
#[derive(Serialize)]
struct BackendMessage<'a> {
    /// Always `furnace-hidden-procs`, for a backend that hears several apps.
    report: &'static str,
    version: u32,
    /// The two views compared, as `missing_from` names them.
    views: [&'static str; 2],
    /// How many findings: processes missing from one of the views.
    hidden: usize,
    /// The report, as `--json` prints it; absent when the scan failed.
    #[serde(flatten)]
    report_body: Option<&'a Report>,
    /// Why the scan failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn backend_message(outcome: Result<&Report, &str>) -> Vec<u8> {
    let (report_body, error) = match outcome {
        Ok(report) => (Some(report), None),
        Err(e) => (None, Some(e)),
    };
    let message = BackendMessage {
        report: "furnace-hidden-procs",
        version: 1,
        views: ["task_list", "pid_idr"],
        hidden: report_body.map_or(0, |r| r.look.findings.len()),
        report_body,
        error,
    };
    serde_json::to_vec(&message).expect("the report serializes")
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
    let outcome = detect(&args);
    let mut code = match &outcome {
        Ok(report) => match print_report(report, args.json) {
            Ok(()) if report.look.findings.is_empty() => ExitCode::SUCCESS,
            Ok(()) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("furnace-hidden-procs: {e}");
                ExitCode::from(2)
            }
        },
        Err(e) => {
            eprintln!("furnace-hidden-procs: {e}");
            ExitCode::from(2)
        }
    };
    if let Some(socket) = args.backend.socket() {
        let message = backend_message(outcome.as_ref().map_err(String::as_str));
        match args.backend.send(&socket, &message) {
            Ok(()) => eprintln!(
                "furnace-hidden-procs: reported to the backend through {}",
                socket.display()
            ),
            Err(e) => {
                eprintln!(
                    "furnace-hidden-procs: the backend ({}): {e}",
                    socket.display()
                );
                code = ExitCode::from(2);
            }
        }
    }
    code
}

fn print_report(report: &Report, json: bool) -> Result<(), String> {
    if json {
        let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        print!("{}", text(report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use views::{MissingFrom, Seen};

    fn report(findings: Vec<Finding>, paused: bool) -> Report {
        Report {
            look: Look {
                task_list: 41,
                pid_idr: 42,
                findings,
            },
            paused,
            rounds: if paused { 1 } else { 3 },
        }
    }

    fn hidden_rootkit() -> Finding {
        Finding {
            process: Seen {
                pid: 77,
                name: "rootkit".into(),
                task: 0xffff_8880_0123_4000,
            },
            missing_from: MissingFrom::TaskList,
        }
    }

    #[test]
    fn the_text_report_names_each_hidden_process_and_the_view_it_is_missing_from() {
        let clean = text(&report(vec![], true));
        assert_eq!(
            clean,
            "41 processes on the task list, 42 in the pid idr (guest paused for the look)\n\
             no hidden processes\n"
        );
        let found = text(&report(vec![hidden_rootkit()], false));
        assert_eq!(
            found,
            "41 processes on the task list, 42 in the pid idr (3 looks, guest running)\n\
             HIDDEN pid 77 (rootkit) task 0xffff888001234000: missing from the task list\n"
        );
    }

    #[test]
    fn the_backend_gets_the_findings_and_the_views_compared_as_json() {
        let r = report(vec![hidden_rootkit()], false);
        let message: serde_json::Value = serde_json::from_slice(&backend_message(Ok(&r))).unwrap();
        assert_eq!(
            message,
            serde_json::json!({
                "report": "furnace-hidden-procs",
                "version": 1,
                "views": ["task_list", "pid_idr"],
                "hidden": 1,
                "task_list": 41,
                "pid_idr": 42,
                "paused": false,
                "rounds": 3,
                "findings": [{
                    "pid": 77,
                    "name": "rootkit",
                    "task": 0xffff_8880_0123_4000_u64,
                    "missing_from": "task_list",
                }],
            })
        );
        // What --json prints is the same report, less the envelope.
        let printed: serde_json::Value =
            serde_json::from_str(&serde_json::to_string_pretty(&r).unwrap()).unwrap();
        assert_eq!(printed["findings"], message["findings"]);
    }

    #[test]
    fn a_failed_scan_reaches_the_backend_as_an_error_without_findings() {
        let message: serde_json::Value =
            serde_json::from_slice(&backend_message(Err("the pid idr: a short read"))).unwrap();
        assert_eq!(message["error"], "the pid idr: a short read");
        assert_eq!(message["hidden"], 0);
        assert!(message.get("findings").is_none(), "{message}");
    }
}
