//! The whole Furnace stack on one node, real parts only: a booted test
//! guest, its VMI sidecar, a private containerd whose PATH holds
//! `containerd-shim-furnace-v1`, and the probe image built from
//! `tests/images/probe/Dockerfile` and imported into it; example app images
//! (`oci-images/`) are imported on request ([`FurnaceStack::import`]).

use crate::containerd::{
    image_archive, require_furnace_shim, Layout, TestContainerd, FURNACE_RUNTIME,
};
use crate::running::RunningApp;
use crate::{TestGuest, TestSidecar};
use anyhow::Result;
use std::path::PathBuf;
use std::process::Output;

/// Where the shim keeps libcontainer's state and puts partitions' cgroups
/// (`shim/src/instance.rs`).
pub const STATE_ROOT: &str = "/run/furnace/runtime";
pub const CGROUP_PARENT: &str = "furnace";
/// Where the shim mounts partitions' root filesystems (`shim/src/rootfs.rs`).
pub const ROOTFS_ROOT: &str = "/run/furnace/rootfs";

pub struct FurnaceStack {
    pub guest: TestGuest,
    pub sidecar: TestSidecar,
    pub containerd: TestContainerd,
    pub image: String,
}

impl FurnaceStack {
    /// The stack on a private containerd ([`Layout::Private`]).
    pub fn start(label: &str) -> Result<FurnaceStack> {
        Self::start_on(label, Layout::Private)
    }

    pub fn start_on(label: &str, layout: Layout) -> Result<FurnaceStack> {
        require_furnace_shim();
        let guest = TestGuest::start(label, &[])?;
        let sidecar = TestSidecar::start(&guest, &[])?;
        let containerd = TestContainerd::start_with(label, layout)?;
        let image = containerd.import_image(&image_archive("probe"))?;
        Ok(FurnaceStack {
            guest,
            sidecar,
            containerd,
            image,
        })
    }

    /// Imports the image `target/images/<name>.tar` (built by
    /// `scripts/images.sh`) and returns its name, `furnace/<name>:dev`.
    pub fn import(&self, name: &str) -> Result<String> {
        self.containerd.import_image(&image_archive(name))
    }

    /// `ctr run MODE --runtime RUNTIME [--annotation furnace.dev/guest=<guest>]
    /// [extra…] IMAGE ID ARGS…` of the probe image, MODE being `--rm` or `-d`;
    /// the guest annotation only for `io.furnace.v1`.
    pub fn ctr_run_on(
        &self,
        runtime: &str,
        mode: &str,
        id: &str,
        extra: &[&str],
        args: &[&str],
    ) -> Output {
        self.ctr_run_image(&self.image, runtime, mode, id, extra, args)
    }

    /// Like [`FurnaceStack::ctr_run_on`], of any imported image.
    pub fn ctr_run_image(
        &self,
        image: &str,
        runtime: &str,
        mode: &str,
        id: &str,
        extra: &[&str],
        args: &[&str],
    ) -> Output {
        let guest = format!("furnace.dev/guest={}", self.guest.name);
        let mut argv = vec!["run", mode, "--runtime", runtime];
        if runtime == FURNACE_RUNTIME {
            argv.extend_from_slice(&["--annotation", &guest]);
        }
        argv.extend_from_slice(extra);
        argv.push(image);
        argv.push(id);
        argv.extend_from_slice(args);
        self.containerd.ctr(&argv)
    }

    /// The ctr flags that run an app with `permissions` (`read,syscalls`,
    /// say) under a provider config that grants every permission but
    /// `write`: `furnace-grants.toml` beside the containerd fixture, written
    /// whole (renamed into place), as parallel tests may read it.
    pub fn granting(&self, permissions: &str) -> Vec<String> {
        let config = self
            .containerd
            .config_path()
            .with_file_name("furnace-grants.toml");
        let staged = config.with_extension(format!("toml.{:?}", std::thread::current().id()));
        std::fs::write(
            &staged,
            "[permissions]\ngrantable = [\"read\", \"pause\", \"events\", \"syscalls\"]\n",
        )
        .and_then(|()| std::fs::rename(&staged, &config))
        .expect("the provider config is written");
        vec![
            "--runtime-config-path".into(),
            config.display().to_string(),
            "--annotation".into(),
            format!("furnace.dev/permissions={permissions}"),
        ]
    }

    /// `ctr run --rm` of an app image under `io.furnace.v1` on this stack's
    /// guest, its output whatever the status. ARGS follow the image's entrypoint.
    pub fn run_app(&self, image: &str, id: &str, extra: &[&str], args: &[&str]) -> Output {
        self.ctr_run_image(image, FURNACE_RUNTIME, "--rm", id, extra, args)
    }

    /// `ctr run --rm` of an app image under `io.furnace.v1`, in the
    /// foreground, with its output read as it comes.
    pub fn spawn_app(
        &self,
        image: &str,
        id: &str,
        extra: &[&str],
        args: &[&str],
    ) -> Result<RunningApp> {
        let guest = format!("furnace.dev/guest={}", self.guest.name);
        let mut argv = vec![
            "run",
            "--rm",
            "--runtime",
            FURNACE_RUNTIME,
            "--annotation",
            &guest,
        ];
        argv.extend_from_slice(extra);
        argv.push(image);
        argv.push(id);
        argv.extend_from_slice(args);
        RunningApp::spawn(self.containerd.ctr_command(&argv))
    }

    /// `ctr run --rm` of an app on this stack's guest, its output whatever the status.
    pub fn run(&self, id: &str, extra: &[&str], args: &[&str]) -> Output {
        self.ctr_run_on(FURNACE_RUNTIME, "--rm", id, extra, args)
    }

    /// Like [`FurnaceStack::run`], detached (`-d`): the task keeps running.
    pub fn run_detached(&self, id: &str, extra: &[&str], args: &[&str]) -> Result<()> {
        let out = self.ctr_run_on(FURNACE_RUNTIME, "-d", id, extra, args);
        anyhow::ensure!(
            out.status.success(),
            "ctr run -d {id} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Kills, deletes and removes a task and its container.
    pub fn remove(&self, id: &str) {
        let _ = self.containerd.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        for _ in 0..50 {
            let out = self.containerd.ctr(&["task", "delete", id]);
            if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("not found") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.containerd.ctr(&["container", "delete", id]);
    }

    /// The host pid of a task's init, from `ctr task ls`.
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        let out = self.containerd.ctr(&["task", "ls"]);
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id)).then(|| f.next()?.parse().ok())?
        })
    }

    /// A task's status column in `ctr task ls` (RUNNING, PAUSED, STOPPED…).
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.containerd.ctr(&["task", "ls"]);
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| f.get(2).map(|s| s.to_string()))?
        })
    }

    /// The app socket the sidecar binds for task `id` (`shim/src/registration.rs`).
    pub fn app_socket(&self, id: &str) -> PathBuf {
        self.guest
            .dir
            .join("apps")
            .join(format!("{}.{id}.sock", crate::containerd::NAMESPACE))
    }

    /// Everything a task `id` could leave on the host; empty when it left nothing.
    pub fn traces_of(&self, id: &str) -> Vec<String> {
        let ns = crate::containerd::NAMESPACE;
        let mut traces = Vec::new();
        let state = PathBuf::from(STATE_ROOT).join(ns).join(id);
        if state.exists() {
            traces.push(format!("state directory {}", state.display()));
        }
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let leaf = h.path().join(CGROUP_PARENT).join(ns).join(id);
                if leaf.exists() {
                    traces.push(format!("cgroup {}", leaf.display()));
                }
            }
        }
        let rootfs = PathBuf::from(ROOTFS_ROOT).join(ns).join(id);
        if rootfs.exists() {
            traces.push(format!("rootfs directory {}", rootfs.display()));
        }
        let socket = self.app_socket(id);
        if socket.exists() {
            traces.push(format!("app socket {}", socket.display()));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines() {
            if line.contains(&format!("/{ns}/{id}/")) {
                traces.push(format!("mount {line}"));
            }
        }
        traces
    }
}

/// `&str`s of `strings`, for the `extra` flags of [`FurnaceStack::ctr_run_image`] and the like.
pub fn strs(strings: &[String]) -> Vec<&str> {
    strings.iter().map(String::as_str).collect()
}
