//! The self-defense loop's audit log (docs/defense.md) as the tests read it:
//! one JSON object a line, written by the shims.

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Every record in `path`; each line must be JSON.
pub fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each audit line is JSON"))
        .collect()
}

/// The first record in `path` that `matches`, waiting up to `timeout`.
pub fn wait_for(path: &Path, timeout: Duration, matches: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(record) = records(path).into_iter().find(&matches) {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "no matching record in {} after {timeout:?}: {:?}",
            path.display(),
            records(path)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
