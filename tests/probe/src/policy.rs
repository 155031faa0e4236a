//! `furnace-probe policy`: what the partition looks like from inside.

use crate::{cgroup, io, outcome, Startup};
use nix::errno::Errno;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

const STATUS_FIELDS: &[&str] = &[
    "Seccomp",
    "NoNewPrivs",
    "CapEff",
    "CapPrm",
    "CapBnd",
    "Uid",
    "Gid",
];

/// Paths container runtimes usually mask (runc's defaults).
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
];

pub const VMI_SOCKET: &str = "/run/furnace/vmi.sock";

pub fn collect(startup: &Startup) -> Value {
    let mut errors = Map::new();
    let mut out = Map::new();
    out.insert("fds_at_start".into(), json!(startup.fds));
    if let Some(e) = &startup.listing_error {
        errors.insert("fds_at_start".into(), json!(e));
    }

    out.insert("status".into(), status(&mut errors));
    for (key, path) in [
        ("uid_map", "/proc/self/uid_map"),
        ("gid_map", "/proc/self/gid_map"),
    ] {
        let map = match io(std::fs::read_to_string(path)) {
            Ok(text) => parse_id_map(&text),
            Err(e) => {
                errors.insert(key.into(), json!(format!("{e:?}")));
                Vec::new()
            }
        };
        out.insert(key.into(), json!(map));
    }

    out.insert(
        "rootfs_write".into(),
        json!(write_test("/furnace-probe-write-test")),
    );
    out.insert(
        "tmp_write".into(),
        json!(write_test("/tmp/furnace-probe-write-test")),
    );

    let (interfaces, source) = interfaces(&mut errors);
    out.insert("interfaces".into(), json!(interfaces));
    out.insert("interfaces_source".into(), json!(source));
    out.insert("af_inet_socket".into(), json!(inet_socket()));

    cgroups(&mut out, &mut errors);

    let hostname = nix::sys::utsname::uname()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("{e:?}"));
    out.insert("hostname".into(), json!(hostname));
    out.insert("pid".into(), json!(nix::unistd::getpid().as_raw()));
    let cwd = nix::unistd::getcwd()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("{e:?}"));
    out.insert("cwd".into(), json!(cwd));

    out.insert("vmi_socket".into(), json!(socket_kind(VMI_SOCKET)));
    let masked: Map<String, Value> = MASKED
        .iter()
        .map(|p| (p.to_string(), json!(mask_kind(p))))
        .collect();
    out.insert("masked_paths".into(), Value::Object(masked));
    out.insert("mounts".into(), mounts(&mut errors));

    out.insert("errors".into(), Value::Object(errors));
    Value::Object(out)
}

fn status(errors: &mut Map<String, Value>) -> Value {
    let text = match io(std::fs::read_to_string("/proc/self/status")) {
        Ok(text) => text,
        Err(e) => {
            errors.insert("status".into(), json!(format!("{e:?}")));
            return json!({});
        }
    };
    let mut fields = Map::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(':') {
            if STATUS_FIELDS.contains(&key) {
                let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
                fields.insert(key.into(), json!(value));
            }
        }
    }
    Value::Object(fields)
}

fn parse_id_map(text: &str) -> Vec<[u64; 3]> {
    text.lines()
        .filter_map(|line| {
            let mut numbers = line.split_whitespace().map(|n| n.parse::<u64>().ok());
            Some([numbers.next()??, numbers.next()??, numbers.next()??])
        })
        .collect()
}

fn write_test(path: &str) -> String {
    use std::io::Write;
    let result = io(std::fs::File::create(path).and_then(|mut f| f.write_all(b"furnace-probe\n")));
    if result.is_ok() {
        let _ = std::fs::remove_file(path);
    }
    outcome(&result)
}

fn interfaces(errors: &mut Map<String, Value>) -> (Vec<String>, &'static str) {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => {
            let names: BTreeSet<String> = addrs.map(|a| a.interface_name).collect();
            return (names.into_iter().collect(), "getifaddrs");
        }
        Err(e) => {
            errors.insert("getifaddrs".into(), json!(format!("{e:?}")));
        }
    }
    match io(std::fs::read_to_string("/proc/net/dev")) {
        Ok(text) => {
            let names: BTreeSet<String> = text
                .lines()
                .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
                .filter(|name| !name.is_empty())
                .collect();
            (names.into_iter().collect(), "/proc/net/dev")
        }
        Err(e) => {
            errors.insert("interfaces".into(), json!(format!("/proc/net/dev: {e:?}")));
            (Vec::new(), "/proc/net/dev")
        }
    }
}

pub fn inet_socket() -> String {
    // SAFETY: plain syscall; the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let result = Errno::result(fd);
    if let Ok(fd) = result {
        // SAFETY: we own the fd just created.
        unsafe { libc::close(fd) };
    }
    outcome(&result)
}

fn cgroups(out: &mut Map<String, Value>, errors: &mut Map<String, Value>) {
    let memberships = cgroup::memberships().unwrap_or_else(|e| {
        errors.insert(
            "cgroup_paths".into(),
            json!(format!("/proc/self/cgroup: {e:?}")),
        );
        Vec::new()
    });
    let mut paths = Map::new();
    for m in &memberships {
        if m.controllers.is_empty() {
            paths.insert(String::new(), json!(m.path));
        }
        for c in &m.controllers {
            paths.insert(c.clone(), json!(m.path));
        }
    }
    let mut limits = Map::new();
    let mut sources = Map::new();
    for (file, controller) in cgroup::FILES {
        match cgroup::read_limit(file, controller, &memberships) {
            Ok((value, path)) => {
                limits.insert(file.to_string(), json!(value));
                sources.insert(file.to_string(), json!(path.display().to_string()));
            }
            Err(outcome) => {
                limits.insert(file.to_string(), json!(outcome));
            }
        }
    }
    out.insert("cgroup".into(), Value::Object(limits));
    out.insert("cgroup_sources".into(), Value::Object(sources));
    out.insert("cgroup_paths".into(), Value::Object(paths));
}

fn socket_kind(path: &str) -> String {
    match io(std::fs::metadata(path)) {
        Ok(m) if m.file_type().is_socket() => "socket".into(),
        Ok(_) => "not a socket".into(),
        Err(e) => format!("{e:?}"),
    }
}

fn mask_kind(path: &str) -> String {
    let meta = match io(std::fs::metadata(path)) {
        Ok(m) => m,
        Err(e) => return format!("{e:?}"),
    };
    let null = nix::sys::stat::makedev(1, 3);
    if meta.file_type().is_char_device() && meta.rdev() == null {
        return "null".into();
    }
    if meta.is_dir() {
        return match io(std::fs::read_dir(path)) {
            Ok(mut entries) => match entries.next() {
                None => "empty".into(),
                Some(_) => "visible".into(),
            },
            Err(e) => format!("{e:?}"),
        };
    }
    "visible".into()
}

fn mounts(errors: &mut Map<String, Value>) -> Value {
    let text = match io(std::fs::read_to_string("/proc/self/mountinfo")) {
        Ok(text) => text,
        Err(e) => {
            errors.insert("mounts".into(), json!(format!("{e:?}")));
            return json!([]);
        }
    };
    // id parent major:minor root mount_point options [optional...] - fstype source super_options
    let mounts: Vec<Value> = text
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(json!({
                "mount_point": unescape(left.get(4)?),
                "options": left.get(5)?,
                "fstype": right.first()?,
                "super_options": right.get(2).copied().unwrap_or(""),
            }))
        })
        .collect();
    json!(mounts)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
