//! The facilities bench's processes: the children it starts (the relay,
//! and itself again as the backend in the tenant namespace), what is read
//! of them from `/proc`, and the backend side that serves in the namespace.

use super::*;

/// A child this bench started: SIGTERM, then SIGKILL after 2 s, on drop.
pub(super) struct Started {
    pub(super) child: Child,
    pub(super) what: &'static str,
}

impl Started {
    /// Spawns `cmd`, which dies with this process (`PR_SET_PDEATHSIG`) even
    /// if this process is killed before its drops run.
    pub(super) fn spawn(mut cmd: Command, what: &'static str) -> Result<Started> {
        // SAFETY: prctl is async-signal-safe, and nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the {what}"))?;
        Ok(Started { child, what })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the child has exited.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the {} exited early: {status}", self.what);
        }
        Ok(())
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `/proc/PID/status` field in KiB (VmRSS, VmHWM).
pub(super) fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Voluntary context switches (sleeps: waits for a socket, a lock, a
/// condvar) of every thread of `pid` (or "self") so far.
pub(super) fn sleeps(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

pub(super) fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

// ------------------------------------------------- the backend, in the netns

/// Pins the calling thread to `cpu`; returns the mask it had, for
/// [`set_affinity`].
pub(super) fn pin(cpu: usize) -> std::io::Result<libc::cpu_set_t> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: a zeroed cpu_set_t is an empty set, `cpu` is within it, and
    // sched_getaffinity writes at most size_of::<cpu_set_t>() bytes.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set_affinity(&set)?;
        Ok(old)
    }
}

pub(super) fn set_affinity(set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: sched_setaffinity only reads the set.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The backend child's main: the Backend library on `BACKEND_PORT` and the
/// plain sink/echo on `PLAIN_PORT`, both at `addr`. Prints `ready` once both
/// listen.
pub(super) fn serve(dir: &Path, addr: Ipv4Addr) -> Result<()> {
    let key = keys::read_private(&dir.join("backend.key"))?;
    let app = keys::read_public(&dir.join(format!("{APP}.pub")))?;
    let (count, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (c, b) = (count.clone(), bytes.clone());
    let on_message = Arc::new(move |m: &AppMessage| match m.kind {
        AppMessageKind::Notify => {
            c.fetch_add(1, Ordering::Relaxed);
            b.fetch_add(m.data.len() as u64, Ordering::Relaxed);
            Vec::new()
        }
        AppMessageKind::Request if m.data == STATS => format!(
            "{} {}",
            c.load(Ordering::Relaxed),
            b.load(Ordering::Relaxed)
        )
        .into_bytes(),
        AppMessageKind::Request => m.data.clone(),
    });
    let plain = std::net::TcpListener::bind((addr, PLAIN_PORT))
        .with_context(|| format!("binding {addr}:{PLAIN_PORT}"))?;
    std::thread::spawn(move || {
        for stream in plain.incoming().flatten() {
            std::thread::spawn(move || plain_connection(stream));
        }
    });
    // As `furnace backend` runs it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((addr, BACKEND_PORT))
            .await
            .with_context(|| format!("binding {addr}:{BACKEND_PORT}"))?;
        println!("ready");
        std::io::stdout().flush()?;
        let backend = Backend::new(key, vec![(APP.to_owned(), app)], on_message);
        backend.serve(listener).await?;
        Ok(())
    })
}

/// The plain peer. Each command is a mode byte and a u64:
/// `S n`: read n bytes, answer one byte; `P cpu`: pin this connection's
/// thread to `cpu`, answer `k` (done) or `n` (not allowed); `E size`: echo `size`-byte messages
/// until the end of the stream.
pub(super) fn plain_connection(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; MIB];
    loop {
        let mut cmd = [0u8; 9];
        match s.read_exact(&mut cmd) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            r => r?,
        }
        let n = u64::from_be_bytes(cmd[1..].try_into().expect("8 bytes"));
        match cmd[0] {
            b'S' => {
                let mut left = n as usize;
                while left > 0 {
                    let k = s.read(&mut buf[..left.min(MIB)])?;
                    if k == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    left -= k;
                }
                s.write_all(b"k")?;
            }
            b'P' => {
                let pinned = usize::try_from(n).is_ok_and(|cpu| pin(cpu).is_ok());
                s.write_all(if pinned { b"k" } else { b"n" })?;
            }
            b'E' => {
                let size = (n as usize).min(MIB);
                loop {
                    match s.read_exact(&mut buf[..size]) {
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                        r => r?,
                    }
                    s.write_all(&buf[..size])?;
                }
            }
            _ => return Err(std::io::ErrorKind::InvalidData.into()),
        }
    }
}

/// Starts this binary as the backend in `net` and waits for its `ready`.
pub(super) fn start_backend(net: &Netns, dir: &Path) -> Result<Started> {
    let exe = std::env::current_exe()?;
    let mut cmd = net.command(&exe);
    cmd.env(SERVE_DIR_ENV, dir)
        .env(SERVE_ADDR_ENV, net.peer_addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut backend = Started::spawn(cmd, "backend (ip netns exec)")?;
    let stdout = backend.child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(START_LIMIT) {
        Ok(line) if line.trim() == "ready" => {}
        Ok(line) => {
            backend.check_alive()?;
            bail!("the backend printed {line:?} instead of ready");
        }
        Err(_) => bail!("the backend was not ready within {START_LIMIT:?}"),
    }
    // `ip netns exec` execs in place: the pid is the backend's own.
    let name = comm(backend.pid());
    ensure!(
        name != "ip",
        "pid {} is still `ip`, not the backend; its CPU figures would be wrong",
        backend.pid()
    );
    Ok(backend)
}

// ------------------------------------------------------- the relay and app

pub(super) fn start_relay(
    bin: &Path,
    dir: &Path,
    backend: SocketAddr,
) -> Result<(Started, PathBuf)> {
    let socket = dir.join("fac.sock");
    let mut cmd = Command::new(bin);
    cmd.arg("--listen")
        .arg(&socket)
        .args(["--backend", &backend.to_string()])
        .arg("--storage")
        .arg(dir.join("storage"))
        .args(["--messages-per-second", RELAY_RATE])
        .env("FURNACE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut relay = Started::spawn(cmd, "relay")?;
    let deadline = Instant::now() + START_LIMIT;
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        relay.check_alive()?;
        if Instant::now() >= deadline {
            bail!(
                "the relay did not listen on {} within {START_LIMIT:?}",
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((relay, socket))
}

/// Busy CPU time of the whole host so far (`/proc/stat`: all but idle and
/// iowait).
pub(super) fn host_busy() -> Duration {
    let ticks = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.strip_prefix("cpu ")?.to_owned();
            let f: Vec<u64> = line
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            // user nice system idle iowait irq softirq steal
            Some(f.iter().take(8).sum::<u64>() - f.get(3)? - f.get(4)?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU used by the app (this process), the relay, the backend, and the
/// host as a whole; and the three processes' sleeps.
#[derive(Default, Clone, Copy)]
pub(super) struct Cpu {
    pub(super) app: Duration,
    pub(super) relay: Duration,
    pub(super) backend: Duration,
    pub(super) host: Duration,
    pub(super) sleeps: [u64; 3],
}

impl Cpu {
    pub(super) fn now(relay: u32, backend: u32) -> Cpu {
        Cpu {
            app: cpu_time("self"),
            relay: cpu_time(&relay.to_string()),
            backend: cpu_time(&backend.to_string()),
            host: host_busy(),
            sleeps: [
                sleeps("self"),
                sleeps(&relay.to_string()),
                sleeps(&backend.to_string()),
            ],
        }
    }

    pub(super) fn add_since(&mut self, start: Cpu, end: Cpu) {
        self.app += end.app.saturating_sub(start.app);
        self.relay += end.relay.saturating_sub(start.relay);
        self.backend += end.backend.saturating_sub(start.backend);
        self.host += end.host.saturating_sub(start.host);
        for i in 0..3 {
            self.sleeps[i] += end.sleeps[i].saturating_sub(start.sleeps[i]);
        }
    }

    /// Sleeps per operation, app, relay and backend.
    pub(super) fn sleeps_per(&self, ops: u64) -> String {
        let [a, r, b] = self.sleeps.map(|s| s as f64 / ops.max(1) as f64);
        format!("app {a:.1}, relay {r:.1}, backend {b:.1}")
    }

    /// Host CPU used by anything but these three processes (kernel threads
    /// such as softirq work included).
    pub(super) fn others(&self) -> Duration {
        self.host
            .saturating_sub(self.app + self.relay + self.backend)
    }
}
