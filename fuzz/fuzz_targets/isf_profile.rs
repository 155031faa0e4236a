//! A kernel profile (Volatility 3 ISF JSON) as the sidecar loads it, and
//! the layout and symbol lookups attach makes from it.
#![no_main]

use furnace_vmi::linux::KernelLayout;
use furnace_vmi::profile::Profile;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(profile) = Profile::from_json(Path::new("fuzzed.json"), data) else {
        return;
    };
    let _ = KernelLayout::from_profile(&profile);
    let _ = profile.banner();
    let _ = profile.member_path_offset("module", "core_layout.base");
    let _ = profile.member_path_offset("mm_struct", "pgd");
    let _ = profile.struct_size("task_struct");
    for (name, _) in profile.symbols().take(64) {
        let _ = profile.symbol(name);
    }
});
