//! A private, real Docker engine for the tenant's build flow: Debian's
//! `docker.io` (`/usr/sbin/dockerd`, driven with `/usr/bin/docker`), started
//! as the machines run it (`--iptables=false --bridge=none`) on a given
//! containerd, with its own data root, exec root and socket under
//! `/run/furnace-test/docker/<label>-<pid>/`. There is no mock.
//!
//! Teardown (on drop) stops this dockerd by pid, lazily unmounts what it left
//! under its directory and removes it.

use crate::host::{fresh_fixture_dir, has_exited, stdout_if_success, stop, unmount_under};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's client, of the engine's own version (a newer one may be first on PATH).
pub const DOCKER: &str = "/usr/bin/docker";
pub const FIXTURE_ROOT: &str = "/run/furnace-test/docker";

const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct TestDocker {
    pub dir: PathBuf,
    /// `unix://<dir>/docker.sock`, what `docker -H` and `DOCKER_HOST` take.
    pub host: String,
    pub log: PathBuf,
    pid: i32,
}

impl TestDocker {
    /// Starts dockerd on the containerd at `containerd` and waits (at most
    /// 30 s) until `docker version` gets an answer from it.
    pub fn start(label: &str, containerd: &Path) -> Result<TestDocker> {
        let dir = fresh_fixture_dir(Path::new(FIXTURE_ROOT), label)?;
        let host = format!("unix://{}", dir.join("docker.sock").display());
        let log = dir.join("dockerd.log");
        let child = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .args(["-H", &host, "--iptables=false", "--bridge=none"])
            .arg("--containerd")
            .arg(containerd)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .spawn()
            .with_context(|| format!("starting {DOCKERD}"))?;
        let docker = TestDocker {
            dir,
            host,
            log,
            pid: child.id() as i32,
        };
        docker.wait_ready()?;
        Ok(docker)
    }

    /// `docker -H <this engine> ARGS`, its output whatever the status.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("docker runs")
    }

    /// Like [`TestDocker::docker`]; fails with its output when docker exits non-zero.
    pub fn docker_ok(&self, args: &[&str]) -> Result<String> {
        stdout_if_success(&format!("docker {args:?}"), &self.docker(args))
    }

    /// `docker save IMAGE | ctr images import -`, the tenant's route from
    /// the engine into containerd, run through a shell pipe as a user would.
    pub fn save_into(&self, image: &str, ctr: &mut Command) -> Result<String> {
        let mut save = self
            .command(&["save", image])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let archive = save.stdout.take().context("docker save's stdout")?;
        let import = ctr
            .args(["images", "import", "-"])
            .stdin(archive)
            .output()
            .context("ctr images import")?;
        let saved = save.wait_with_output()?;
        anyhow::ensure!(
            saved.status.success(),
            "docker save {image} failed: {}",
            String::from_utf8_lossy(&saved.stderr)
        );
        anyhow::ensure!(
            import.status.success(),
            "ctr images import - failed: {}",
            String::from_utf8_lossy(&import.stderr)
        );
        Ok(String::from_utf8_lossy(&import.stdout).into_owned())
    }

    /// `docker build -t TAG DIR` of a context holding `files` (name, content).
    pub fn build(&self, tag: &str, files: &[(&str, &str)]) -> Result<String> {
        let context = self
            .dir
            .join(format!("context-{}", tag.replace([':', '/'], "-")));
        std::fs::create_dir_all(&context)?;
        for (name, content) in files {
            std::fs::File::create(context.join(name))?.write_all(content.as_bytes())?;
        }
        let context = context.to_str().context("UTF-8 paths")?.to_owned();
        self.docker_ok(&["build", "-t", tag, &context])
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(DOCKER);
        command
            .args(["-H", &self.host])
            .args(args)
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::null());
        command
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if has_exited(self.pid) {
                bail!("dockerd exited while starting; log:\n{}", self.log_tail());
            }
            if self.command(&["version"]).output()?.status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "dockerd did not answer on {} within {READY_TIMEOUT:?}; log:\n{}",
            self.host,
            self.log_tail()
        )
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for TestDocker {
    fn drop(&mut self) {
        if !stop(self.pid) {
            eprintln!("TestDocker: dockerd {} would not die", self.pid);
        }
        unmount_under(&self.dir);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("TestDocker: removing {}: {e}", self.dir.display());
        }
    }
}
