//! `furnace-operator` against a [`ControlPlane`], run as its Deployment runs
//! it: as its own service account (a token from the TokenRequest API), held
//! to k8s/manifests/operator-rbac.yaml, leading by its Lease in
//! `furnace-system`.

use super::control_plane::{free_ports, Component, ControlPlane};
use crate::host::{has_exited, stop};
use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The operator's namespace and service account (k8s/manifests/).
pub const NAMESPACE: &str = "furnace-system";
pub const SERVICE_ACCOUNT: &str = "furnace-operator";
/// Its leader-election Lease, in [`NAMESPACE`].
pub const LEASE: &str = "furnace-operator";

pub struct RunningOperator {
    pub process: Component,
    /// Its name in the Lease.
    pub identity: String,
    /// Where it serves `/metrics` and `/healthz`.
    pub metrics: SocketAddr,
}

impl RunningOperator {
    /// Starts the operator as `identity` in the Lease, watching every
    /// namespace. The manifests must have been applied (its account and roles).
    pub fn start(plane: &ControlPlane, identity: &str) -> Result<RunningOperator> {
        let kubeconfig = plane.service_account_kubeconfig(NAMESPACE, SERVICE_ACCOUNT)?;
        let [port] = free_ports()?;
        let metrics = SocketAddr::from(([127, 0, 0, 1], port));
        let process = Component::spawn(
            &plane.dir,
            &format!("operator-{identity}"),
            Command::new(crate::bin_dir().join("furnace-operator"))
                .env("KUBECONFIG", &kubeconfig)
                .env("RUST_LOG", "info")
                .args([
                    &format!("--metrics-address={metrics}"),
                    &format!("--lease-namespace={NAMESPACE}"),
                    &format!("--identity={identity}"),
                ]),
        )?;
        Ok(RunningOperator {
            process,
            identity: identity.to_owned(),
            metrics,
        })
    }

    /// SIGKILL, as a node's OOM killer or a lost node ends it: no cleanup.
    pub fn kill(&self) {
        let _ = kill(Pid::from_raw(self.process.pid), Signal::SIGKILL);
        stop(self.process.pid);
    }

    /// SIGSTOP: it keeps its connections and its Lease, and does nothing.
    pub fn freeze(&self) {
        let _ = kill(Pid::from_raw(self.process.pid), Signal::SIGSTOP);
    }

    /// SIGCONT, after [`Self::freeze`].
    pub fn thaw(&self) {
        let _ = kill(Pid::from_raw(self.process.pid), Signal::SIGCONT);
    }

    /// Fails with its log tail when it has exited.
    pub fn check_alive(&self) -> Result<()> {
        if has_exited(self.process.pid) {
            bail!(
                "the operator exited; its log ends:\n{}",
                self.process.log_tail()
            );
        }
        Ok(())
    }

    /// Polls `check` until it gives a value, at most `limit`; fails with the
    /// operator's log tail when it exits or time runs out.
    pub fn wait_for<T>(
        &self,
        plane: &ControlPlane,
        limit: Duration,
        what: &str,
        mut check: impl FnMut() -> Option<T>,
    ) -> Result<T> {
        let mut found = None;
        plane
            .wait_for(limit, what, |_| {
                self.check_alive()?;
                found = check();
                Ok(found.is_some())
            })
            .with_context(|| format!("the operator's log ends:\n{}", self.process.log_tail()))?;
        Ok(found.expect("wait_for returned Ok"))
    }

    /// Waits until the Lease names it as the leader.
    pub fn wait_leading(&self, plane: &ControlPlane, limit: Duration) -> Result<()> {
        self.wait_for(plane, limit, &format!("{} leading", self.identity), || {
            let lease = plane.get_json(&["lease", LEASE, "-n", NAMESPACE]).ok()?;
            (lease["spec"]["holderIdentity"] == self.identity.as_str()).then_some(())
        })
    }

    /// Its resident set, from `/proc/<pid>/status`, in KiB.
    pub fn resident_kib(&self) -> Result<u64> {
        resident_kib(self.process.pid)
    }

    /// The body of `GET /metrics`.
    pub fn metrics(&self) -> Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("no end of the HTTP head")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET /metrics: {}", head.lines().next().unwrap_or_default());
        }
        Ok(body.to_owned())
    }

    /// One sample of the operator's metrics, by its full name and labels.
    pub fn metric(&self, sample: &str) -> Result<f64> {
        let body = self.metrics()?;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .with_context(|| format!("no {sample} in:\n{body}"))?
            .trim()
            .parse()
            .with_context(|| format!("{sample} is no number"))
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        self.thaw();
        stop(self.process.pid);
    }
}

/// `VmRSS` of a process, in KiB.
pub fn resident_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no VmRSS for pid {pid}"))
}
