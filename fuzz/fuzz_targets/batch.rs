//! A batch as an app sends it, validated and, when valid, run with its
//! links resolved against guest memory made of the same fuzzed bytes.
#![no_main]

use furnace_api::v1::BatchRequest;
use furnace_fuzz::kernel;
use furnace_vmi::server::decoders::{run_batch, validate_batch};
use furnace_vmi::server::SidecarConfig;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (batch, memory) = rest.split_at((split as usize * 8).min(rest.len()));
    let Ok(batch) = BatchRequest::decode(batch) else {
        return;
    };
    let limits = SidecarConfig {
        max_batch_calls: 64,
        max_read_bytes: 64 << 10,
        ..SidecarConfig::default()
    };
    if validate_batch(&batch.calls, &limits).is_err() {
        return;
    }
    let Some(kernel) = kernel(memory, false) else {
        return;
    };
    let response = run_batch(&kernel, &limits, &batch.calls);
    assert!(response.results.len() <= batch.calls.len());
});
