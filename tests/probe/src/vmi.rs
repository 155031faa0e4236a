//! `furnace-probe vmi-ps`: the app's own view of the guest, through the SDK.

use std::path::PathBuf;

/// Prints the process list as `furnace vmi ps --json` does; returns the
/// exit code.
pub fn ps(args: &[String]) -> i32 {
    let socket = match args {
        [] => PathBuf::from(furnace_api::client::DEFAULT_SOCKET),
        [flag, path] if flag == "--socket" => PathBuf::from(path),
        _ => {
            crate::complain("usage: vmi-ps [--socket PATH]");
            return 2;
        }
    };
    let processes = match furnace_api::Vmi::connect(&socket).and_then(|vmi| vmi.processes()) {
        Ok(p) => p,
        Err(e) => {
            crate::complain(&format!("vmi-ps via {}: {e}", socket.display()));
            return 1;
        }
    };
    match serde_json::to_string_pretty(&processes) {
        Ok(text) => {
            crate::say(&text);
            0
        }
        Err(e) => {
            crate::complain(&format!("vmi-ps: {e}"));
            1
        }
    }
}

/// `vmi-hammer N MS`: makes N `WritePhysical` calls, MS milliseconds
/// apart, which an app without the `write` permission is refused, printing
/// one line per call, its error code (`OK` if it was served); exits 0 once
/// all N are made.
pub fn hammer(args: &[String]) -> i32 {
    let parsed = match args {
        [n, ms] => n.parse::<u32>().ok().zip(ms.parse::<u64>().ok()),
        _ => None,
    };
    let Some((calls, gap_ms)) = parsed else {
        crate::complain("usage: vmi-hammer N MS");
        return 2;
    };
    let socket = PathBuf::from(furnace_api::client::DEFAULT_SOCKET);
    let vmi = match furnace_api::Vmi::connect(&socket) {
        Ok(v) => v,
        Err(e) => {
            crate::complain(&format!("vmi-hammer via {}: {e}", socket.display()));
            return 1;
        }
    };
    for _ in 0..calls {
        match vmi.write_physical(0, &[0]) {
            Ok(()) => crate::say("OK"),
            Err(e) => crate::say(furnace_api::error::code_name(e.code)),
        }
        std::thread::sleep(std::time::Duration::from_millis(gap_ms));
    }
    0
}
