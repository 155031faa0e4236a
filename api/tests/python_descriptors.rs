//! The Python SDK ships a copy of the compiled descriptors
//! (`api/python/furnace_vmi/descriptors.binpb`) and builds its message classes
//! from it; this keeps that copy byte for byte equal to `furnace_api::DESCRIPTORS`.
//! `FURNACE_REFRESH_DESCRIPTORS=1 cargo test -p furnace-api --test python_descriptors`
//! rewrites the copy after a `.proto` change.

use std::path::PathBuf;

const REFRESH_VAR: &str = "FURNACE_REFRESH_DESCRIPTORS";

fn python_copy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/furnace_vmi/descriptors.binpb")
}

#[test]
fn python_sdk_descriptors_match_the_protos() {
    let path = python_copy();
    let refresh = std::env::var_os(REFRESH_VAR).is_some_and(|v| !v.is_empty() && v != "0");
    let current = std::fs::read(&path).ok();
    if current.as_deref() == Some(furnace_api::DESCRIPTORS) {
        return;
    }
    if refresh {
        std::fs::write(&path, furnace_api::DESCRIPTORS)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        eprintln!(
            "refreshed {} ({} bytes)",
            path.display(),
            furnace_api::DESCRIPTORS.len()
        );
        return;
    }
    let state = match &current {
        None => "is missing".to_string(),
        Some(bytes) => format!(
            "differs from furnace_api::DESCRIPTORS ({} bytes checked in, {} compiled)",
            bytes.len(),
            furnace_api::DESCRIPTORS.len()
        ),
    };
    panic!(
        "{} {state}: the .proto files changed since the Python SDK's copy was made.\n\
         Refresh it with `{REFRESH_VAR}=1 cargo test -p furnace-api --test python_descriptors` \
         and commit the file.",
        path.display()
    );
}
