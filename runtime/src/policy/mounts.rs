//! The partition's mounts: the standard pseudo-filesystems rebuilt, the
//! sockets bound in, and nothing else from the host.

use super::*;

pub(super) fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some(typ.into()));
    m.set_source(Some(PathBuf::from(source)));
    m.set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

/// The tiny tmpfs at [`SOCKET_DIR`] that holds the sockets and the init.
pub(super) fn socket_dir() -> Mount {
    mount(
        SOCKET_DIR,
        "tmpfs",
        "tmpfs",
        &["nosuid", "nodev", "noexec", "mode=755", "size=64k"],
    )
}

fn clean(dest: &Path) -> String {
    let s = dest.to_string_lossy();
    let t = s.trim_end_matches('/');
    if t.is_empty() {
        "/".into()
    } else {
        t.to_string()
    }
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Adds `extra` options not already present, and removes their opposites.
fn force_options(m: &mut Mount, extra: &[&str]) {
    let mut opts = m.options().clone().unwrap_or_default();
    for e in extra {
        let opposite = match *e {
            "ro" => Some("rw"),
            "nosuid" => Some("suid"),
            "nodev" => Some("dev"),
            "noexec" => Some("exec"),
            _ => None,
        };
        opts.retain(|o| Some(o.as_str()) != opposite);
        if !opts.iter().any(|o| o == e) {
            opts.push(e.to_string());
        }
    }
    m.set_options(Some(opts));
}

/// CRI's per-container files, bound read-only.
pub const CRI_FILES: &[&str] = &["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];
/// Bound by kubelet, dropped: a token is a credential the app must not hold,
/// and the termination log is an unbounded host file the app could fill.
const DROPPED: &[&str] = &[
    "/var/run/secrets/kubernetes.io/serviceaccount",
    "/run/secrets/kubernetes.io/serviceaccount",
    "/dev/termination-log",
];

fn check_socket(
    which: &'static str,
    path: &Path,
    config: &ProviderConfig,
) -> Result<(), PolicyError> {
    let root = &config.socket_root;
    let ok = path.is_absolute()
        && path.starts_with(root)
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !ok {
        return Err(PolicyError::Bind {
            which,
            problem: format!(
                "`{}` is not an absolute path under socket_root {}",
                path.display(),
                root.display()
            ),
            fix: "pass the path the sidecar returned from Register (or fix socket_root in the provider config)".into(),
        });
    }
    Ok(())
}

/// Which binds `role` takes: an app its VMI socket (required), and with a
/// backend its facilities socket and key files; the relay its own files
/// (required) and nothing of the app's; a sandbox none.
fn check_binds(role: Role, binds: &HostBinds, config: &ProviderConfig) -> Result<(), PolicyError> {
    let refuse = |which: &'static str, problem: String, fix: &str| {
        Err(PolicyError::Bind {
            which,
            problem,
            fix: fix.into(),
        })
    };
    match role {
        Role::App if binds.vmi.is_none() => return refuse(
            "vmi",
            "an app needs its VMI socket but none was given".into(),
            "register the app with the guest's sidecar first and pass the socket path it returns",
        ),
        Role::App if binds.relay.is_some() => {
            return refuse(
                "relay",
                "an app must not get the relay's files".into(),
                "pass the relay's files to the fac partition only",
            )
        }
        Role::App if binds.keys.is_some() != binds.fac.is_some() => {
            return refuse(
                "fac",
                "an app's facilities socket and its key files go together".into(),
                "pass both, or neither",
            )
        }
        Role::Fac | Role::Sandbox if binds.vmi.is_some() => {
            return refuse(
                "vmi",
                format!("the {} role must not reach the VMI sidecar", role.name()),
                "pass no VMI socket for this role",
            )
        }
        Role::Fac | Role::Sandbox if binds.fac.is_some() || binds.keys.is_some() => {
            return refuse(
                "fac",
                format!(
                    "the {} role gets neither the app's facilities socket nor its keys",
                    role.name()
                ),
                "pass those to the app partition only",
            )
        }
        Role::Fac if binds.relay.is_none() => {
            return refuse(
                "relay",
                "the fac role runs the relay, but no relay files were given".into(),
                "pass the relay program, the broker socket and the storage directory",
            )
        }
        Role::Sandbox if binds.relay.is_some() => {
            return refuse(
                "relay",
                "the sandbox role gets no relay files".into(),
                "pass none for a sandbox",
            )
        }
        _ => {}
    }
    for (which, path) in [("vmi", &binds.vmi), ("fac", &binds.fac)] {
        if let Some(p) = path {
            check_socket(which, p, config)?;
        }
    }
    if let Some(relay) = &binds.relay {
        check_socket("broker", &relay.broker, config)?;
        check_plain("relay", &relay.program)?;
        check_plain("relay", &relay.storage)?;
    }
    if let Some(keys) = &binds.keys {
        check_plain("keys", &keys.app_key)?;
        check_plain("keys", &keys.backend_key)?;
    }
    Ok(())
}

fn check_plain(which: &'static str, path: &Path) -> Result<(), PolicyError> {
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if plain {
        return Ok(());
    }
    Err(PolicyError::Bind {
        which,
        problem: format!("`{}` is not a plain absolute path", path.display()),
        fix: "pass an absolute host path with no `.` or `..`".into(),
    })
}

/// The binds into [`SOCKET_DIR`], each with the fewest rights it needs.
fn bind_mounts(binds: &HostBinds) -> Vec<Mount> {
    const READ_WRITE: &[&str] = &["bind", "nosuid", "nodev", "noexec"];
    const READ_ONLY: &[&str] = &["bind", "ro", "nosuid", "nodev", "noexec"];
    let mut list: Vec<(&Path, &str, &[&str])> = Vec::new();
    if let Some(p) = &binds.vmi {
        list.push((p, VMI_SOCKET, READ_WRITE));
    }
    if let Some(p) = &binds.fac {
        list.push((p, FAC_SOCKET, READ_WRITE));
    }
    if let Some(k) = &binds.keys {
        list.push((&k.app_key, APP_KEY, READ_ONLY));
        list.push((&k.backend_key, BACKEND_KEY, READ_ONLY));
    }
    if let Some(r) = &binds.relay {
        list.push((
            &r.program,
            RELAY_PROGRAM,
            &["bind", "ro", "nosuid", "nodev"],
        ));
        list.push((&r.broker, BROKER_SOCKET, READ_WRITE));
        list.push((&r.storage, STORAGE_DIR, READ_WRITE));
    }
    list.into_iter()
        .map(|(source, dest, options)| {
            let mut m = mount(dest, "bind", "", options);
            m.set_source(Some(source.to_path_buf()));
            m
        })
        .collect()
}

/// The mount table of a partition:
/// - the standard pseudo-filesystems, rebuilt from scratch: `/proc`,
///   `/dev`, `/dev/pts`, a private `/dev/shm`, `/dev/mqueue`, `/sys`
///   (read-only), and `/sys/fs/cgroup` (read-only);
/// - CRI's `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, read-only;
/// - other tmpfs mounts, with nosuid,nodev and a size;
/// - a tmpfs `/tmp`;
/// - `/run/furnace` (a tiny tmpfs) with the sockets bound into it.
///
/// Any other mount (a bind of a host path, a block device, a network
/// filesystem) is an error naming it; kubelet's service-account token and
/// termination log are dropped with a note.
pub fn mounts(
    spec: &mut Spec,
    role: Role,
    config: &ProviderConfig,
    binds: &HostBinds,
    notes: &mut Vec<String>,
) -> Result<(), PolicyError> {
    check_binds(role, binds, config)?;
    let given = spec.mounts().clone().unwrap_or_default();
    let had_cgroup = given
        .iter()
        .find(|m| clean(m.destination()) == "/sys/fs/cgroup")
        .cloned();
    let mut out = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "noexec", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ];
    // Always there, so an app can read its own limits back (inside its
    // cgroup namespace it sees only its own cgroup).
    let mut cg = had_cgroup.unwrap_or_else(|| mount("/sys/fs/cgroup", "cgroup", "cgroup", &[]));
    if is_bind(&cg) {
        return Err(PolicyError::spec(
            "mounts[/sys/fs/cgroup]",
            "is a bind mount of the host's cgroup tree",
            "use a cgroup mount (type cgroup or cgroup2), as containerd does by default",
        ));
    }
    force_options(&mut cg, &["nosuid", "noexec", "nodev", "ro"]);
    out.push(cg);
    let ours: &[&str] = &[
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
        "/tmp",
    ];
    let tmp_size = format!("size={}", config.tmp_size.bytes());
    for (i, m) in given.into_iter().enumerate() {
        let dest = clean(m.destination());
        let source = m
            .source()
            .as_ref()
            .map(|s| s.display().to_string())
            .unwrap_or_default();
        if ours.contains(&dest.as_str()) {
            continue;
        }
        if DROPPED.contains(&dest.as_str()) {
            notes.push(format!("dropped the mount at {dest}"));
            continue;
        }
        if dest == SOCKET_DIR || dest.starts_with("/run/furnace/") || dest == "/" {
            return Err(PolicyError::spec(
                format!("mounts[{i}]"),
                format!("mounts over {dest}, which Furnace manages"),
                "remove that mount; the runtime mounts the Furnace sockets itself",
            ));
        }
        let mut m = m;
        if CRI_FILES.contains(&dest.as_str()) && is_bind(&m) {
            force_options(&mut m, &["ro", "nosuid", "nodev", "noexec"]);
            out.push(m);
            continue;
        }
        if m.typ().as_deref() == Some("tmpfs") && !is_bind(&m) {
            force_options(&mut m, &["nosuid", "nodev"]);
            if !m.options().iter().flatten().any(|o| o.starts_with("size=")) {
                force_options(&mut m, &[tmp_size.as_str()]);
            }
            out.push(m);
            continue;
        }
        return Err(PolicyError::spec(
            format!("mounts[{i}]"),
            format!(
                "{} mount of `{source}` at {dest} is not allowed in a Furnace partition (only the standard pseudo-filesystems, tmpfs and CRI's /etc/hosts, /etc/hostname, /etc/resolv.conf are)",
                if is_bind(&m) { "bind" } else { m.typ().as_deref().unwrap_or("untyped") }
            ),
            "remove the mount (ctr --mount, a pod volume); apps keep state through the facilities relay",
        ));
    }

    let mut tmp_opts = vec!["nosuid", "nodev", "mode=1777", tmp_size.as_str()];
    if !config.tmp_exec {
        tmp_opts.insert(2, "noexec");
    }
    out.push(mount("/tmp", "tmpfs", "tmpfs", &tmp_opts));

    let binds = bind_mounts(binds);
    if !binds.is_empty() {
        out.push(socket_dir());
        out.extend(binds);
    }
    spec.set_mounts(Some(out));
    Ok(())
}
