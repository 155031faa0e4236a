//! An app run in the foreground (`ctr run --rm`, no `-d`) whose output is
//! read while it runs: ctr copies the task's stdio to its own, line by line.
//! Any other process read the same way too (a tenant backend).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub struct RunningApp {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every stdout line seen so far.
    pub lines: Vec<String>,
    pub errors: Vec<String>,
}

fn pump(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

impl RunningApp {
    pub fn spawn(command: Command) -> Result<RunningApp> {
        Self::spawn_with(command, false)
    }

    /// Like [`RunningApp::spawn`], with a pipe to its stdin for [`RunningApp::send_line`].
    pub fn spawn_interactive(command: Command) -> Result<RunningApp> {
        Self::spawn_with(command, true)
    }

    fn spawn_with(mut command: Command, interactive: bool) -> Result<RunningApp> {
        if interactive {
            command.stdin(Stdio::piped());
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        let stdin = child.stdin.take();
        let stdout = pump(child.stdout.take().context("stdout")?);
        let stderr = pump(child.stderr.take().context("stderr")?);
        Ok(RunningApp {
            child,
            stdin,
            stdout,
            stderr,
            lines: Vec::new(),
            errors: Vec::new(),
        })
    }

    /// Writes one line to its stdin ([`RunningApp::spawn_interactive`] only).
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().context("not started interactive")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// The pid of `ctr` itself (to signal it as a terminal's Ctrl-C would).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `text` (an app saying it is ready).
    pub fn wait_stderr(&mut self, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.errors.iter().any(|l| l.contains(text)) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => self.errors.push(line),
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => {
                    let stdout = self.drain();
                    bail!(
                        "the app did not say {text:?} within {timeout:?}; stderr: {:?}; stdout: {stdout:?}",
                        self.errors
                    )
                }
            }
        }
    }

    /// Waits for a stdout line `matches` accepts and returns it.
    pub fn wait_line(
        &mut self,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String> {
        if let Some(line) = self.lines.iter().find(|l| matches(l)) {
            return Ok(line.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if matches(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => {
                    let stderr: Vec<String> = self.stderr.try_iter().collect();
                    bail!(
                        "no matching line within {timeout:?}; {} lines seen, stderr {:?}",
                        self.lines.len(),
                        [self.errors.clone(), stderr].concat()
                    )
                }
            }
        }
    }

    /// Every stdout line not yet read, without waiting.
    pub fn drain(&mut self) -> Vec<String> {
        self.lines.extend(self.stdout.try_iter());
        self.lines.clone()
    }

    /// Waits for the app to end by itself, then returns its status and every stdout line.
    pub fn finish(mut self, timeout: Duration) -> Result<(ExitStatus, Vec<String>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // The pumps end at EOF; collect what they still hold.
                let pumped: Vec<String> = self.stdout.iter().collect();
                self.lines.extend(pumped);
                return Ok((status, std::mem::take(&mut self.lines)));
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the app did not end within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        // ctr itself; the task is the caller's to remove (FurnaceStack::remove).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
