//! kubelet's path without kubelet: a private containerd 1.6 with its CRI
//! plugin configured from docs/containerd-furnace.toml, driven by the real
//! `crictl` (built from `sigs.k8s.io/cri-tools` by scripts/go-tools.sh), on
//! a booted guest with its sidecar. No mock: pods are real sandboxes on a
//! real CNI bridge, and their apps run under `io.furnace.v1` as kubelet
//! would have them run.

use crate::containerd::{image_archive, require_furnace_shim, Layout, TestContainerd};
use crate::{TestGuest, TestSidecar};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// CRI's containerd namespace.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The RuntimeClass handler docs/containerd-furnace.toml declares.
pub const HANDLER: &str = "furnace";
/// The pod sandbox image (tests/images/pause), as CRI names it.
pub const PAUSE_IMAGE: &str = "docker.io/furnace/pause:dev";
/// How long one crictl call may take.
const CRICTL_TIMEOUT: &str = "60s";

/// The CNI bridge and subnet of this test process: unique per pid, so
/// suites in parallel do not share one.
fn network() -> (String, String) {
    let n = std::process::id();
    (
        format!("fcri{}", n % 100_000),
        format!("10.216.{}.0/24", n % 250),
    )
}

/// docs/containerd-furnace.toml with this fixture's root, state, sockets,
/// pause image, CNI config and provider config. The runtime tables are
/// taken from the documented file as they are, so the tests run what a
/// provider installs.
///
/// `restrict_oom_score_adj`: CRI gives every sandbox `oomScoreAdj: -998`,
/// and lowering a score takes CAP_SYS_RESOURCE, which root lacks on the
/// build machines; runc then cannot start a sandbox at all. With the option
/// on, containerd clamps scores to its own, as for a rootless containerd.
/// The CRI tests leave it off, as providers do (the furnace partitions
/// raise a negative score to 0 themselves); the start benchmark turns it on
/// so that runc can be measured beside them.
pub fn containerd_config(
    dir: &Path,
    address: &Path,
    restrict_oom_score_adj: bool,
) -> Result<String> {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/containerd-furnace.toml");
    let text =
        std::fs::read_to_string(&docs).with_context(|| format!("reading {}", docs.display()))?;
    let mut config: toml::Table =
        toml::from_str(&text).context("docs/containerd-furnace.toml is TOML")?;
    let s = |p: &Path| toml::Value::String(p.display().to_string());
    config.insert("root".into(), s(&dir.join("root")));
    config.insert("state".into(), s(&dir.join("state")));
    config.insert(
        "grpc".into(),
        toml::Value::Table(toml::Table::from_iter([("address".into(), s(address))])),
    );
    let ttrpc = PathBuf::from(format!("{}.ttrpc", address.display()));
    config.insert(
        "ttrpc".into(),
        toml::Value::Table(toml::Table::from_iter([("address".into(), s(&ttrpc))])),
    );

    let cni_dir = dir.join("cni");
    std::fs::create_dir_all(&cni_dir)?;
    let (bridge, subnet) = network();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "furnace-test",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": false, "ipMasq": false,
             "ipam": {"type": "host-local", "dataDir": dir.join("ipam"), "ranges": [[{"subnet": subnet}]]}},
            {"type": "loopback"}
        ]
    });
    std::fs::write(
        cni_dir.join("10-furnace-test.conflist"),
        conflist.to_string(),
    )?;
    // Every other key keeps its default. App key Secrets are taken from
    // under kubelet's root: here the fixture's stand-in for it, which the
    // tests fill as kubelet fills its own (`CriNode::kubelet_secret`).
    let provider = dir.join("furnace.toml");
    let kubelet = dir.join("kubelet");
    std::fs::write(
        &provider,
        format!("[facilities]\nkubelet_root = \"{}\"\n", kubelet.display()),
    )?;

    let cri = config
        .get_mut("plugins")
        .and_then(|p| p.get_mut("io.containerd.grpc.v1.cri"))
        .and_then(|c| c.as_table_mut())
        .context("docs/containerd-furnace.toml has no CRI plugin table")?;
    cri.insert("sandbox_image".into(), PAUSE_IMAGE.into());
    if restrict_oom_score_adj {
        cri.insert("restrict_oom_score_adj".into(), true.into());
    }
    cri.insert(
        "cni".into(),
        toml::Value::Table(toml::Table::from_iter([
            ("bin_dir".into(), "/usr/lib/cni".into()),
            ("conf_dir".into(), s(&cni_dir)),
        ])),
    );
    let options = cri
        .get_mut("containerd")
        .and_then(|c| c.get_mut("runtimes"))
        .and_then(|r| r.get_mut(HANDLER))
        .and_then(|f| f.get_mut("options"))
        .and_then(|o| o.as_table_mut())
        .context("docs/containerd-furnace.toml declares no furnace runtime options")?;
    options.insert("ConfigPath".into(), s(&provider));
    Ok(toml::to_string(&config)?)
}

/// One node: a guest, its sidecar, and a CRI containerd with the pause,
/// probe and ps images in its `k8s.io` namespace.
pub struct CriNode {
    pub guest: TestGuest,
    pub sidecar: TestSidecar,
    pub containerd: TestContainerd,
    crictl: PathBuf,
}

static TEARDOWN: Once = Once::new();
static ADDRESS: std::sync::Mutex<Option<(PathBuf, PathBuf)>> = std::sync::Mutex::new(None);

extern "C" fn remove_pods_and_bridge() {
    if let Some((crictl, address)) = ADDRESS.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = crictl_command(&crictl, &address, &["rmp", "--force", "--all"]).output();
    }
    let (bridge, _) = network();
    let _ = Command::new("ip")
        .args(["link", "del", &bridge])
        .stderr(Stdio::null())
        .status();
}

impl CriNode {
    /// The node the CRI tests use: CRI's options as providers set them.
    pub fn start(label: &str) -> Result<CriNode> {
        Self::start_with(label, false)
    }

    /// With `restrict_oom_score_adj` (see [`containerd_config`]).
    pub fn start_with(label: &str, restrict_oom_score_adj: bool) -> Result<CriNode> {
        require_furnace_shim();
        let crictl = crate::go_tools::path("crictl")?;
        let guest = TestGuest::start(label, &[])?;
        let sidecar = TestSidecar::start(&guest, &[])?;
        let containerd = TestContainerd::start_with(
            label,
            Layout::Cri {
                restrict_oom_score_adj,
            },
        )?;
        // Pods and their veths go before containerd does (atexit runs last
        // registered first), the bridge after.
        *ADDRESS.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((crictl.clone(), containerd.address.clone()));
        TEARDOWN.call_once(|| {
            // SAFETY: registering a plain extern "C" function has no preconditions.
            unsafe { libc::atexit(remove_pods_and_bridge) };
        });
        let node = CriNode {
            guest,
            sidecar,
            containerd,
            crictl,
        };
        for image in ["pause", "probe", "ps"] {
            node.import(image)?;
        }
        Ok(node)
    }

    /// Imports `target/images/<name>.tar` into CRI's namespace under the
    /// name CRI resolves `furnace/<name>:dev` to.
    fn import(&self, name: &str) -> Result<()> {
        let archive = image_archive(name);
        let out = self
            .containerd
            .ctr_in(
                CRI_NAMESPACE,
                &["images", "import", archive.to_str().unwrap()],
            )
            .output()?;
        crate::host::stdout_if_success(&format!("ctr images import {name}"), &out)?;
        let short = format!("furnace/{name}:dev");
        let full = format!("docker.io/{short}");
        let out = self
            .containerd
            .ctr_in(CRI_NAMESPACE, &["images", "tag", "--force", &short, &full])
            .output()?;
        crate::host::stdout_if_success(&format!("ctr images tag {full}"), &out)?;
        Ok(())
    }

    /// Places `file` where kubelet binds a Secret's key for a container
    /// (`pods/<pod uid>/volume-subpaths/<volume>/<container>/0`, root's and
    /// 0400 as the operator's volume asks), and returns that path: what a
    /// `subPath` mount's source is in the container's spec.
    pub fn kubelet_secret(&self, pod_uid: &str, file: &Path) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self
            .containerd
            .dir
            .join("kubelet/pods")
            .join(pod_uid)
            .join("volume-subpaths/furnace-app-key/app");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("0");
        std::fs::copy(file, &path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))?;
        Ok(path)
    }

    pub fn crictl(&self, args: &[&str]) -> Output {
        crictl_command(&self.crictl, &self.containerd.address, args)
            .output()
            .expect("crictl runs")
    }

    /// crictl's stdout, trimmed; fails with its stderr.
    pub fn crictl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.crictl(args);
        if !out.status.success() {
            bail!("crictl {args:?} failed: {}", errors_of(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Writes `config` to a file in the fixture and returns its path.
    pub fn config_file(&self, name: &str, config: &Value) -> PathBuf {
        let path = self.containerd.dir.join(name);
        std::fs::write(&path, config.to_string()).expect("the fixture directory is writable");
        path
    }

    /// RunPodSandbox on the furnace handler; returns the pod's id.
    pub fn run_pod(&self, pod: &Path) -> Result<String> {
        self.crictl_ok(&["runp", "--runtime", HANDLER, pod.to_str().unwrap()])
    }

    /// CreateContainer and StartContainer; returns the container's id.
    pub fn start_container(&self, pod_id: &str, container: &Path, pod: &Path) -> Result<String> {
        let id = self.crictl_ok(&[
            "create",
            pod_id,
            container.to_str().unwrap(),
            pod.to_str().unwrap(),
        ])?;
        self.crictl_ok(&["start", &id])?;
        Ok(id)
    }

    /// `crictl inspect` (or `inspectp`) as JSON.
    pub fn inspect(&self, what: &str, id: &str) -> Result<Value> {
        Ok(serde_json::from_str(
            &self.crictl_ok(&[what, "-o", "json", id])?,
        )?)
    }

    /// Waits (at most `limit`) for the container to exit; returns its status.
    pub fn wait_exited(&self, id: &str, limit: Duration) -> Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.inspect("inspect", id)?["status"].clone();
            if status["state"] == "CONTAINER_EXITED" {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("container {id} still {} after {limit:?}", status["state"]);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// StopPodSandbox and RemovePodSandbox. StopPodSandbox is retried, as
    /// kubelet retries it on every pod sync, only when containerd 1.6 could not
    /// unlink the pod's netns yet (EBUSY while an unmount is still reaching a
    /// peer mount namespace: containerd#3667, cri-o#4210); any other error fails.
    pub fn remove_pod(&self, pod_id: &str) -> Result<()> {
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            match self.crictl_ok(&["stopp", pod_id]) {
                Ok(_) => break,
                Err(e)
                    if attempt < ATTEMPTS && e.to_string().contains("failed to remove netns") =>
                {
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
        self.crictl_ok(&["rmp", pod_id])?;
        Ok(())
    }
}

/// crictl's error line, without its config-file warnings.
pub fn errors_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("level=warning"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn crictl_command(crictl: &Path, address: &Path, args: &[&str]) -> Command {
    let endpoint = format!("unix://{}", address.display());
    let mut command = Command::new(crictl);
    command
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
            "--timeout",
            CRICTL_TIMEOUT,
        ])
        .args(args)
        .stdin(Stdio::null());
    command
}
