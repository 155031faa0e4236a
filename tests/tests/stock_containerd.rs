//! Furnace on the containerd a provider already runs: Debian's containerd
//! started with a config that names only its sockets, so its root and state
//! are containerd's own defaults (`/var/lib/containerd`, `/run/containerd`)
//! with the permissions containerd gives them. Every example image runs
//! there under `io.furnace.v1` against the real guest, and so does a tenant
//! app built the tenant's way: `docker build` on Debian's Docker engine,
//! `docker save | ctr images import -`, `ctr run`.
//!
//! Real parts only: containerd, dockerd, the shim, the sidecar, the QEMU guest.

use furnace::guest::console;
use furnace_api::{Module, Process};
use furnace_tests::containerd::{Layout, FURNACE_RUNTIME, NAMESPACE, STOCK_STATE};
use furnace_tests::docker::TestDocker;
use furnace_tests::stack::{strs, FurnaceStack};
use furnace_tests::{stdout_if_success, GROUND_TRUTH_TIMEOUT};
use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

fn stack() -> &'static FurnaceStack {
    static STACK: OnceLock<FurnaceStack> = OnceLock::new();
    STACK.get_or_init(|| {
        FurnaceStack::start_on("stock", Layout::Stock)
            .expect("the stack starts on stock containerd")
    })
}

fn run(app: &str, id: &str, extra: &[&str], argv: &[&str]) -> Output {
    let s = stack();
    let image = s.import(app).expect("the app's image imports");
    s.run_app(&image, id, extra, argv)
}

fn stdout_of(what: &str, out: &Output) -> String {
    stdout_if_success(what, out).unwrap()
}

/// containerd's state directory and the task's bundle keep the modes
/// containerd gave them (the bundle `0700 root:root`) while an app runs in
/// its partition: the shim reaches the rootfs without opening either.
#[test]
fn containerds_own_directories_are_left_as_containerd_made_them() {
    use std::os::unix::fs::MetadataExt;
    let s = stack();
    let before = std::fs::metadata(STOCK_STATE).unwrap().permissions().mode() & 0o7777;
    let image = s.import("ps").unwrap();
    let out = s.ctr_run_image(&image, FURNACE_RUNTIME, "-d", "stock-perms", &[], &[]);
    stdout_of("ctr run -d furnace/ps", &out);
    let bundle = std::path::Path::new(STOCK_STATE)
        .join("io.containerd.runtime.v2.task")
        .join(NAMESPACE)
        .join("stock-perms");
    let meta = std::fs::metadata(&bundle);
    s.remove("stock-perms");
    let meta = meta.unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o700, 0, 0),
        "the bundle {} as containerd makes it",
        bundle.display()
    );
    let after = std::fs::metadata(STOCK_STATE).unwrap().permissions().mode() & 0o7777;
    assert_eq!(after, before, "{STOCK_STATE} mode changed");
    assert_eq!(
        after & 0o044,
        0,
        "{STOCK_STATE} is {after:o}: readable by others"
    );
    assert!(
        s.traces_of("stock-perms").is_empty(),
        "{:?}",
        s.traces_of("stock-perms")
    );
}

#[test]
fn the_ps_app_matches_the_guests_ps() {
    stack().guest.assert_ps_matches(|_| {
        let out = run("ps", "stock-ps", &[], &["/usr/bin/furnace-ps", "--json"]);
        Ok(serde_json::from_str::<Vec<Process>>(&stdout_of(
            "furnace-ps --json",
            &out,
        ))?)
    });
}

#[test]
fn the_python_modules_app_matches_proc_modules() {
    let truth = console::modules(&stack().guest.dir, GROUND_TRUTH_TIMEOUT).unwrap();
    let out = run(
        "modules",
        "stock-modules",
        &[],
        &["/usr/bin/python3", "/usr/bin/furnace-modules", "--json"],
    );
    let seen: Vec<Module> = serde_json::from_str(&stdout_of("furnace-modules", &out)).unwrap();
    let seen: Vec<(String, u64)> = seen.into_iter().map(|m| (m.name, m.size)).collect();
    let truth: Vec<(String, u64)> = truth.into_iter().map(|m| (m.name, m.size)).collect();
    assert!(!truth.is_empty(), "the workload loads modules");
    assert_eq!(seen, truth, "module list (name, size) in list order");
}

#[test]
fn hidden_procs_finds_nothing_hidden_in_a_clean_guest() {
    let out = run(
        "hidden-procs",
        "stock-hidden",
        &[],
        &["/usr/bin/furnace-hidden-procs", "--json"],
    );
    let report: serde_json::Value =
        serde_json::from_str(&stdout_of("furnace-hidden-procs", &out)).unwrap();
    assert_eq!(report["findings"], serde_json::json!([]), "{report}");
}

/// With the guest stopped, the dump equals the bytes of the guest's RAM file
/// (identity-mapped below the PCI hole) over the same range.
#[test]
fn memdump_dumps_the_range_it_was_asked_for() {
    use std::io::{Read, Seek, SeekFrom};
    const START: u64 = 0x100_0000;
    const LENGTH: usize = 1 << 20;
    let (out, read) = stack().guest.while_paused(|| {
        let out = run(
            "memdump",
            "stock-memdump",
            &[],
            &[
                "/usr/bin/furnace-memdump",
                "--start",
                &format!("{START:#x}"),
                "--length",
                &LENGTH.to_string(),
            ],
        );
        let mut ram = vec![0; LENGTH];
        let read = std::fs::File::open(stack().guest.dir.join("ram")).and_then(|mut f| {
            f.seek(SeekFrom::Start(START))?;
            f.read_exact(&mut ram)
        });
        (out, read.map(|()| ram))
    });
    let ram = read.unwrap();
    stdout_of("furnace-memdump", &out);
    let mut dump = Vec::new();
    flate2::read::GzDecoder::new(out.stdout.as_slice())
        .read_to_end(&mut dump)
        .unwrap();
    assert_eq!(dump.len(), LENGTH);
    assert!(dump == ram, "the dump differs from the guest's RAM file");
}

#[test]
fn syscall_trace_reports_the_guests_openat() {
    let s = stack();
    let image = s.import("syscall-trace").unwrap();
    let mut app = s
        .spawn_app(
            &image,
            "stock-trace",
            &strs(&s.granting("read,syscalls")),
            &["/usr/bin/furnace-syscall-trace", "--syscalls", "openat"],
        )
        .unwrap();
    app.wait_stderr("subscribed", Duration::from_secs(60))
        .unwrap();
    let marker = format!("/tmp/furnace-stock-{}", std::process::id());
    let cat = console::open_file(&s.guest.dir, &marker, Duration::from_secs(120)).unwrap();
    let line = app
        .wait_line(Duration::from_secs(120), |l| {
            l.contains(&marker) && l.contains(&format!("\"PID\":{cat}"))
        })
        .unwrap();
    s.remove("stock-trace");
    assert!(line.contains("\"Method\":\"openat\""), "{line}");
}

/// The tenant's flow of docs/writing-an-app.md, verbatim in spirit: a
/// Python app `FROM furnace/python:dev`, built by `docker build` on Debian's
/// engine (running on this same stock containerd), saved into containerd
/// with `docker save | ctr images import -`, run with `ctr run --runtime
/// io.furnace.v1`. Its process list must equal the guest's own ps.
#[test]
fn a_docker_built_tenant_app_matches_the_guests_ps() {
    let s = stack();
    let docker = TestDocker::start("stock", &s.containerd.address).expect("dockerd starts");
    let images = std::process::Command::new("bash")
        .args(["scripts/images.sh", "--docker", "base", "python"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("DOCKER_HOST", &docker.host)
        .output()
        .unwrap();
    assert!(
        images.status.success(),
        "images.sh --docker: {}{}",
        String::from_utf8_lossy(&images.stdout),
        String::from_utf8_lossy(&images.stderr)
    );
    let app = r#"import json
from furnace_vmi import Vmi, to_dict

with Vmi.connect_default() as vmi:
    print(json.dumps([to_dict(p) for p in vmi.processes()]))
"#;
    let dockerfile = "FROM furnace/python:dev\nCOPY app.py /app.py\nENTRYPOINT [\"/usr/bin/python3\", \"/app.py\"]\n";
    docker
        .build(
            "tenant-ps:test",
            &[("Dockerfile", dockerfile), ("app.py", app)],
        )
        .expect("docker build of the tenant's app");
    let imported = docker
        .save_into("tenant-ps:test", &mut s.containerd.ctr_command(&[]))
        .expect("docker save | ctr images import -");
    // ctr names a `docker save` image as docker does: normalised.
    let image = "docker.io/library/tenant-ps:test";
    assert!(imported.contains(image), "ctr imported: {imported}");
    s.guest.assert_ps_matches(|_| {
        let out = s.run_app(image, "tenant-ps", &[], &[]);
        Ok(serde_json::from_str::<Vec<Process>>(&stdout_of(
            "the tenant's app",
            &out,
        ))?)
    });
    drop(docker);
}
