//! The Linux walkers over guest memory made of fuzzed bytes: the process
//! list, the module list, pid lookups, and the exec, exit and syscall
//! decoders over fuzzed registers. Every outcome is fine but a panic, a
//! hang or an allocation out of proportion.
#![no_main]

use furnace_fuzz::{kernel, registers, take_words};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((words, memory)) = take_words::<8>(data) else {
        return;
    };
    let Some(kernel) = kernel(memory, words[7] & 1 == 1) else {
        return;
    };
    if let Ok(walk) = kernel.process_walk() {
        assert!(walk.entries.len() <= 1 << 22, "the walk is bounded");
    }
    let _ = kernel.modules();
    let _ = kernel.process_dtb(words[6] as u32);
    let _ = kernel.banner();
    if let Ok(layout) = kernel.lifecycle_layout() {
        let _ = kernel.exec(&layout, &registers(&words, layout.exec));
        let _ = kernel.exit(&layout, &registers(&words, layout.exit));
    }
    if let Ok(layout) = kernel.syscall_layout() {
        let at_entry = registers(&words, layout.entry);
        if let Ok(enter) = kernel.syscall_enter(&layout, &at_entry) {
            if let Some(name) = enter.name {
                let _ = kernel.syscall_signature(&layout, name);
            }
        }
        if let Some(exit) = layout.exit {
            let _ = kernel.syscall_exit(&layout, &registers(&words, exit));
        }
    }
});
