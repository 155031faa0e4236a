//! The one provider config file: the complete example in docs/containerd.md
//! (the ```toml block after the `<!-- furnace.toml -->` marker) documents
//! every key with a comment, and the shim, the sidecar and the CLI all read
//! it, every value as written rather than a default. A misspelt key is
//! refused by each of them, naming the key and the file. No guest needed.

use furnace_api::v1::Permission;
use furnace_config::{ByteSize, MaxLimits, ProviderConfig, SeccompMode};
use furnace_tests::{bin_dir, furnace_bin};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The example, exactly as docs/containerd.md shows it.
fn documented_example() -> String {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/containerd.md");
    let doc = std::fs::read_to_string(doc).expect("docs/containerd.md");
    let (_, after) = doc
        .split_once("<!-- furnace.toml -->\n```toml\n")
        .expect("docs/containerd.md has the ```toml block marked <!-- furnace.toml -->");
    let (block, _) = after.split_once("\n```\n").expect("the block is closed");
    format!("{block}\n")
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("furnace.toml");
    std::fs::write(&path, text).expect("writing the config");
    path
}

/// Every dotted key with a value that is not a table.
fn leaf_keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let key = format!("{prefix}{key}");
        match value.as_table() {
            Some(inner) => leaf_keys(inner, &format!("{key}."), out),
            None => {
                out.insert(key);
            }
        }
    }
}

#[test]
fn the_documented_example_has_every_key_each_with_a_comment() {
    let example = documented_example();
    let mut documented = BTreeSet::new();
    leaf_keys(
        &example.parse().expect("the example is TOML"),
        "",
        &mut documented,
    );

    // Every key of the schema: the defaults, with the optional maxima set.
    let mut full = ProviderConfig::default();
    full.limits.max = MaxLimits {
        cpu: Some(2.0),
        memory: Some(full.limits.default.memory),
        pids: Some(30),
        storage: Some(full.limits.default.storage),
    };
    let mut schema = BTreeSet::new();
    leaf_keys(&full.to_toml().parse().unwrap(), "", &mut schema);
    assert_eq!(
        documented, schema,
        "the example lists exactly the schema's keys"
    );

    for line in example.lines() {
        let line = line.trim();
        if !line.is_empty() && !line.starts_with('#') {
            assert!(line.contains(" # "), "no comment on `{line}`");
        }
    }
}

/// The shim's reader (`furnace_runtime::ProviderConfig::load_from`, which
/// `shim/src/task.rs` calls with containerd's `ConfigPath`) and the
/// sidecar's (the same loader, of which it keeps `socket_root` and the
/// `[sidecar]` table) both read every value of the example as written, and
/// none of them is a default.
#[test]
fn the_shim_and_the_sidecar_read_every_value_of_the_documented_example() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &documented_example());
    let default = ProviderConfig::default();

    let shim: furnace_runtime::ProviderConfig =
        furnace_runtime::ProviderConfig::load_from(Some(&path)).expect("the shim reads it");
    assert_eq!(shim.socket_root, Path::new("/srv/furnace"));
    assert!(shim.allow_exec && shim.tmp_exec);
    assert_eq!(shim.tmp_size.to_string(), "32Mi");
    let d = shim.limits.default;
    assert_eq!(
        (d.cpu, d.memory.to_string(), d.pids),
        (1.5, "256Mi".into(), 40)
    );
    let m = shim.limits.max;
    assert_eq!(m.cpu, Some(4.0));
    assert_eq!(m.memory.map(|b| b.to_string()), Some("1Gi".into()));
    assert_eq!(m.pids, Some(100));
    assert_eq!(d.storage.to_string(), "8Mi");
    assert_eq!(m.storage.map(|b| b.to_string()), Some("12Mi".into()));
    let f = &shim.facilities;
    assert_eq!(
        (
            f.max_message_bytes.to_string(),
            f.messages_per_second,
            f.max_bytes_in_flight.to_string()
        ),
        ("8Mi".into(), 500, "32Mi".into())
    );
    assert_eq!(f.storage_root, Path::new("/srv/furnace-storage"));
    assert_eq!(f.key_root, Path::new("/srv/furnace-keys"));
    assert_eq!(
        (f.relay.cpu, f.relay.memory.to_string(), f.relay.pids),
        (0.5, "128Mi".into(), 8)
    );
    assert_eq!(f.refused_backend_networks.len(), 3);
    assert_ne!(shim.facilities, default.facilities);
    assert_eq!(shim.permissions.grantable.len(), 5, "all five permissions");
    assert_eq!(shim.seccomp.mode, SeccompMode::Kill);
    let u = shim.user_namespace;
    assert_eq!(
        (u.host_uid, u.host_gid, u.size, u.ranges),
        (200_000, 200_000, 32_768, 64)
    );
    let defense = &shim.defense;
    assert_eq!(
        (
            defense.audit_log.as_path(),
            defense.poll_ms,
            defense.rules.len()
        ),
        (Path::new("/srv/furnace-audit/audit.jsonl"), 500, 2)
    );
    assert_eq!(
        defense.rules[0].response(),
        Some(furnace_config::Response::Throttle {
            calls_per_second: 2
        })
    );
    assert_eq!(
        defense.rules[1].response(),
        Some(furnace_config::Response::Revoke {
            permission: Permission::Pause
        })
    );
    assert_ne!(shim.defense, default.defense);
    assert_ne!(shim.socket_root, default.socket_root);
    assert_ne!(shim.tmp_size, default.tmp_size);
    assert_ne!(shim.limits, default.limits);
    assert_ne!(shim.permissions, default.permissions);
    assert_ne!(shim.seccomp, default.seccomp);
    assert_ne!(shim.user_namespace.size, default.user_namespace.size);
    assert_ne!(
        shim.user_namespace.host_gid,
        default.user_namespace.host_gid
    );

    let sidecar: furnace_vmi::server::SidecarConfig = ProviderConfig::load_from(Some(&path))
        .expect("the sidecar reads it")
        .sidecar;
    assert_eq!(sidecar, shim.sidecar, "one file, one reading");
    assert_eq!(sidecar.max_read_bytes, 1 << 20);
    assert_eq!(sidecar.max_batch_calls, 1024);
    assert_eq!(sidecar.max_in_flight, 4);
    assert_eq!(sidecar.max_connections, 8);
    assert_eq!(sidecar.max_pause_ms, 5000);
    assert_eq!(sidecar.default_event_queue, 512);
    assert_eq!(sidecar.max_event_queue, 8192);
    assert_eq!(sidecar.max_events_per_second, 5000);
    assert_eq!(sidecar.max_subscriptions, 16);
    assert_eq!(sidecar.max_event_bytes_per_app, ByteSize::mib(8));
    assert_eq!(sidecar.max_event_bytes, ByteSize::mib(32));
    assert_eq!((sidecar.worker_uid, sidecar.worker_gid), (99_100, 99_100));
    // No field left at its default: compare field by field through TOML.
    let read: toml::Table = toml::to_string(&sidecar).unwrap().parse().unwrap();
    let defaults: toml::Table = toml::to_string(&default.sidecar).unwrap().parse().unwrap();
    for (key, value) in &read {
        assert_ne!(
            Some(value),
            defaults.get(key),
            "sidecar.{key} is its default"
        );
    }
}

fn run(command: &mut Command) -> Output {
    let out = command.output().expect("the binary runs");
    assert!(!out.status.success(), "{command:?} should fail here");
    out
}

/// The real binaries: the sidecar reports the example's `socket_root` (then
/// fails to attach to a guest that is not there), and `furnace sidecar`
/// looks for the admin socket under it.
#[test]
fn the_sidecar_and_the_cli_take_the_socket_root_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &documented_example());

    let out = run(Command::new(bin_dir().join("furnace-vmi-sidecar"))
        .args(["--guest", "cfg", "--guest-dir"])
        .arg(dir.path().join("no-guest"))
        .arg("--config")
        .arg(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("provider config") && stderr.contains("/srv/furnace"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no-guest"),
        "then fails on the guest: {stderr}"
    );

    let out = run(Command::new(furnace_bin())
        .args(["sidecar", "--guest", "cfg", "--config"])
        .arg(&path)
        .arg("health"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/srv/furnace/guests/cfg/admin.sock"),
        "{stderr}"
    );
    // --socket-root still wins over the file.
    let out = run(Command::new(furnace_bin())
        .args(["sidecar", "--guest", "cfg", "--config"])
        .arg(&path)
        .arg("--socket-root")
        .arg(dir.path())
        .arg("health"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = dir.path().join("guests/cfg/admin.sock");
    assert!(stderr.contains(expected.to_str().unwrap()), "{stderr}");
}

/// One misspelt key in the example: the shim's reader, the sidecar and the
/// CLI all refuse the file with the same message, naming the dotted key, its
/// line and the file, and saying what to do.
#[test]
fn a_misspelt_key_is_refused_by_each_reader_naming_it_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = documented_example().replace("max_read_bytes =", "max_reed_bytes =");
    let path = write(dir.path(), &text);
    let expected = format!(
        "{}: unknown key `sidecar.max_reed_bytes` at line 32 (expected one of `max_read_bytes`,",
        path.display()
    );
    assert!(
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/containerd.md")
        )
        .unwrap()
        .contains("`sidecar.max_reed_bytes` at line 32"),
        "docs/containerd.md quotes this message"
    );

    let shim = furnace_runtime::ProviderConfig::load_from(Some(&path))
        .expect_err("the shim refuses it")
        .to_string();
    assert!(shim.starts_with(&expected), "{shim}");
    assert!(shim.contains("remove it or correct its spelling"), "{shim}");

    let out = run(Command::new(bin_dir().join("furnace-vmi-sidecar"))
        .args(["--guest", "cfg", "--guest-dir"])
        .arg(dir.path())
        .arg("--config")
        .arg(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(
        !stderr.contains("guest directory"),
        "refused before the guest: {stderr}"
    );

    let out = run(Command::new(furnace_bin())
        .args(["sidecar", "--guest", "cfg", "--config"])
        .arg(&path)
        .arg("list"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&expected), "{stderr}");

    // A --config that names no file is an error too, not the defaults.
    let missing = dir.path().join("none.toml");
    let out = run(Command::new(furnace_bin())
        .args(["sidecar", "--guest", "cfg", "--config"])
        .arg(&missing)
        .arg("list"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot read provider config {}",
            missing.display()
        )),
        "{stderr}"
    );
}
