//! QEMU's monitor, as the driver uses it: a closed set of commands.
//!
//! QMP itself is full control of QEMU (`human-monitor-command` alone reaches
//! every HMP command, and some of those reach host files and processes). The
//! driver needs seven things from it, named here as [`MonitorCommand`]. A
//! sidecar's unprivileged worker can send only these to the privileged
//! helper that holds the QMP socket (`crate::privsep`); a tool running as
//! root beside the guest talks to the socket itself ([`QmpSocket`]).

use super::qmp::QmpClient;
use super::{RunState, VmControl};
use crate::error::{Result, VmiError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum MonitorCommand {
    /// Pause every vCPU (`stop`).
    Stop,
    /// Resume (`cont`).
    Cont,
    QueryStatus,
    QueryKvm,
    /// The vCPUs (`query-cpus-fast`).
    QueryCpusFast,
    /// HMP `info registers` of one vCPU: text.
    Registers {
        vcpu: u32,
    },
    /// HMP `info mtree -f`, the guest-physical memory map: text.
    MemoryMap,
}

impl MonitorCommand {
    /// The QMP command and arguments that carry it out.
    pub fn to_qmp(&self) -> (&'static str, Option<Value>) {
        let hmp = |line: &str, vcpu: Option<u32>| {
            let mut arguments = json!({ "command-line": line });
            if let Some(cpu) = vcpu {
                arguments["cpu-index"] = json!(cpu);
            }
            ("human-monitor-command", Some(arguments))
        };
        match self {
            MonitorCommand::Stop => ("stop", None),
            MonitorCommand::Cont => ("cont", None),
            MonitorCommand::QueryStatus => ("query-status", None),
            MonitorCommand::QueryKvm => ("query-kvm", None),
            MonitorCommand::QueryCpusFast => ("query-cpus-fast", None),
            MonitorCommand::Registers { vcpu } => hmp("info registers", Some(*vcpu)),
            MonitorCommand::MemoryMap => hmp("info mtree -f", None),
        }
    }
}

/// Whoever carries out monitor commands for a driver.
pub trait Monitor: Send + Sync {
    /// Runs `command` and returns QMP's `return` value (text, for the HMP ones).
    fn run(&self, command: &MonitorCommand) -> Result<Value>;
}

/// Pausing and resuming through a monitor.
pub struct MonitorControl<'a>(pub &'a dyn Monitor);

impl VmControl for MonitorControl<'_> {
    fn pause(&self) -> Result<()> {
        self.0.run(&MonitorCommand::Stop).map(drop)
    }

    fn resume(&self) -> Result<()> {
        self.0.run(&MonitorCommand::Cont).map(drop)
    }

    fn run_state(&self) -> Result<RunState> {
        let status = self.0.run(&MonitorCommand::QueryStatus)?;
        Ok(match status.get("status").and_then(Value::as_str) {
            Some("running") => RunState::Running,
            Some("paused") => RunState::Paused,
            Some(other) => RunState::Other(other.to_owned()),
            None => {
                return Err(VmiError::Qmp(format!(
                    "query-status: no status in {status}"
                )))
            }
        })
    }
}

/// QEMU's QMP socket, connected afresh for each command: QEMU serves one
/// client per socket at a time, so a second tool on the same guest waits
/// milliseconds, not forever. A connection costs well under a millisecond.
pub struct QmpSocket {
    path: PathBuf,
    /// Serializes this process's QMP operations.
    lock: Mutex<()>,
}

impl QmpSocket {
    pub fn new(path: &Path) -> Self {
        QmpSocket {
            path: path.to_owned(),
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs any QMP command: for root tools and tests (`pmemsave`, say),
    /// never reachable from a sidecar's worker.
    pub fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value> {
        // The lock guards no data, so a panic elsewhere cannot leave it inconsistent.
        let _serialized = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        QmpClient::connect(&self.path)?.execute(command, arguments)
    }
}

impl Monitor for QmpSocket {
    fn run(&self, command: &MonitorCommand) -> Result<Value> {
        let (name, arguments) = command.to_qmp();
        self.execute(name, arguments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_travel_as_tagged_json_and_strangers_do_not_decode() {
        let text = serde_json::to_string(&MonitorCommand::Registers { vcpu: 1 }).unwrap();
        assert_eq!(text, r#"{"command":"registers","vcpu":1}"#);
        assert_eq!(
            serde_json::from_str::<MonitorCommand>(&text).unwrap(),
            MonitorCommand::Registers { vcpu: 1 }
        );
        for hostile in [
            r#"{"command":"human-monitor-command","command-line":"info registers"}"#,
            r#"{"command":"registers","vcpu":1,"command-line":"quit"}"#,
            r#"{"command":"quit"}"#,
        ] {
            assert!(
                serde_json::from_str::<MonitorCommand>(hostile).is_err(),
                "{hostile}"
            );
        }
    }

    #[test]
    fn hmp_commands_are_fixed_lines() {
        let (name, args) = MonitorCommand::Registers { vcpu: 2 }.to_qmp();
        assert_eq!(name, "human-monitor-command");
        assert_eq!(
            args.unwrap(),
            json!({"command-line": "info registers", "cpu-index": 2})
        );
        let (_, args) = MonitorCommand::MemoryMap.to_qmp();
        assert_eq!(args.unwrap(), json!({"command-line": "info mtree -f"}));
    }
}
