//! A network namespace joined to the host by a veth pair, for benches that
//! need a peer across a real (virtual) link rather than loopback. Included
//! with `#[path = "common/netns.rs"] mod netns;` by the benches that use it.
//!
//! Names carry this process's pid, so concurrent runs do not collide, and
//! everything is removed on drop (a panic included). A run killed before its
//! drop leaves its namespace behind; [`Netns::create`] removes those of dead
//! pids under the same prefix first.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one `ip` command may take.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `ip ARGS`, bounded by [`IP_TIMEOUT`]; fails with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip (iproute2)")?;
    let deadline = Instant::now() + IP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("ip {}: {status}: {}", args.join(" "), err.trim());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ip {} took over {IP_TIMEOUT:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `ip netns list` output.
fn netns_names() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A named network namespace and the veth pair joining it to the host
/// namespace, each end with an address in one private /30.
pub struct Netns {
    pub name: String,
    /// The host's end of the pair, and its address.
    pub host_if: String,
    pub host_addr: Ipv4Addr,
    /// The namespace's end, and its address.
    pub peer_if: String,
    pub peer_addr: Ipv4Addr,
}

impl Netns {
    /// Creates `<prefix>-<pid>` with interfaces `<short><pid>h` (host) and
    /// `<short><pid>n` (namespace), addresses in 10.213.0.0/16 chosen by pid,
    /// the namespace's loopback up. `short` must be at most 4 characters
    /// (interface names have 15).
    pub fn create(prefix: &str, short: &str) -> Result<Netns> {
        remove_stale(prefix, short);
        let pid = std::process::id();
        let slot = pid % 16384;
        let (c, d) = ((slot / 64) as u8, ((slot % 64) * 4) as u8);
        let net = Netns {
            name: format!("{prefix}-{pid}"),
            host_if: format!("{short}{pid}h"),
            host_addr: Ipv4Addr::new(10, 213, c, d + 1),
            peer_if: format!("{short}{pid}n"),
            peer_addr: Ipv4Addr::new(10, 213, c, d + 2),
        };
        ip(&["netns", "add", &net.name])?;
        // From here on a failure drops `net`, which removes what exists.
        let host_cidr = format!("{}/30", net.host_addr);
        let peer_cidr = format!("{}/30", net.peer_addr);
        ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &net.peer_if,
        ])?;
        ip(&["link", "set", &net.peer_if, "netns", &net.name])?;
        ip(&["addr", "add", &host_cidr, "dev", &net.host_if])?;
        ip(&["link", "set", &net.host_if, "up"])?;
        ip(&[
            "-n",
            &net.name,
            "addr",
            "add",
            &peer_cidr,
            "dev",
            &net.peer_if,
        ])?;
        ip(&["-n", &net.name, "link", "set", &net.peer_if, "up"])?;
        ip(&["-n", &net.name, "link", "set", "lo", "up"])?;
        Ok(net)
    }

    /// `ip netns exec NAME program`: `ip` execs `program` in place, so the
    /// child's pid is the program's.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// MTU of the host's end.
    pub fn mtu(&self) -> Option<u32> {
        std::fs::read_to_string(format!("/sys/class/net/{}/mtu", self.host_if))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; the namespace goes once no
        // process is left in it (the bench has stopped its children by now).
        if let Err(e) = ip(&["link", "del", &self.host_if]) {
            eprintln!("removing veth {}: {e:#}", self.host_if);
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("removing network namespace {}: {e:#}", self.name);
        }
    }
}

/// Removes `<prefix>-<pid>` namespaces (and their veths) left by runs whose
/// pid no longer exists.
fn remove_stale(prefix: &str, short: &str) {
    for name in netns_names() {
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("removing {name}, left by an earlier run (pid {pid} is gone)");
        let _ = ip(&["link", "del", &format!("{short}{pid}h")]);
        let _ = ip(&["netns", "del", &name]);
    }
}
