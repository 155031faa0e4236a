//! Compiles `proto/` with protox (a pure-Rust protobuf compiler) so building
//! Furnace needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/furnace/vmi/v1/types.proto",
        "proto/furnace/vmi/v1/events.proto",
        "proto/furnace/vmi/v1/vmi.proto",
        "proto/furnace/vmi/v1/admin.proto",
        "proto/furnace/fac/v1/facilities.proto",
        "proto/furnace/ttrpc/v1/ttrpc.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    // The Python SDK loads the same descriptors at run time, so it needs no protoc either.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("descriptors.binpb"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new()
        // Refcounted: the relay keeps a message in its outbox and forwards
        // it without copying, and decodes it out of the frame in place.
        .bytes([".furnace.fac.v1.Sealed.ciphertext"])
        .type_attribute(
            ".furnace",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .type_attribute(".furnace", "#[serde(rename_all = \"snake_case\")]")
        .compile_fds(descriptors)?;
    Ok(())
}
