//! Events as DRAKVUF prints them: `syscalls` plugin lines for syscalls,
//! `procmon` lines for exec and exit. Common fields: TimeStamp (seconds and
//! microseconds, as a string), PID, PPID, TID, UserId, ProcessName, Method.
//! Syscall arguments follow under the kernel's own names, strings as read
//! from the caller and numbers as hex strings.

use furnace_api::v1::{event::Detail, Event};
use serde_json::{json, Map, Value};

pub fn line(event: &Event) -> Value {
    let mut fields = Map::new();
    let seconds = event.timestamp_ns / 1_000_000_000;
    let micros = event.timestamp_ns % 1_000_000_000 / 1000;
    fields.insert("TimeStamp".into(), format!("{seconds}.{micros:06}").into());
    if let Some(task) = &event.task {
        fields.insert("PID".into(), task.pid.into());
        fields.insert("PPID".into(), task.ppid.into());
        fields.insert("TID".into(), task.tid.into());
        fields.insert("UserId".into(), task.uid.into());
        fields.insert("ProcessName".into(), task.comm.clone().into());
        fields.insert("CR3".into(), hex(task.dtb));
    }
    fields.insert("vCPU".into(), event.vcpu.into());
    fields.insert("EventUID".into(), hex(event.id));
    let (plugin, method) = match &event.detail {
        Some(Detail::SyscallEnter(call)) => {
            fields.insert("Syscall".into(), call.number.into());
            fields.insert("NArgs".into(), call.arguments.len().into());
            for argument in &call.arguments {
                let value = match &argument.text {
                    Some(text) => Value::from(text.clone()),
                    None => hex(argument.value),
                };
                fields.insert(argument.name.clone(), value);
            }
            ("syscall", call.name.clone())
        }
        Some(Detail::SyscallExit(ret)) => {
            fields.insert("Syscall".into(), ret.number.into());
            fields.insert("ReturnValue".into(), ret.value.into());
            ("sysret", ret.name.clone())
        }
        Some(Detail::Exec(exec)) => {
            fields.insert("ImagePathName".into(), exec.filename.clone().into());
            ("procmon", "execve".to_owned())
        }
        Some(Detail::Exit(exit)) => {
            fields.insert("ExitCode".into(), exit.code.into());
            ("procmon", "exit".to_owned())
        }
        Some(Detail::Breakpoint(hit)) => {
            fields.insert("Address".into(), hex(hit.address));
            ("bp", "breakpoint".to_owned())
        }
        Some(Detail::Timer(tick)) => {
            fields.insert("Sequence".into(), tick.sequence.into());
            ("timer", "tick".to_owned())
        }
        None => ("unknown", String::new()),
    };
    fields.insert("Plugin".into(), plugin.into());
    fields.insert("Method".into(), method.into());
    Value::Object(fields)
}

/// How many events the sidecar dropped for this app before the next one.
pub fn dropped(count: u64) -> Value {
    json!({ "Plugin": "furnace", "Method": "dropped", "Count": count })
}

fn hex(value: u64) -> Value {
    format!("{value:#x}").into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use furnace_api::v1::{SyscallArgument, SyscallEnter, Task};

    #[test]
    fn an_openat_prints_with_drakvufs_names_and_its_arguments_by_name() {
        let event = Event {
            id: 31,
            timestamp_ns: 1_700_000_000_123_456_789,
            task: Some(Task {
                pid: 90,
                tid: 91,
                ppid: 1,
                uid: 1000,
                comm: "cat".into(),
                dtb: 0x1234000,
            }),
            detail: Some(Detail::SyscallEnter(SyscallEnter {
                number: 257,
                name: "openat".into(),
                arguments: vec![
                    SyscallArgument {
                        name: "dfd".into(),
                        r#type: "int".into(),
                        value: 0xffff_ffff_ffff_ff9c,
                        text: None,
                    },
                    SyscallArgument {
                        name: "filename".into(),
                        r#type: "const char *".into(),
                        value: 0x7ffd_0000,
                        text: Some("/tmp/x".into()),
                    },
                ],
            })),
            ..Default::default()
        };
        let line = line(&event);
        assert_eq!(line["TimeStamp"], "1700000000.123456");
        assert_eq!(line["Plugin"], "syscall");
        assert_eq!(line["Method"], "openat");
        assert_eq!(
            (line["PID"].as_u64(), line["TID"].as_u64()),
            (Some(90), Some(91))
        );
        assert_eq!(line["UserId"], 1000);
        assert_eq!(line["ProcessName"], "cat");
        assert_eq!(line["filename"], "/tmp/x");
        assert_eq!(line["dfd"], "0xffffffffffffff9c");
        assert_eq!(line["NArgs"], 2);
    }
}
