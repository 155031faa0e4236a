//! The containerd configuration documented in docs/containerd.md, checked by
//! the real containerd 1.6 (no mock), and the private-containerd fixture the
//! shim's end-to-end tests run on.

use furnace_tests::containerd::{TestContainerd, CONTAINERD, FURNACE_RUNTIME};
use std::path::{Path, PathBuf};
use std::process::Command;

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

fn table<'a>(value: &'a toml::Value, path: &[&str]) -> &'a toml::Table {
    let mut at = value;
    for (i, key) in path.iter().enumerate() {
        at = at
            .get(key)
            .unwrap_or_else(|| panic!("the dump has no [{}]", path[..=i].join(".")));
    }
    at.as_table()
        .unwrap_or_else(|| panic!("{} is not a table", path.join(".")))
}

/// Uses the real containerd (no mock): `containerd --config
/// docs/containerd-furnace.toml config dump` parses the documented file
/// without starting a daemon, and what containerd would run with has the
/// `furnace` CRI runtime of type `io.furnace.v1`, passing `furnace.dev/*`
/// annotations through, with the `ConfigPath` option; runc stays the default.
#[test]
fn containerd_reads_the_documented_config() {
    let config = docs().join("containerd-furnace.toml");
    let out = Command::new(CONTAINERD)
        .arg("--config")
        .arg(&config)
        .args(["config", "dump"])
        .output()
        .expect("containerd runs");
    assert!(
        out.status.success(),
        "containerd config dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout))
        .expect("containerd's config dump is TOML");
    assert_eq!(dump.get("version").and_then(|v| v.as_integer()), Some(2));

    let cri = ["plugins", "io.containerd.grpc.v1.cri", "containerd"];
    let containerd = table(&dump, &cri);
    assert_eq!(
        containerd
            .get("default_runtime_name")
            .and_then(|v| v.as_str()),
        Some("runc")
    );
    let runtimes = table(&dump, &[&cri[..], &["runtimes"]].concat());
    let mut names: Vec<&str> = runtimes.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["furnace", "runc"],
        "the declared runtimes, no others"
    );
    assert_eq!(
        runtimes["runc"]
            .get("runtime_type")
            .and_then(|v| v.as_str()),
        Some("io.containerd.runc.v2")
    );

    let furnace = table(&dump, &[&cri[..], &["runtimes", "furnace"]].concat());
    assert_eq!(
        furnace.get("runtime_type").and_then(|v| v.as_str()),
        Some(FURNACE_RUNTIME)
    );
    let furnace_dev = toml::Value::Array(vec!["furnace.dev/*".into()]);
    assert_eq!(furnace.get("pod_annotations"), Some(&furnace_dev));
    assert_eq!(furnace.get("container_annotations"), Some(&furnace_dev));
    let options = furnace
        .get("options")
        .and_then(|o| o.as_table())
        .expect("the furnace runtime has an options table");
    assert_eq!(
        options.get("ConfigPath").and_then(|v| v.as_str()),
        Some("/etc/furnace/furnace.toml")
    );
}

/// The copy of the config in docs/containerd.md (the ```toml block after the
/// `<!-- containerd-furnace.toml -->` marker) is the file containerd reads,
/// byte for byte, so the two cannot drift. No containerd needed.
#[test]
fn the_doc_shows_the_config_file_verbatim() {
    let file = std::fs::read_to_string(docs().join("containerd-furnace.toml")).expect("the file");
    let doc = std::fs::read_to_string(docs().join("containerd.md")).expect("the doc");
    let (_, after) = doc
        .split_once("<!-- containerd-furnace.toml -->\n```toml\n")
        .expect("docs/containerd.md has the marked ```toml block");
    let (block, _) = after.split_once("\n```\n").expect("the block is closed");
    assert_eq!(
        format!("{block}\n"),
        file,
        "docs/containerd.md's copy differs from docs/containerd-furnace.toml"
    );
}

/// Uses the real containerd (no mock): the fixture starts a private daemon
/// that answers `ctr version` as 1.6.x, keeps answering on the same socket
/// after a restart, and on drop leaves neither the daemon nor its directory.
#[test]
fn private_containerd_starts_restarts_and_tears_down() {
    let mut containerd = TestContainerd::start("config").expect("a private containerd starts");
    let dir = containerd.dir.clone();
    assert!(dir.starts_with("/run/furnace-test/containerd"));
    assert!(containerd.address.starts_with(&dir));
    let version = containerd.server_version().expect("ctr version");
    assert!(version.starts_with("1.6."), "server version {version}");

    let before = containerd.pid();
    containerd.restart().expect("containerd restarts");
    assert_ne!(containerd.pid(), before, "a new containerd process");
    assert!(!Path::new(&format!("/proc/{before}")).exists());
    let version = containerd
        .server_version()
        .expect("ctr version after restart");
    assert!(version.starts_with("1.6."), "server version {version}");
    assert!(containerd.pids_of_shims().is_empty(), "no tasks, no shims");

    let pid = containerd.pid();
    drop(containerd);
    assert!(!dir.exists(), "{} is removed", dir.display());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "containerd {pid} is gone"
    );
}
