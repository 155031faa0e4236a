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
