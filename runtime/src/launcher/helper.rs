//! The launch helper's side: a fresh, single-threaded process that carries
//! out one [`Request`] with libcontainer and exits (see [`super::protocol`]).
//! Creating a container forks and `chdir`s its caller, which a threaded shim
//! must not do; and keeping libcontainer out of the long-lived shim keeps the
//! shim small.

use super::protocol::{Reply, Request, Target, STDIO_FDS};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};

/// The helper binary's `main`: reads the request from argv[1], writes the
/// reply line, exits 0 (the reply, not the status, is the result).
pub fn main() -> ! {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::ERROR)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .init();
    let reply = match std::env::args().nth(1) {
        Some(json) => match serde_json::from_str::<Request>(&json) {
            Ok(request) => carry_out(&request),
            Err(e) => failed(format!("malformed helper request: {e}")),
        },
        None => failed("the helper needs its request as argv[1]".into()),
    };
    let mut line = serde_json::to_vec(&reply).unwrap_or_default();
    line.push(b'\n');
    let _ = std::io::stdout().lock().write_all(&line);
    std::process::exit(0);
}

fn failed(message: String) -> Reply {
    Reply::Failed { message }
}

fn carry_out(request: &Request) -> Reply {
    let result = match request {
        Request::Create { target, bundle } => return create(target, bundle),
        Request::Start(t) => load(t).and_then(|mut c| c.start().map_err(chain)),
        Request::Kill {
            target,
            signal,
            all,
        } => match Signal::try_from(*signal) {
            Ok(sig) => load(target).and_then(|mut c| c.kill(sig, *all).map_err(chain)),
            Err(_) => Err(format!("{signal} is not a signal number")),
        },
        Request::Pause(t) => load(t).and_then(|mut c| c.pause().map_err(chain)),
        Request::Resume(t) => load(t).and_then(|mut c| c.resume().map_err(chain)),
        Request::Delete(t) => load(t).and_then(|mut c| c.delete(true).map_err(chain)),
        Request::Exec {
            bundle,
            init_pid,
            process,
            ..
        } => return super::join::exec(bundle, *init_pid, process),
    };
    match result {
        Ok(()) => Reply::Done,
        Err(message) => failed(message),
    }
}

fn load(target: &Target) -> Result<Container, String> {
    Container::load(target.state_root.join(&target.id)).map_err(chain)
}

fn create(target: &Target, bundle: &std::path::Path) -> Reply {
    // SAFETY: the caller placed these fds for us (see `client::call`) and
    // nothing else in this fresh process owns them.
    let [stdin, stdout, stderr] = STDIO_FDS.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let built = ContainerBuilder::new(target.id.clone(), SyscallType::Linux)
        .with_root_path(&target.state_root)
        .map(|b| {
            b.with_executor(DefaultExecutor {})
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr)
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
        })
        .and_then(|b| b.build());
    match built {
        Ok(container) => match container.pid() {
            Some(pid) => Reply::Created {
                pid: pid.as_raw() as u32,
            },
            None => failed("libcontainer created the container but reported no init pid".into()),
        },
        Err(e) => failed(chain(e)),
    }
}

fn chain(e: impl std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}
