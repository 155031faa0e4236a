//! A real Kubernetes control plane on loopback: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, built from their Go modules
//! at the versions tools/go.mod pins (scripts/go-tools.sh), with
//! certificates made locally ([`ClusterPki`]) and the apiserver's own
//! defaults otherwise: RBAC and Node authorization, the default admission
//! plugins, no anonymous shortcuts.
//!
//! Every component runs as a child of the test process, is stopped by pid
//! when the fixture drops or the process exits, and keeps its log in the
//! fixture directory, whose tail an error shows.

use super::pki::{CertFiles, ClusterPki};
use crate::go_tools;
use crate::host::{has_exited, stop};
use anyhow::{bail, Context, Result};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

pub const FIXTURE_ROOT: &str = "/run/furnace-test/kube";
/// The in-cluster service range; the `kubernetes` service is its first address.
const SERVICE_RANGE: &str = "10.0.0.0/24";
pub const SERVICE_IP: &str = "10.0.0.1";
/// How long the apiserver may take to report ready, from a cold etcd.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The user kube-apiserver is to kubelets.
const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";
/// Bounds each kubectl call.
const KUBECTL_TIMEOUT: &str = "60s";

/// A process a Kubernetes fixture started, with its output in `log`.
#[derive(Clone, Debug)]
pub struct Component {
    pub name: String,
    pub pid: i32,
    pub log: PathBuf,
}

impl Component {
    /// Starts `command` with stdout and stderr appended to `dir/<name>.log`.
    pub fn spawn(dir: &Path, name: &str, command: &mut Command) -> Result<Component> {
        let log = dir.join(format!("{name}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Component {
            name: name.to_owned(),
            pid: child.id() as i32,
            log,
        })
    }

    /// The last 30 lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

pub struct ControlPlane {
    pub dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// cluster-admin (`system:masters`).
    pub admin_kubeconfig: PathBuf,
    pub pki: ClusterPki,
    kubectl: PathBuf,
    components: Vec<Component>,
}

static STARTED: Mutex<Vec<Component>> = Mutex::new(Vec::new());
static ATEXIT: Once = Once::new();

extern "C" fn stop_started() {
    let started = std::mem::take(&mut *STARTED.lock().unwrap_or_else(|p| p.into_inner()));
    for component in started.iter().rev() {
        stop(component.pid);
    }
}

impl ControlPlane {
    /// Starts the four components in a fresh `FIXTURE_ROOT/<label>-<pid>`
    /// and returns once the apiserver is ready and the controller manager
    /// has made the `default` service account (what pod admission needs).
    pub fn start(label: &str) -> Result<ControlPlane> {
        let dir = PathBuf::from(FIXTURE_ROOT).join(format!("{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let pki = ClusterPki::create(&dir.join("pki"))?;
        let [etcd_client, etcd_peer, apiserver_port] = free_ports()?;
        let server = format!("https://127.0.0.1:{apiserver_port}");
        let mut plane = ControlPlane {
            admin_kubeconfig: PathBuf::new(),
            kubectl: go_tools::path("kubectl")?,
            server,
            pki,
            components: Vec::new(),
            dir,
        };
        ATEXIT.call_once(|| {
            // SAFETY: registering a plain extern "C" function has no preconditions.
            unsafe { libc::atexit(stop_started) };
        });

        let etcd_url = |port: u16| format!("http://127.0.0.1:{port}");
        let data = plane.dir.join("etcd");
        plane.spawn(
            "etcd",
            Command::new(go_tools::path("etcd")?).args([
                "--name=furnace-test",
                &format!("--data-dir={}", data.display()),
                &format!("--listen-client-urls={}", etcd_url(etcd_client)),
                &format!("--advertise-client-urls={}", etcd_url(etcd_client)),
                &format!("--listen-peer-urls={}", etcd_url(etcd_peer)),
                &format!("--initial-advertise-peer-urls={}", etcd_url(etcd_peer)),
                &format!("--initial-cluster=furnace-test={}", etcd_url(etcd_peer)),
                "--log-level=warn",
            ]),
        )?;

        let pki = &plane.pki;
        let kubelet_client = pki.client(KUBELET_CLIENT, &[])?;
        let sa_key = pki.service_account_key.display().to_string();
        let sa_public_key = pki.service_account_public_key.display().to_string();
        let ca = pki.ca.display().to_string();
        let mut apiserver = Command::new(go_tools::path("kube-apiserver")?);
        apiserver.args([
            &format!("--etcd-servers={}", etcd_url(etcd_client)),
            "--bind-address=127.0.0.1",
            &format!("--secure-port={apiserver_port}"),
            &format!("--tls-cert-file={}", pki.apiserver.cert.display()),
            &format!("--tls-private-key-file={}", pki.apiserver.key.display()),
            &format!("--client-ca-file={ca}"),
            &format!(
                "--kubelet-client-certificate={}",
                kubelet_client.cert.display()
            ),
            &format!("--kubelet-client-key={}", kubelet_client.key.display()),
            &format!("--kubelet-certificate-authority={ca}"),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            &format!("--service-account-key-file={sa_public_key}"),
            &format!("--service-account-signing-key-file={sa_key}"),
            &format!("--service-cluster-ip-range={SERVICE_RANGE}"),
            "--authorization-mode=Node,RBAC",
            // The node agent's DaemonSet is privileged (docs/kubernetes.md).
            "--allow-privileged=true",
            &format!("--cert-dir={}", plane.dir.join("apiserver").display()),
            "--profiling=false",
        ]);
        plane.spawn("kube-apiserver", &mut apiserver)?;

        let admin = plane.pki.client("furnace-admin", &["system:masters"])?;
        plane.admin_kubeconfig = plane.kubeconfig("admin", &Credentials::Cert(admin))?;
        plane.wait_ready()?;
        // What kubeadm grants the apiserver's client to kubelets: logs, exec
        // and port-forward through kubelet's API, nothing else.
        plane.kubectl_ok(&[
            "create",
            "clusterrolebinding",
            "furnace-test:apiserver-kubelet-client",
            "--clusterrole=system:kubelet-api-admin",
            &format!("--user={KUBELET_CLIENT}"),
        ])?;

        let controller_manager = plane.kubeconfig(
            "controller-manager",
            &Credentials::Cert(plane.pki.client("system:kube-controller-manager", &[])?),
        )?;
        let scheduler = plane.kubeconfig(
            "scheduler",
            &Credentials::Cert(plane.pki.client("system:kube-scheduler", &[])?),
        )?;
        let signer_key = plane.dir.join("pki/ca.key").display().to_string();
        plane.spawn(
            "kube-controller-manager",
            Command::new(go_tools::path("kube-controller-manager")?).args([
                &format!("--kubeconfig={}", controller_manager.display()),
                &format!(
                    "--authentication-kubeconfig={}",
                    controller_manager.display()
                ),
                &format!(
                    "--authorization-kubeconfig={}",
                    controller_manager.display()
                ),
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                &format!("--service-account-private-key-file={sa_key}"),
                &format!("--root-ca-file={ca}"),
                &format!("--cluster-signing-cert-file={ca}"),
                &format!("--cluster-signing-key-file={signer_key}"),
                &format!("--service-cluster-ip-range={SERVICE_RANGE}"),
            ]),
        )?;
        plane.spawn(
            "kube-scheduler",
            Command::new(go_tools::path("kube-scheduler")?).args([
                &format!("--kubeconfig={}", scheduler.display()),
                &format!("--authentication-kubeconfig={}", scheduler.display()),
                &format!("--authorization-kubeconfig={}", scheduler.display()),
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
            ]),
        )?;
        plane.wait_for(READY_TIMEOUT, "the default service account", |plane| {
            Ok(plane
                .kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                .status
                .success())
        })?;
        Ok(plane)
    }

    fn spawn(&mut self, name: &str, command: &mut Command) -> Result<()> {
        let component = Component::spawn(&self.dir, name, command)?;
        STARTED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(component.clone());
        self.components.push(component);
        Ok(())
    }

    fn wait_ready(&self) -> Result<()> {
        self.wait_for(READY_TIMEOUT, "kube-apiserver's /readyz", |plane| {
            Ok(plane.kubectl(&["get", "--raw", "/readyz"]).status.success())
        })
    }

    /// Polls `ready` every 200 ms for at most `limit`; fails early, with the
    /// component's log tail, when a component has exited.
    pub fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        mut ready: impl FnMut(&ControlPlane) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(dead) = self.components.iter().find(|c| has_exited(c.pid)) {
                bail!(
                    "{} exited while waiting for {what}; its log ends:\n{}",
                    dead.name,
                    dead.log_tail()
                );
            }
            if ready(self)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("no {what} within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A kubeconfig in the fixture for these credentials.
    pub fn kubeconfig(&self, name: &str, credentials: &Credentials) -> Result<PathBuf> {
        let user = match credentials {
            Credentials::Cert(files) => serde_json::json!({
                "client-certificate": files.cert,
                "client-key": files.key,
            }),
            Credentials::Token(token) => serde_json::json!({ "token": token }),
        };
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "furnace-test", "cluster": {
                "server": self.server,
                "certificate-authority": self.pki.ca,
            }}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": "furnace-test", "user": name}}],
            "current-context": name,
        });
        let path = self.dir.join(format!("{name}.kubeconfig"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        Ok(path)
    }

    /// A kubeconfig that acts as the service account `namespace/name`, with
    /// a token from the TokenRequest API, as a pod of that account has.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token =
            self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=2h"])?;
        self.kubeconfig(&format!("{namespace}-{name}"), &Credentials::Token(token))
    }

    /// kubectl as cluster-admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args).output().expect("kubectl runs")
    }

    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.kubectl);
        command
            .arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
            .arg(format!("--request-timeout={KUBECTL_TIMEOUT}"))
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// kubectl's stdout, trimmed; fails with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args);
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The pid of a component the fixture started (`kube-scheduler`, ...).
    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.components
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.pid)
    }

    /// `kubectl apply` of manifests given as text; its output either way.
    pub fn apply(&self, manifests: &str) -> Result<Output> {
        use std::io::Write;
        let mut child = self
            .kubectl_command(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let written = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(manifests.as_bytes());
        let out = child.wait_with_output()?;
        written?;
        Ok(out)
    }

    /// Applies manifests given as text; fails with kubectl's stderr.
    pub fn apply_ok(&self, manifests: &str) -> Result<()> {
        let out = self.apply(manifests)?;
        if !out.status.success() {
            bail!(
                "kubectl apply failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `kubectl get -o json` of one object.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["get", "-o", "json"];
        all.extend_from_slice(args);
        Ok(serde_json::from_str(&self.kubectl_ok(&all)?)?)
    }
}

pub enum Credentials {
    Cert(CertFiles),
    Token(String),
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let mut started = STARTED.lock().unwrap_or_else(|p| p.into_inner());
        for component in self.components.iter().rev() {
            stop(component.pid);
            started.retain(|c| c.pid != component.pid);
        }
        drop(started);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `N` loopback ports free at this moment. The kernel hands out each
/// ephemeral port once in a cycle, so a port just released is not given to
/// another process soon.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}
