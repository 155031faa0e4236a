//! What the shim and the launch helper say to each other: one [`Request`]
//! as the helper's argv[1] (JSON), one [`Reply`] line on its stdout. For
//! [`Request::Create`] and [`Request::Exec`] the process's stdin, stdout and
//! stderr arrive as fds [`STDIO_FDS`]. libcontainer's warnings and errors go to the helper's
//! stderr, which the caller appends to a failure's message.

use serde::{Deserialize, Serialize};
use std::os::fd::RawFd;
use std::path::PathBuf;

/// The helper's file name; it is installed next to the shim.
pub const HELPER_BIN: &str = "furnace-launch-helper";

/// Where the helper finds the container's stdio.
pub const STDIO_FDS: [RawFd; 3] = [3, 4, 5];

/// Which container: libcontainer's state lives in `state_root/<id>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    pub id: String,
    pub state_root: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Builds the container from `bundle/config.json`; its init waits for
    /// [`Request::Start`].
    Create {
        #[serde(flatten)]
        target: Target,
        bundle: PathBuf,
    },
    Start(Target),
    Kill {
        #[serde(flatten)]
        target: Target,
        signal: i32,
        all: bool,
    },
    Pause(Target),
    Resume(Target),
    /// Kills what still runs, removes the cgroups and the state directory.
    Delete(Target),
    /// Runs `process` (hardened by the caller) inside the running partition
    /// whose init is `init_pid` and whose hardened spec is
    /// `bundle/config.json`; stdio as for Create.
    Exec {
        #[serde(flatten)]
        target: Target,
        bundle: PathBuf,
        init_pid: u32,
        process: Box<oci_spec::runtime::Process>,
    },
}

impl Request {
    pub fn target(&self) -> &Target {
        match self {
            Request::Create { target, .. }
            | Request::Kill { target, .. }
            | Request::Exec { target, .. } => target,
            Request::Start(t) | Request::Pause(t) | Request::Resume(t) | Request::Delete(t) => t,
        }
    }

    /// The operation's name, for error messages.
    pub fn operation(&self) -> &'static str {
        match self {
            Request::Create { .. } => "create",
            Request::Start(_) => "start",
            Request::Kill { .. } => "kill",
            Request::Pause(_) => "pause",
            Request::Resume(_) => "resume",
            Request::Delete(_) => "delete",
            Request::Exec { .. } => "exec",
        }
    }
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    Created { pid: u32 },
    Done,
    Failed { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_one_json_word() {
        let target = Target {
            id: "default.app".into(),
            state_root: "/run/furnace/runtime/default".into(),
        };
        let requests = [
            Request::Create {
                target: target.clone(),
                bundle: "/b".into(),
            },
            Request::Kill {
                target: target.clone(),
                signal: 9,
                all: true,
            },
            Request::Delete(target),
        ];
        for request in requests {
            let json = serde_json::to_string(&request).unwrap();
            assert!(!json.contains('\n'));
            let back: Request = serde_json::from_str(&json).unwrap();
            assert_eq!(back.operation(), request.operation());
            assert_eq!(back.target().id, "default.app");
        }
        let reply: Reply = serde_json::from_str(r#"{"result":"created","pid":42}"#).unwrap();
        assert_eq!(reply, Reply::Created { pid: 42 });
    }
}
