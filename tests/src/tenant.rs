//! A tenant's side of facilities, on this one machine: a network namespace
//! joined to the host by a veth pair (a remote tenant network), the real
//! `furnace backend` listening in it, and a `tcpdump` capture on the host's
//! end of the veth. Everything is removed on drop, or at exit for fixtures
//! kept in statics (an `atexit` hook), with the apps' storage directories
//! the tests made; only processes started here are signalled, by pid, and
//! only while their command line still names this fixture's key directory.

use crate::furnace_bin;
use crate::running::RunningApp;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// What the `atexit` hook removes: backends still running, namespaces and
/// directories still there.
static LEFT: Mutex<Vec<Left>> = Mutex::new(Vec::new());
static ATEXIT: Once = Once::new();

enum Left {
    /// A backend's pid and its `--key` path, which is in this fixture's own
    /// key directory: a pid reused by anything else does not name it.
    Backend {
        pid: u32,
        key: String,
    },
    Net {
        namespace: String,
        link: String,
    },
    Dir(PathBuf),
    /// App `id`'s storage, for every tenant.
    Storage(String),
}

fn leave(item: Left) {
    ATEXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" function has no preconditions.
        unsafe { libc::atexit(remove_what_is_left) };
    });
    LEFT.lock().unwrap_or_else(|p| p.into_inner()).push(item);
}

extern "C" fn remove_what_is_left() {
    let left = std::mem::take(&mut *LEFT.lock().unwrap_or_else(|p| p.into_inner()));
    for item in left.into_iter().rev() {
        match item {
            Left::Backend { pid, key } => kill_backend(pid, &key),
            Left::Net { namespace, link } => remove_net(&namespace, &link),
            Left::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Left::Storage(id) => remove_storage(&id),
        }
    }
}

/// Removes `dir` and everything in it when the process exits.
pub fn remove_at_exit(dir: PathBuf) {
    let left = LEFT.lock().unwrap_or_else(|p| p.into_inner());
    if left.iter().any(|l| matches!(l, Left::Dir(d) if *d == dir)) {
        return;
    }
    drop(left);
    leave(Left::Dir(dir));
}

/// The storage directories of app `id`, one per tenant that ran it
/// (docs/facilities.md, "Storage": the default `storage_root`, the tests'
/// containerd namespace, then the tenant's backend key).
pub fn storage_dirs(id: &str) -> Vec<PathBuf> {
    let namespace = Path::new("/var/lib/furnace/storage").join(crate::containerd::NAMESPACE);
    std::fs::read_dir(namespace)
        .into_iter()
        .flatten()
        .flatten()
        .map(|tenant| tenant.path().join(id))
        .filter(|dir| dir.exists())
        .collect()
}

/// Removes app `id`'s storage, for every tenant.
pub fn remove_storage(id: &str) {
    for dir in storage_dirs(id) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes app `id`'s storage at exit: a test that runs an app with a
/// backend calls this (the [`crate::tenants::Tenants`] runners do it themselves).
pub fn remove_storage_at_exit(id: &str) {
    let left = LEFT.lock().unwrap_or_else(|p| p.into_inner());
    if left
        .iter()
        .any(|l| matches!(l, Left::Storage(known) if known == id))
    {
        return;
    }
    drop(left);
    leave(Left::Storage(id.to_string()));
}

/// SIGKILL to `pid` if it still is a `furnace backend` of this fixture: its
/// command line names `key`, a path in this fixture's own key directory (a
/// pid may be reused, by another test binary's backend too).
fn kill_backend(pid: u32, key: &str) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if contains(&cmdline, b"backend") && contains(&cmdline, key.as_bytes()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn remove_net(namespace: &str, link: &str) {
    // Deleting the namespace deletes its end of the veth, and with it the pair.
    let _ = Command::new("ip")
        .args(["netns", "del", namespace])
        .output();
    let _ = Command::new("ip").args(["link", "del", link]).output();
}

/// A network namespace with one veth to the host, addressed `10.213.N.2/30`
/// inside and `10.213.N.1/30` on the host.
pub struct TenantNet {
    pub namespace: String,
    /// The host's end of the veth.
    pub host_link: String,
    pub host_ip: String,
    pub tenant_ip: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Numbers this process's tenant networks: the pid keeps the names of
/// concurrent test binaries apart, this the networks of one binary.
static NETS: AtomicU32 = AtomicU32::new(0);

impl TenantNet {
    /// `label` keeps the names of concurrent test binaries apart.
    pub fn create(label: &str) -> Result<TenantNet> {
        let pid = std::process::id() % 100_000;
        let n = NETS.fetch_add(1, Ordering::Relaxed) % 1000;
        // At most 9 characters: link names ("fh" + tag) stay within 15.
        let tag = format!("{pid}x{n}");
        let used =
            String::from_utf8_lossy(&Command::new("ip").args(["-o", "addr"]).output()?.stdout)
                .into_owned();
        let subnet = (0..250u32)
            .map(|i| (label.bytes().map(u32::from).sum::<u32>() + pid + n + i) % 250 + 1)
            .find(|n| !used.contains(&format!("10.213.{n}.")))
            .context("no free 10.213.N.0/30 subnet")?;
        let net = TenantNet {
            namespace: format!("furnace-{label}-{tag}"),
            host_link: format!("fh{tag}"),
            host_ip: format!("10.213.{subnet}.1"),
            tenant_ip: format!("10.213.{subnet}.2"),
        };
        let peer = format!("ft{tag}");
        debug_assert!(net.host_link.len() <= 15 && peer.len() <= 15);
        remove_net(&net.namespace, &net.host_link);
        leave(Left::Net {
            namespace: net.namespace.clone(),
            link: net.host_link.clone(),
        });
        ip(&["netns", "add", &net.namespace])?;
        ip(&[
            "link",
            "add",
            &net.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &net.namespace])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", net.host_ip),
            "dev",
            &net.host_link,
        ])?;
        ip(&["link", "set", &net.host_link, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", net.namespace.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&[
            "addr",
            "add",
            &format!("{}/30", net.tenant_ip),
            "dev",
            &peer,
        ])?;
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(net)
    }

    /// `ip netns exec <namespace> PROGRAM`.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace]).arg(program);
        c
    }
}

impl Drop for TenantNet {
    fn drop(&mut self) {
        remove_net(&self.namespace, &self.host_link);
    }
}

/// `furnace keygen` of `names` into `dir`: root's alone, as the shim
/// requires of an app key (it gives the app a copy).
pub fn keygen(dir: &Path, names: &[&str]) -> Result<()> {
    for name in names {
        let out = Command::new(furnace_bin())
            .args(["keygen"])
            .arg(dir.join(name))
            .output()?;
        crate::stdout_if_success("furnace keygen", &out)?;
    }
    Ok(())
}

/// The public key line of `NAME.pub` in `dir`.
pub fn public_key(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.pub")))
        .expect("the .pub file exists")
        .trim()
        .to_string()
}

/// The real `furnace backend`, in a tenant network, its JSON lines read as
/// they come.
pub struct TestBackend {
    pub address: String,
    pub app: RunningApp,
    argv: Vec<String>,
    namespace: String,
}

impl TestBackend {
    /// `furnace backend --listen ADDRESS --key DIR/KEY.key --allow DIR/A.pub …
    /// --on-request 'printf reply-to-; cat'`, logging at info.
    pub fn start(
        net: &TenantNet,
        port: u16,
        dir: &Path,
        key: &str,
        allow: &[&str],
    ) -> Result<Self> {
        let address = format!("{}:{port}", net.tenant_ip);
        let mut argv: Vec<String> = vec![
            "backend".into(),
            "--listen".into(),
            address.clone(),
            "--key".into(),
            dir.join(format!("{key}.key")).display().to_string(),
            "--on-request".into(),
            "printf reply-to-; cat".into(),
        ];
        for a in allow {
            argv.push("--allow".into());
            argv.push(dir.join(format!("{a}.pub")).display().to_string());
        }
        let app = Self::spawn(&net.namespace, &argv)?;
        let backend = TestBackend {
            address,
            app,
            argv,
            namespace: net.namespace.clone(),
        };
        backend.wait_listening()?;
        Ok(backend)
    }

    fn spawn(namespace: &str, argv: &[String]) -> Result<RunningApp> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", namespace])
            .arg(furnace_bin())
            .args(argv)
            .env("FURNACE_LOG", "info");
        // `ip netns exec` execs the program: this pid is the backend's.
        let app = RunningApp::spawn_interactive(c)?;
        let key = argv
            .iter()
            .skip_while(|a| *a != "--key")
            .nth(1)
            .context("a backend's argv has --key")?;
        leave(Left::Backend {
            pid: app.pid(),
            key: key.clone(),
        });
        Ok(app)
    }

    /// Bounded: the listener is up once a connect from inside the namespace succeeds.
    fn wait_listening(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let probe = Command::new("ip")
                .args(["netns", "exec", &self.namespace, "bash", "-c"])
                .arg(format!(
                    "exec 3<>/dev/tcp/{}/{}",
                    self.address.split(':').next().unwrap_or(""),
                    self.address.rsplit(':').next().unwrap_or("")
                ))
                .stderr(Stdio::null())
                .status()?;
            if probe.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "furnace backend did not listen on {} within 10 s",
            self.address
        )
    }

    /// The first message line `matches` accepts, parsed.
    pub fn wait_message(
        &mut self,
        timeout: Duration,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let line = self.app.wait_line(timeout, |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| matches(&v))
        })?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Waits until at least `n` of its stderr lines contain `text`, and
    /// returns how many do.
    pub fn wait_stderr_count(&mut self, text: &str, n: usize, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let count = self.app.errors.iter().filter(|l| l.contains(text)).count();
            if count >= n {
                return Ok(count);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{count} of the backend's stderr lines say {text:?} within {timeout:?}, not {n}: {:?}",
                    self.app.errors
                );
            }
            // Moves what stderr holds into `errors`: it waits for a line no
            // backend prints, so it always runs out its (short) timeout.
            let _ = self
                .app
                .wait_stderr("\u{0}no such line\u{0}", Duration::from_millis(200));
        }
    }

    /// Every message line so far, parsed.
    pub fn messages(&mut self) -> Vec<serde_json::Value> {
        self.app
            .drain()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Stops the backend process (SIGKILL to `ip netns exec`, which execs it).
    pub fn stop(&mut self) {
        let placeholder = RunningApp::spawn(Command::new("true")).expect("true runs");
        drop(std::mem::replace(&mut self.app, placeholder));
    }

    /// Starts it again with the same arguments.
    pub fn restart(&mut self) -> Result<()> {
        self.app = Self::spawn(&self.namespace, &self.argv)?;
        self.wait_listening()
    }
}

/// `tcpdump -i LINK -w FILE -U` of every packet on the host's end of a veth.
pub struct Capture {
    child: Child,
    pub file: PathBuf,
}

impl Capture {
    pub fn start(net: &TenantNet, file: &Path) -> Result<Capture> {
        // Immediate mode: each packet is handed over as it comes, not when
        // a ring-buffer block fills or times out.
        let mut child = Command::new("tcpdump")
            .args([
                "-i",
                &net.host_link,
                "--immediate-mode",
                "-U",
                "-s",
                "0",
                "-w",
            ])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump (apt-get install tcpdump)")?;
        let stderr = child.stderr.take().context("tcpdump's stderr")?;
        let capture = Capture {
            child,
            file: file.to_path_buf(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => return Ok(capture),
                Ok(_) => {}
                Err(_) => bail!("tcpdump did not say it is listening within 10 s"),
            }
        }
    }

    /// Stops the capture and returns the pcap's bytes.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        // SIGINT: tcpdump flushes and exits.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.wait();
        Ok(std::fs::read(&self.file)?)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
