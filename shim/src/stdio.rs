//! A task's stdio from containerd's URIs: a FIFO path (what `ctr` makes),
//! an empty path (nothing), `binary:///logger?arg=value` (nerdctl's log
//! driver: a logging binary reads fds 3 and 4) and `file:///path`.
//!
//! stdout and stderr are handed to the container as fds, with no copy loop
//! in the shim; stdin goes through a pipe fed by a thread, so that
//! `CloseIO` can give the app its end-of-file.

use furnace_runtime::launcher::Stdio;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// How long a `binary://` logger gets to say it is ready.
const LOGGER_READY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("{stream} {uri:?}: {problem}")]
    Open {
        stream: &'static str,
        uri: String,
        problem: String,
    },
}

fn open_error(stream: &'static str, uri: &str, problem: impl std::fmt::Display) -> StdioError {
    StdioError::Open {
        stream,
        uri: uri.into(),
        problem: problem.to_string(),
    }
}

/// The opened stdio: fds for the container, plus the shim's side.
pub struct TaskIo {
    pub container: Stdio,
    pub stdin: Option<StdinFeed>,
}

/// The thread that copies the stdin FIFO into the container's stdin pipe;
/// [`StdinFeed::close`] (or drop) ends it and gives the app end-of-file.
pub struct StdinFeed {
    stop: Option<OwnedFd>,
}

impl StdinFeed {
    pub fn close(&mut self) {
        self.stop.take();
    }
}

impl Drop for StdinFeed {
    fn drop(&mut self) {
        self.close();
    }
}

enum Target {
    None,
    Fifo(String),
    File(String),
    Binary { path: String, args: Vec<String> },
}

fn parse(stream: &'static str, uri: &str) -> Result<Target, StdioError> {
    if uri.is_empty() {
        return Ok(Target::None);
    }
    if let Some(rest) = uri.strip_prefix("binary://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut args = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            args.push(percent_decode(k));
            if !v.is_empty() {
                args.push(percent_decode(v));
            }
        }
        return Ok(Target::Binary {
            path: percent_decode(path),
            args,
        });
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Target::File(percent_decode(path)));
    }
    if let Some(path) = uri.strip_prefix("fifo://") {
        return Ok(Target::Fifo(path.into()));
    }
    if uri.starts_with('/') {
        return Ok(Target::Fifo(uri.into()));
    }
    Err(open_error(
        stream,
        uri,
        "unsupported scheme; use a FIFO path, binary:// or file://",
    ))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push(hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens the three streams of task `id` in containerd namespace `namespace`.
pub fn open(
    namespace: &str,
    id: &str,
    stdin: &str,
    stdout: &str,
    stderr: &str,
) -> Result<TaskIo, StdioError> {
    let out = parse("stdout", stdout)?;
    let err = parse("stderr", stderr)?;
    let (container_out, container_err) = match (&out, &err) {
        (Target::Binary { path, args }, _) if stdout == stderr || stderr.is_empty() => {
            let (o, e) = start_logger(namespace, id, path, args)
                .map_err(|e| open_error("stdout", stdout, e))?;
            (Some(o), (!stderr.is_empty()).then_some(e))
        }
        (Target::File(path), Target::File(_)) if stdout == stderr => {
            let file = open_log_file(path).map_err(|e| open_error("stdout", stdout, e))?;
            let dup = file
                .try_clone()
                .map_err(|e| open_error("stderr", stderr, e))?;
            (Some(file.into()), Some(dup.into()))
        }
        _ => (
            open_output("stdout", stdout, &out, namespace, id)?,
            open_output("stderr", stderr, &err, namespace, id)?,
        ),
    };
    let (container_in, feed) = match parse("stdin", stdin)? {
        Target::None => (None, None),
        Target::Fifo(path) => {
            let (read, feed) = feed_stdin(&path).map_err(|e| open_error("stdin", stdin, e))?;
            (Some(read), Some(feed))
        }
        _ => {
            return Err(open_error(
                "stdin",
                stdin,
                "stdin must be a FIFO path or empty",
            ))
        }
    };
    Ok(TaskIo {
        container: Stdio {
            stdin: container_in,
            stdout: container_out,
            stderr: container_err,
        },
        stdin: feed,
    })
}

fn open_output(
    stream: &'static str,
    uri: &str,
    target: &Target,
    namespace: &str,
    id: &str,
) -> Result<Option<OwnedFd>, StdioError> {
    match target {
        Target::None => Ok(None),
        // Read-write, so opening never waits for a reader and the app never
        // gets SIGPIPE while containerd is away (for example restarting).
        Target::Fifo(path) => OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map(|f| Some(f.into()))
            .map_err(|e| open_error(stream, uri, e)),
        Target::File(path) => open_log_file(path)
            .map(|f| Some(f.into()))
            .map_err(|e| open_error(stream, uri, e)),
        Target::Binary { path, args } => {
            let (o, _) =
                start_logger(namespace, id, path, args).map_err(|e| open_error(stream, uri, e))?;
            Ok(Some(o))
        }
    }
}

fn open_log_file(path: &str) -> std::io::Result<File> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Starts a containerd logging binary: it reads the app's stdout on fd 3
/// and stderr on fd 4, and closes fd 5 once it is ready. Returns the write
/// ends for the container.
fn start_logger(
    namespace: &str,
    id: &str,
    path: &str,
    args: &[String],
) -> Result<(OwnedFd, OwnedFd), String> {
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let inherit = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut command = Command::new(path);
    command
        .args(args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only dup2 and setsid between fork and exec.
    unsafe {
        command.pre_exec(move || {
            for (fd, target) in inherit.iter().zip(3..) {
                if libc::dup2(*fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::setsid();
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| format!("starting logger {path}: {e}"))?;
    drop((out_r, err_r, ready_w));
    // Ready when fd 5 is closed (EOF) or written to.
    let fds = &mut [PollFd::new(ready_r.as_fd(), PollFlags::POLLIN)];
    let timeout =
        PollTimeout::try_from(LOGGER_READY_TIMEOUT.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    match poll(fds, timeout) {
        Ok(0) => Err(format!(
            "logger {path} did not signal readiness (close fd 5) within {} s",
            LOGGER_READY_TIMEOUT.as_secs()
        )),
        Ok(_) => Ok((out_w, err_w)),
        Err(e) => Err(format!("waiting for logger {path}: {e}")),
    }
}

/// Opens the stdin FIFO and a pipe for the container; a thread copies from
/// one to the other until the FIFO's writer closes or the feed is closed.
fn feed_stdin(path: &str) -> std::io::Result<(OwnedFd, StdinFeed)> {
    // Read-write: never blocks on open, and never sees EOF before containerd
    // has even opened its end; the end comes from CloseIO.
    let fifo = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    let (pipe_r, pipe_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (stop_r, stop_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || copy_stdin(fifo, File::from(pipe_w), stop_r))?;
    Ok((pipe_r, StdinFeed { stop: Some(stop_w) }))
}

fn copy_stdin(mut fifo: File, mut pipe: File, stop: OwnedFd) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut fds = [
            PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            return;
        }
        let stopping = fds[1].any().unwrap_or(true);
        // Drain what is buffered, then stop if asked (CloseIO races the last write).
        loop {
            match fifo.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if pipe.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_into_their_targets() {
        assert!(matches!(parse("stdout", ""), Ok(Target::None)));
        assert!(
            matches!(parse("stdout", "/run/x/fifo"), Ok(Target::Fifo(p)) if p == "/run/x/fifo")
        );
        assert!(
            matches!(parse("stdout", "file:///var/log/a%20b.log"), Ok(Target::File(p)) if p == "/var/log/a b.log")
        );
        match parse("stdout", "binary:///usr/bin/logger?level=debug&quiet") {
            Ok(Target::Binary { path, args }) => {
                assert_eq!(path, "/usr/bin/logger");
                assert_eq!(args, ["level", "debug", "quiet"]);
            }
            _ => panic!("binary:// did not parse"),
        }
        let err = parse("stdout", "tcp://1.2.3.4:5").err().expect("refused");
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
    }

    #[test]
    fn file_uris_share_one_file_for_both_streams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log/app.log");
        let uri = format!("file://{}", path.display());
        let io = open("ns", "id", "", &uri, &uri).expect("open");
        let mut out = File::from(io.container.stdout.expect("stdout"));
        let mut err = File::from(io.container.stderr.expect("stderr"));
        out.write_all(b"out\n").expect("write");
        err.write_all(b"err\n").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "out\nerr\n");
    }
}
