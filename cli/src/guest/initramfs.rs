//! The test guest's initramfs: static busybox, the workload in `init.sh`, and
//! a few kernel modules, written as a newc cpio archive.

use super::kernel::{module_file_name, CachedKernel, GUEST_MODULES};
use anyhow::{Context, Result};
use std::io::Cursor;
use std::path::Path;

const BUSYBOX: &str = "/bin/busybox";
const INIT: &str = include_str!("init.sh");
const WORKER: &str = include_str!("worker.sh");
/// Processes the workload starts, by name (each a copy of `worker.sh`).
pub const WORKERS: &[&str] = &["fworker-alpha", "fworker-beta", "fworker-gamma"];
/// The file every worker holds open.
pub const KNOWN_FILE: &str = "/etc/furnace/known-file";
/// The unprivileged account `fworker-gamma` runs as.
pub const TENANT_UID: u32 = 1000;

enum Entry {
    Dir,
    File { mode: u32, data: Vec<u8> },
}

/// Writes the initramfs for `kernel` to `out`.
pub fn build(kernel: &CachedKernel, out: &Path) -> Result<()> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| {
        format!("reading {BUSYBOX}; install Debian's busybox-static (`make deps`)")
    })?;
    let mut entries: Vec<(String, Entry)> = Vec::new();
    for dir in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "etc",
        "etc/furnace",
        "lib",
        "lib/modules",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
    ] {
        entries.push((dir.into(), Entry::Dir));
    }
    let file = |mode, data: &[u8]| Entry::File {
        mode,
        data: data.to_vec(),
    };
    entries.push(("bin/busybox".into(), file(0o755, &busybox)));
    entries.push(("bin/sh".into(), file(0o755, &busybox)));
    entries.push(("init".into(), file(0o755, INIT.as_bytes())));
    for worker in WORKERS {
        entries.push((format!("usr/bin/{worker}"), file(0o755, WORKER.as_bytes())));
    }
    entries.push((
        KNOWN_FILE.trim_start_matches('/').into(),
        file(0o644, b"furnace ground truth\n"),
    ));
    let passwd =
        format!("root:x:0:0:root:/:/bin/sh\ntenant:x:{TENANT_UID}:{TENANT_UID}:tenant:/:/bin/sh\n");
    entries.push(("etc/passwd".into(), file(0o644, passwd.as_bytes())));
    let group = format!("root:x:0:\ntenant:x:{TENANT_UID}:\n");
    entries.push(("etc/group".into(), file(0o644, group.as_bytes())));
    let mut load_order = String::new();
    for module in GUEST_MODULES {
        let name = module_file_name(module);
        let data = std::fs::read(kernel.module(module))
            .with_context(|| format!("reading module {name} from the kernel cache"))?;
        entries.push((format!("lib/modules/{name}"), file(0o644, &data)));
        load_order.push_str(name.trim_end_matches(".ko"));
        load_order.push('\n');
    }
    entries.push((
        "lib/modules/load-order".into(),
        file(0o644, load_order.as_bytes()),
    ));

    let inputs = entries.into_iter().map(|(name, entry)| {
        let (mode, data) = match entry {
            Entry::Dir => (0o040755, Vec::new()),
            Entry::File { mode, data } => (0o100000 | mode, data),
        };
        (
            cpio::NewcBuilder::new(&name).mode(mode).nlink(1),
            Cursor::new(data),
        )
    });
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    cpio::write_cpio(inputs, encoder)?.finish()?;
    Ok(())
}
