//! `furnace-probe fac STEP...`: the app's facilities session, one step at a
//! time, each answered by one JSON line on stdout:
//! `{"step": "...", "ok": true, "value": ...}` or
//! `{"step": "...", "ok": false, "code": "LIMIT_EXCEEDED", "message": "..."}`.
//!
//! Steps (`NAME:ARG`): `notify:TEXT`, `request:TEXT` (5 s deadline),
//! `receive:MS` (one backend message or `null`), `flush:MS`, `put:KEY=VALUE`,
//! `put-bytes:KEY=N` (N bytes of `x`), `get:KEY`, `delete:KEY`, `keys`,
//! `status` (the relay's status), `notify-bytes:N`, `flood:N` (N notifies at
//! once; the value counts them by outcome), `sleep:MS`, `ready` (prints a line
//! the test waits for), `reconnect` (a new session), `garbage` (a frame that
//! is no protobuf, on a connection of its own; the value is the relay's answer).
//! A failed connect prints `{"step": "connect", ...}` and exits 1.

use furnace_api::error::code_name;
use furnace_api::{ApiError, Facilities};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

pub fn run(steps: &[String]) -> i32 {
    let mut fac = match Facilities::connect_default() {
        Ok(f) => f,
        Err(e) => {
            crate::say(&failure("connect", &e).to_string());
            return 1;
        }
    };
    for step in steps {
        let (name, arg) = step.split_once(':').unwrap_or((step.as_str(), ""));
        let outcome = match name {
            "reconnect" => Facilities::connect_default().map(|f| {
                fac = f;
                Value::Null
            }),
            "garbage" => garbage(),
            _ => one(&fac, name, arg),
        };
        let line = match outcome {
            Ok(value) => json!({"step": step, "ok": true, "value": value}),
            Err(e) => failure(step, &e),
        };
        crate::say(&line.to_string());
    }
    0
}

fn failure(step: &str, e: &ApiError) -> Value {
    json!({"step": step, "ok": false, "code": code_name(e.code), "message": e.message})
}

fn ms(arg: &str) -> Duration {
    Duration::from_millis(arg.parse().unwrap_or(1000))
}

fn key_value(arg: &str) -> (&str, &str) {
    arg.split_once('=').unwrap_or((arg, ""))
}

fn text(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

fn one(fac: &Facilities, name: &str, arg: &str) -> Result<Value, ApiError> {
    let storage = fac.storage();
    Ok(match name {
        "notify" => {
            fac.notify(arg.as_bytes())?;
            Value::Null
        }
        "notify-bytes" => {
            fac.notify(&vec![b'x'; arg.parse().unwrap_or(0)])?;
            Value::Null
        }
        "flood" => {
            let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
            for i in 0..arg.parse::<u64>().unwrap_or(0) {
                let outcome = match fac.notify(format!("flood-{i}").as_bytes()) {
                    Ok(()) => "ok".to_string(),
                    Err(e) => code_name(e.code).to_string(),
                };
                *outcomes.entry(outcome).or_default() += 1;
            }
            json!(outcomes)
        }
        "request" => text(&fac.request(arg.as_bytes(), Duration::from_secs(5))?),
        "receive" => match fac.receive(ms(arg))? {
            Some(m) => json!({"kind": format!("{:?}", m.kind), "data": text(&m.data)}),
            None => Value::Null,
        },
        "flush" => {
            fac.flush(ms(arg))?;
            Value::Null
        }
        "put" => {
            let (k, v) = key_value(arg);
            storage.put(k, v.as_bytes())?;
            Value::Null
        }
        "put-bytes" => {
            let (k, n) = key_value(arg);
            storage.put(k, &vec![b'x'; n.parse().unwrap_or(0)])?;
            Value::Null
        }
        "get" => text(&storage.get(arg)?),
        "delete" => {
            storage.delete(arg)?;
            Value::Null
        }
        "keys" => json!(storage.keys()?),
        "status" => match fac.relay_status() {
            Some(s) => json!({
                "backend_connected": s.backend_connected,
                "max_message_bytes": s.max_message_bytes,
                "messages_per_second": s.messages_per_second,
                "storage_quota_bytes": s.storage_quota_bytes,
            }),
            None => Value::Null,
        },
        "sleep" => {
            std::thread::sleep(ms(arg));
            Value::Null
        }
        "ready" => Value::Null,
        other => {
            return Err(ApiError::new(
                furnace_api::ErrorCode::InvalidArgument,
                format!("unknown step {other:?}"),
            ))
        }
    })
}

/// Sends a well-framed payload that is no `Frame` and returns what the
/// relay answered: `{"failed": CODE}` for the typed error it should send.
fn garbage() -> Result<Value, ApiError> {
    use furnace_api::fac::v1::frame::Body;
    use std::io::Write;
    let io = |e: std::io::Error| ApiError::new(furnace_api::ErrorCode::Unavailable, e.to_string());
    let mut raw = std::os::unix::net::UnixStream::connect(furnace_api::facilities::DEFAULT_SOCKET)
        .map_err(io)?;
    raw.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    raw.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
        .map_err(io)?;
    let reply = furnace_api::facilities::frame::read(&mut raw, 1 << 20)
        .map_err(|e| ApiError::new(furnace_api::ErrorCode::Internal, e.to_string()))?;
    Ok(match reply {
        Some(Body::Failed(f)) => json!({"failed": code_name(f.code())}),
        Some(other) => json!({"other": format!("{other:?}")}),
        None => json!("closed"),
    })
}
