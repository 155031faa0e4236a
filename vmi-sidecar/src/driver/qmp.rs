//! A small synchronous QMP client.
//!
//! The `qapi` crate was the obvious candidate, but its handshake panics when
//! QEMU closes the socket early (a dead guest is an input we must report, not
//! crash on) and its generated types pin one QEMU schema. QMP is line-delimited
//! JSON, so the few commands Furnace needs are plain `serde_json` values here.

use crate::error::{Result, VmiError};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The longest Furnace waits for any single QMP reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct QmpClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// Stray events skipped while waiting for the greeting.
const MAX_EVENTS_BEFORE_GREETING: usize = 16;

impl QmpClient {
    /// Connects and negotiates capabilities. A socket nobody listens on (QEMU
    /// died and left it behind) is reported as [`VmiError::GuestGone`].
    pub fn connect(path: &Path) -> Result<Self> {
        let stream = super::connect_qemu_socket(path, "QMP")?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(|e| VmiError::io("setting QMP socket timeouts", e))?;
        let writer = stream
            .try_clone()
            .map_err(|e| VmiError::io("cloning the QMP socket", e))?;
        let mut client = QmpClient {
            reader: BufReader::new(stream),
            writer,
        };
        // QEMU can send an event meant for the monitor's previous client
        // ahead of the greeting (seen: a RESUME, as the guest resumed while
        // this client connected).
        let mut greeting = client.read_message()?;
        for _ in 0..MAX_EVENTS_BEFORE_GREETING {
            if greeting.get("event").is_none() {
                break;
            }
            greeting = client.read_message()?;
        }
        if greeting.get("QMP").is_none() {
            return Err(VmiError::Qmp(format!("unexpected greeting: {greeting}")));
        }
        client.execute("qmp_capabilities", None)?;
        Ok(client)
    }

    /// Runs one command and returns its `return` value. Asynchronous events
    /// that arrive meanwhile are skipped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = serde_json::to_vec(&request).expect("a JSON value serializes");
        line.push(b'\n');
        self.writer.write_all(&line).map_err(gone_or_io)?;
        loop {
            let mut message = self.read_message()?;
            if let Some(ret) = message.get_mut("return") {
                return Ok(ret.take());
            }
            if let Some(error) = message.get("error") {
                return Err(VmiError::Qmp(format!(
                    "{command}: {}",
                    error
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                )));
            }
            if message.get("event").is_none() {
                return Err(VmiError::Qmp(format!(
                    "{command}: unexpected reply {message}"
                )));
            }
        }
    }

    /// Runs a human-monitor command (e.g. `xp /1gx 0x1000`) and returns its
    /// text: for root tools and benches. A sidecar's worker never holds a
    /// `QmpClient`; its monitor commands are [`super::monitor::MonitorCommand`].
    pub fn human_monitor(&mut self, command_line: &str, cpu_index: Option<u32>) -> Result<String> {
        let mut arguments = json!({ "command-line": command_line });
        if let Some(cpu) = cpu_index {
            arguments["cpu-index"] = json!(cpu);
        }
        match self.execute("human-monitor-command", Some(arguments))? {
            Value::String(text) => Ok(text),
            other => Err(VmiError::Qmp(format!(
                "{command_line}: expected text, got {other}"
            ))),
        }
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(gone_or_io)?;
        if n == 0 {
            return Err(VmiError::GuestGone("QEMU closed the QMP connection".into()));
        }
        serde_json::from_str(&line)
            .map_err(|e| VmiError::Qmp(format!("malformed QMP message {line:?}: {e}")))
    }
}

fn gone_or_io(e: std::io::Error) -> VmiError {
    use std::io::ErrorKind::*;
    match e.kind() {
        BrokenPipe | ConnectionReset | UnexpectedEof => VmiError::GuestGone(format!(
            "QMP connection lost ({e}); QEMU has probably exited"
        )),
        WouldBlock | TimedOut => VmiError::GuestGone(format!(
            "QEMU did not answer on QMP within {REPLY_TIMEOUT:?}"
        )),
        _ => VmiError::io("QMP I/O", e),
    }
}
