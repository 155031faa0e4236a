//! What a tenant controls in a container's spec: its `furnace.dev/*`
//! annotations (one `key=value` per line of input) and the limits
//! annotation's own syntax, checked against the provider's caps; and the
//! provider config file itself, whose TOML the runtime and sidecar read.
#![no_main]

use furnace_config::{Limits, ProviderConfig};
use furnace_runtime::annotations::{self, Role};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static CONFIG: OnceLock<ProviderConfig> = OnceLock::new();
    let config = CONFIG.get_or_init(ProviderConfig::default);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec: HashMap<String, String> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    for role in [Role::App, Role::Sandbox] {
        if let Ok(request) = annotations::parse(&spec, config, role) {
            within_caps(&request.limits, config);
            if let Some(guest) = &request.guest {
                assert!(!guest.contains('/') && guest != "." && guest != "..");
            }
        }
    }
    if let Ok(limits) = annotations::parse_limits(Some(text), config) {
        within_caps(&limits, config);
    }
    let _ = ProviderConfig::from_toml(text);
});

/// What passes must sit within the provider's caps, and be a real limit.
fn within_caps(limits: &Limits, config: &ProviderConfig) {
    let max = config.max_limits();
    assert!(limits.cpu > 0.0 && limits.cpu <= max.cpu, "{limits:?}");
    assert!(
        limits.memory <= max.memory && limits.memory.0 > 0,
        "{limits:?}"
    );
    assert!(limits.pids <= max.pids && limits.pids > 0, "{limits:?}");
    assert!(limits.storage <= max.storage, "{limits:?}");
}
