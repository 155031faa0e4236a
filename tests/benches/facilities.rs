//! Facilities benchmark: what the app's one way out costs, with real
//! processes, each figure next to plain TCP over the same link measured in
//! the same run.
//!
//! `cargo bench -p furnace-tests --bench facilities` (needs root, `ip`, and
//! `target/release/furnace-fac-relay`: `make build`).
//!
//! Set-up: a network namespace joined to the host by a veth pair (a /30 in
//! 10.213.0.0/16), both created here and removed at exit, panics included.
//! In the namespace runs the backend: this bench binary again (`ip netns
//! exec`), serving the real `furnace_fac::backend::Backend` library on a
//! two-worker runtime, as `furnace backend` does, and a plain TCP sink and
//! echo server. On the host run the real `furnace-fac-relay` (its rate limit
//! raised for bulk, the other limits at their defaults) and, in this
//! process, the app: the Rust SDK (`furnace_api::Facilities`) with its own
//! key, pinning the backend's.
//!
//! Rows:
//! - bulk: notifies of 1 MiB and of 64 KiB, `BULK_TOTAL` per round, then
//!   `flush` (the backend's callback has had every byte), sealed in this
//!   process, relayed, opened in the backend; beside a plain TCP copy of the
//!   same bytes in the same chunks to the sink over the same veth, acknowledged
//!   once the sink has read them all. Rounds alternate; each row reports its
//!   median round. The backend's byte count must match what was sent.
//!   Beside them, sealing and opening the same messages in this process:
//!   the encryption's own cost;
//! - request round trip: `request` of 32 bytes, which the backend echoes,
//!   beside a 32-byte TCP ping-pong with the echo server over the same veth,
//!   unpinned (like the relay) and with both ends pinned to one CPU and to
//!   two, since which of those the scheduler picks decides the plain figure;
//! - the relay's VmRSS right after it started, after one session connected
//!   (one request answered) and sat idle for a second, and after the bulk
//!   rows.
//!
//! CPU use of the app, the relay, the backend and everything else on the
//! host, and each process's sleeps (voluntary context switches) per
//! message, are printed too: on a shared host the first says whether the
//! run was disturbed.
//!
//! Targets (issue 14): bulk ≥ 50% of plain TCP and ≥ 300 MB/s, request p50
//! ≤ 250 µs, relay idle RSS ≤ 8 MiB. They are printed PASS or MISS, not
//! asserted.

mod common;
#[path = "common/netns.rs"]
mod netns;

use anyhow::{bail, ensure, Context, Result};
use common::{clock_overhead_ns, cpu_model, cpu_time, measure, median_round, Stats, XorShift};
use furnace_api::fac::v1::Kind;
use furnace_api::facilities::keys::{self, Keypair, PrivateKey, PublicKey};
use furnace_api::facilities::seal::{AppHandshake, BackendHandshake};
use furnace_api::{ErrorCode, Facilities};
use furnace_fac::backend::{AppMessage, AppMessageKind, Backend};
use netns::Netns;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// Bytes per bulk round, for each message size and each path.
const BULK_TOTAL: usize = 256 * MIB;
const BULK_SIZES: [(&str, usize); 2] = [("1 MiB", MIB), ("64 KiB", 64 * KIB)];
const ROUNDS: usize = 3;
/// Bytes sealed, and opened, per round of the in-process crypto row.
const CRYPTO_TOTAL: usize = 128 * MIB;
/// Round trips per round (`measure` runs them twice: mean, then percentiles).
const RTT_OPS: usize = 5000;
const RTT_SIZE: usize = 32;
/// Any one bulk round, or the wait for any one process, gives up after this.
const ROUND_LIMIT: Duration = Duration::from_secs(60);
const START_LIMIT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The relay's rate limit, raised: the default 1000 messages/s would cap
/// 64 KiB notifies at 66 MB/s. Its other limits stay at their defaults
/// (16 MiB a message, 64 MiB in flight); a notify refused for a full
/// outbox is retried after a flush, as an app would.
const RELAY_RATE: &str = "1000000";

const NETNS_PREFIX: &str = "furnace-bench-fac";
const IF_PREFIX: &str = "fbf";
const BACKEND_PORT: u16 = 7100;
const PLAIN_PORT: u16 = 7101;
/// Set in the backend child: the key directory and the address to serve on.
const SERVE_DIR_ENV: &str = "FURNACE_BENCH_FAC_SERVE_DIR";
const SERVE_ADDR_ENV: &str = "FURNACE_BENCH_FAC_SERVE_ADDR";
/// The app's name on the backend's allow list.
const APP: &str = "bench-app";
/// A request with this body is answered with "<notifies> <bytes>" received.
const STATS: &[u8] = b"\0stats";

const TARGET_BULK_SHARE: f64 = 0.5;
const TARGET_BULK_MBS: f64 = 300.0;
const TARGET_P50_US: f64 = 250.0;
const TARGET_RSS_KIB: u64 = 8 * 1024;
const SEED: u64 = 0x5eed_f0e5_ca5e_0014;

#[path = "facilities/processes.rs"]
mod processes;
use processes::*;

/// MB/s (10^6 B) of `BULK_TOTAL` bytes as `size`-byte notifies and a
/// flush. A notify refused for a full outbox (LIMIT_EXCEEDED) is sent again
/// after a flush and counted in `refused`.
fn relay_round(fac: &Facilities, payload: &[u8], size: usize, refused: &mut u64) -> Result<f64> {
    let n = BULK_TOTAL / size;
    let t = Instant::now();
    for i in 0..n {
        match fac.notify(&payload[..size]) {
            Err(e) if e.code == ErrorCode::LimitExceeded => {
                *refused += 1;
                fac.flush(ROUND_LIMIT).context("flush after a refusal")?;
                fac.notify(&payload[..size])
                    .with_context(|| format!("notify {i} of {n} ({size} bytes), after a flush"))?;
            }
            r => r.with_context(|| format!("notify {i} of {n} ({size} bytes)"))?,
        }
        if t.elapsed() > ROUND_LIMIT {
            bail!("a bulk round of {n} notifies took over {ROUND_LIMIT:?}");
        }
    }
    fac.flush(ROUND_LIMIT).context("flush")?;
    Ok((n * size) as f64 / t.elapsed().as_secs_f64() / 1e6)
}

/// MB/s of the same bytes written to the plain sink, until it acknowledges.
fn plain_round(s: &mut TcpStream, payload: &[u8], size: usize) -> Result<f64> {
    let n = BULK_TOTAL / size;
    let t = Instant::now();
    let mut cmd = [b'S'; 9];
    cmd[1..].copy_from_slice(&((n * size) as u64).to_be_bytes());
    s.write_all(&cmd)?;
    for _ in 0..n {
        s.write_all(&payload[..size])?;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack)
        .context("the sink's acknowledgement")?;
    Ok((n * size) as f64 / t.elapsed().as_secs_f64() / 1e6)
}

/// The backend's counts of notifies and bytes it has handed its callback.
fn backend_stats(fac: &Facilities) -> Result<(u64, u64)> {
    let reply = fac.request(STATS, REQUEST_TIMEOUT)?;
    let text = String::from_utf8(reply)?;
    let (n, b) = text.split_once(' ').context("stats reply")?;
    Ok((n.parse()?, b.parse()?))
}

fn rate_stats(rate: f64) -> Stats {
    // Stats carries the rate in `mean` so `median_round` picks the median round.
    Stats {
        mean: rate,
        p50: rate,
        p99: rate,
        ops: 1,
    }
}

/// MB/s of sealing (as the SDK does) and of opening (as the backend does)
/// `size`-byte messages in this process, one thread: the cost of the
/// encryption alone, with no socket and no relay.
fn crypto_floor(
    app_key: &PrivateKey,
    backend_key: &PrivateKey,
    backend_pub: &PublicKey,
    payload: &[u8],
    size: usize,
) -> Result<(f64, f64)> {
    let (hello, up) = AppHandshake::start(app_key, backend_pub)?;
    let (_, be_up) = BackendHandshake::read_hello(backend_key, &hello.hello)?;
    let n = CRYPTO_TOTAL / size;
    let data = &payload[..size];
    let t = Instant::now();
    for seq in 1..=n as u64 {
        black_box(up.seal(seq, Kind::Notify, 0, data)?);
    }
    let seal = (n * size) as f64 / t.elapsed().as_secs_f64() / 1e6;
    let sealed = up.seal(1, Kind::Notify, 0, data)?;
    let t = Instant::now();
    for _ in 0..n {
        black_box(be_up.open(1, Kind::Notify, 0, &sealed)?);
    }
    let open = (n * size) as f64 / t.elapsed().as_secs_f64() / 1e6;
    ensure!(be_up.open(1, Kind::Notify, 0, &sealed)? == data);
    Ok((seal, open))
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// A connection to the plain echo, its thread pinned to `server_cpu` if
/// given; `None` if that pin is not allowed here.
fn connect_echo(addr: SocketAddr, server_cpu: Option<usize>) -> Result<Option<TcpStream>> {
    let mut s = connect_plain(addr)?;
    if let Some(cpu) = server_cpu {
        let mut cmd = [b'P'; 9];
        cmd[1..].copy_from_slice(&(cpu as u64).to_be_bytes());
        s.write_all(&cmd)?;
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer)
            .context("pinning the echo thread")?;
        if answer[0] != b'k' {
            return Ok(None);
        }
    }
    let mut cmd = [b'E'; 9];
    cmd[1..].copy_from_slice(&(RTT_SIZE as u64).to_be_bytes());
    s.write_all(&cmd)?;
    Ok(Some(s))
}

fn connect_plain(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, START_LIMIT)
        .with_context(|| format!("connecting to the plain peer at {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(ROUND_LIMIT))?;
    s.set_write_timeout(Some(ROUND_LIMIT))?;
    Ok(s)
}

fn main() -> Result<()> {
    if let Some(dir) = std::env::var_os(SERVE_DIR_ENV) {
        let addr = std::env::var(SERVE_ADDR_ENV)?.parse()?;
        return serve(Path::new(&dir), addr);
    }
    let total = Instant::now();
    let relay_bin = furnace_tests::bin_dir().join("furnace-fac-relay");
    if !relay_bin.is_file() {
        bail!(
            "{} is missing: run `make build` (or `cargo build --release --workspace`) first",
            relay_bin.display()
        );
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("this bench needs root: it creates a network namespace and a veth pair");
    }

    // --- Keys: the app pins the backend's; the backend allows the app's.
    let dir = tempfile::Builder::new()
        .prefix("furnace-bench-fac-")
        .tempdir()?;
    Keypair::generate().write(&dir.path().join("backend"))?;
    Keypair::generate().write(&dir.path().join(APP))?;
    let app_key = keys::read_private(&dir.path().join(format!("{APP}.key")))?;
    let backend_pub = keys::read_public(&dir.path().join("backend.pub"))?;

    // Dropped in reverse: the SDK session, the relay, the backend, then the
    // veth and the namespace.
    let net = Netns::create(NETNS_PREFIX, IF_PREFIX)?;
    let mut backend = start_backend(&net, dir.path())?;
    let backend_addr = SocketAddr::from((net.peer_addr, BACKEND_PORT));
    let plain_addr = SocketAddr::from((net.peer_addr, PLAIN_PORT));
    let (mut relay, socket) = start_relay(&relay_bin, dir.path(), backend_addr)?;
    let t_setup = total.elapsed();

    // --- Relay memory: started, then with one idle session.
    std::thread::sleep(Duration::from_millis(500));
    let rss_started = status_kib(relay.pid(), "VmRSS")?;
    let fac = Facilities::connect(&socket, &app_key, &backend_pub)?;
    let deadline = Instant::now() + START_LIMIT;
    while !fac.relay_status().is_some_and(|s| s.backend_connected) {
        relay.check_alive()?;
        backend.check_alive()?;
        if Instant::now() >= deadline {
            bail!("the relay did not reach the backend at {backend_addr} within {START_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let echo = fac.request(b"hello", REQUEST_TIMEOUT)?;
    ensure!(echo == b"hello", "the backend answered {echo:?} to hello");
    std::thread::sleep(Duration::from_secs(1));
    let rss_session = status_kib(relay.pid(), "VmRSS")?;

    // --- Plain peers over the same veth.
    let mut sink = connect_plain(plain_addr)?;
    let mut echo_conn = connect_echo(plain_addr, None)?.context("the plain echo")?;

    let mut payload = vec![0u8; MIB];
    let mut rng = XorShift(SEED);
    for word in payload.chunks_mut(8) {
        word.copy_from_slice(&rng.next().to_ne_bytes());
    }

    // Warm-up: both paths once, so neither pays TCP slow start or first
    // allocations in a timed round.
    for _ in 0..16 {
        fac.notify(&payload)?;
    }
    fac.flush(ROUND_LIMIT)?;
    let mut cmd = [b'S'; 9];
    cmd[1..].copy_from_slice(&((16 * MIB) as u64).to_be_bytes());
    sink.write_all(&cmd)?;
    for _ in 0..16 {
        sink.write_all(&payload)?;
    }
    sink.read_exact(&mut [0u8; 1])?;
    let (count0, bytes0) = backend_stats(&fac)?;

    // --- Bulk, alternated rounds.
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut cpu = Cpu::default();
    let mut relay_wall = Duration::ZERO;
    let mut refused = 0u64;
    let (mut sent_n, mut sent_bytes) = (0u64, 0u64);
    let mut bulk = Vec::new();
    for (label, size) in BULK_SIZES {
        let (mut via_relay, mut plain) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (start, t) = (Cpu::now(relay.pid(), backend.pid()), Instant::now());
            via_relay.push(rate_stats(relay_round(&fac, &payload, size, &mut refused)?));
            relay_wall += t.elapsed();
            cpu.add_since(start, Cpu::now(relay.pid(), backend.pid()));
            sent_n += (BULK_TOTAL / size) as u64;
            sent_bytes += ((BULK_TOTAL / size) * size) as u64;
            plain.push(rate_stats(plain_round(&mut sink, &payload, size)?));
        }
        bulk.push((
            label,
            median_round(via_relay).mean,
            median_round(plain).mean,
        ));
    }
    let (count1, bytes1) = backend_stats(&fac)?;
    ensure!(
        (count1 - count0, bytes1 - bytes0) == (sent_n, sent_bytes),
        "the backend received {} notifies, {} bytes; {sent_n}, {sent_bytes} were sent",
        count1 - count0,
        bytes1 - bytes0
    );
    let mut crypto = Vec::new();
    let backend_key = keys::read_private(&dir.path().join("backend.key"))?;
    for (label, size) in BULK_SIZES {
        let (mut seal, mut open) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (s, o) = crypto_floor(&app_key, &backend_key, &backend_pub, &payload, size)?;
            seal.push(rate_stats(s));
            open.push(rate_stats(o));
        }
        crypto.push((label, median_round(seal).mean, median_round(open).mean));
    }
    let rss_after_bulk = status_kib(relay.pid(), "VmRSS")?;
    let hwm = status_kib(relay.pid(), "VmHWM")?;

    // --- Request round trips, alternated with the plain ping-pong.
    let clock = clock_overhead_ns();
    let small = vec![b'r'; RTT_SIZE];
    let inputs = vec![(); RTT_OPS];
    let mut reply = vec![0u8; RTT_SIZE];
    for _ in 0..500 {
        fac.request(&small, REQUEST_TIMEOUT)?;
        echo_conn.write_all(&small)?;
        echo_conn.read_exact(&mut reply)?;
    }
    let (mut via_relay, mut plain) = (Vec::new(), Vec::new());
    let mut rtt_cpu = Cpu::default();
    let mut rtt_wall = Duration::ZERO;
    for _ in 0..ROUNDS {
        let (start, t) = (Cpu::now(relay.pid(), backend.pid()), Instant::now());
        via_relay.push(measure(&inputs, |_| {
            let r = fac.request(&small, REQUEST_TIMEOUT).expect("request");
            assert_eq!(r.len(), RTT_SIZE);
        }));
        rtt_wall += t.elapsed();
        rtt_cpu.add_since(start, Cpu::now(relay.pid(), backend.pid()));
        plain.push(measure(&inputs, |_| {
            echo_conn.write_all(&small).expect("plain ping");
            echo_conn.read_exact(&mut reply).expect("plain pong");
        }));
    }
    let (rr, rp) = (median_round(via_relay), median_round(plain));
    // The plain ping-pong with both ends pinned: on one CPU, and on two
    // (where every message wakes a thread on the other CPU). Where the
    // scheduler puts the unpinned ends decides between the two.
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut pinned = Vec::new();
    for (label, server_cpu) in [
        ("plain, one CPU (pinned)", 0),
        ("plain, two CPUs (pinned)", 1),
    ] {
        if server_cpu >= nproc {
            continue;
        }
        // Skipped where a cpuset forbids the pins.
        let Some(mut conn) = connect_echo(plain_addr, Some(server_cpu))? else {
            println!("(skipped {label}: the echo thread cannot be pinned to CPU {server_cpu})");
            continue;
        };
        let Ok(old) = pin(0) else {
            println!("(skipped {label}: this thread cannot be pinned to CPU 0)");
            continue;
        };
        let stats = measure(&inputs, |_| {
            conn.write_all(&small).expect("plain ping");
            conn.read_exact(&mut reply).expect("plain pong");
        });
        set_affinity(&old)?;
        pinned.push((label, stats));
    }
    relay.check_alive()?;
    backend.check_alive()?;

    // --- Report.
    println!("Furnace facilities benchmark (cargo bench -p furnace-tests --bench facilities)");
    println!("host:  {nproc} CPUs, {}", cpu_model());
    println!(
        "link:  veth {} {} <-> {} {} in netns {} (MTU {}); host load average at start {}",
        net.host_if,
        net.host_addr,
        net.peer_if,
        net.peer_addr,
        net.name,
        net.mtu().map_or("?".into(), |m| m.to_string()),
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "relay: furnace-fac-relay (pid {}), --messages-per-second {RELAY_RATE}, other limits at their defaults",
        relay.pid()
    );
    println!(
        "app:   furnace_api::Facilities in this process (Noise, sealed here); backend: furnace_fac::backend::Backend, 2 workers, pid {} in the netns",
        backend.pid()
    );
    println!("plain: std TcpStream (TCP_NODELAY) from this process to a sink/echo thread in the backend process");
    println!();
    println!(
        "{:<26} {:>12} {:>12} {:>14}   (MB = 10^6 B; {} MiB per round, median of {ROUNDS} alternated rounds)",
        "bulk app -> backend",
        "relay MB/s",
        "plain MB/s",
        "relay / plain",
        BULK_TOTAL >> 20
    );
    for (label, r, p) in &bulk {
        println!(
            "{:<26} {r:>12.0} {p:>12.0} {:>13.0}%",
            format!("notify {label} + flush"),
            r / p * 100.0
        );
    }
    let share = |d: Duration, wall: Duration| d.as_secs_f64() / wall.as_secs_f64() * 100.0;
    println!(
        "CPU while the relay rows ran ({:.1} s): app {:.0}%, relay {:.0}%, backend {:.0}% of one CPU; everything else on the host {:.0}%",
        relay_wall.as_secs_f64(),
        share(cpu.app, relay_wall),
        share(cpu.relay, relay_wall),
        share(cpu.backend, relay_wall),
        share(cpu.others(), relay_wall)
    );
    println!(
        "sleeps (voluntary context switches, all threads) per notify: {}",
        cpu.sleeps_per(sent_n)
    );
    println!(
        "{:<26} {:>12} {:>12} {:>14}   (in this process, one thread, no sockets)",
        "encryption alone",
        "seal MB/s",
        "open MB/s",
        format!("both, {nproc} CPUs")
    );
    for (label, s, o) in &crypto {
        // Sealing and opening spread perfectly over every CPU, nothing else
        // running: what no relay design can beat on this host.
        println!(
            "{:<26} {s:>12.0} {o:>12.0} {:>9.0} MB/s",
            format!("{label} messages"),
            nproc as f64 / (1.0 / s + 1.0 / o)
        );
    }
    println!(
        "check: the backend's callback got {sent_n} notifies, {sent_bytes} bytes: all that were sent; {refused} notifies refused for a full outbox (flushed, sent again)"
    );
    println!();
    println!(
        "{:<26} {:>6} {:>10} {:>10} {:>10}   (percentiles include one clock read, ~{clock:.0} ns)",
        "round trip, 32 B", "ops", "mean", "p50", "p99"
    );
    let rows = [("request via relay", &rr), ("plain TCP ping-pong", &rp)];
    for (label, s) in rows.into_iter().chain(pinned.iter().map(|(l, s)| (*l, s))) {
        println!(
            "{label:<26} {:>6} {:>7.1} us {:>7.1} us {:>7.1} us",
            s.ops,
            s.mean / 1e3,
            s.p50 / 1e3,
            s.p99 / 1e3
        );
    }
    println!(
        "{:<26} {:>6} {:>9.1}x {:>9.1}x {:>9.1}x",
        "relay / plain (unpinned)",
        "",
        rr.mean / rp.mean,
        rr.p50 / rp.p50,
        rr.p99 / rp.p99
    );
    println!(
        "CPU while the requests ran ({:.1} s): app {:.0}%, relay {:.0}%, backend {:.0}%; everything else {:.0}%",
        rtt_wall.as_secs_f64(),
        share(rtt_cpu.app, rtt_wall),
        share(rtt_cpu.relay, rtt_wall),
        share(rtt_cpu.backend, rtt_wall),
        share(rtt_cpu.others(), rtt_wall)
    );
    println!(
        "sleeps per request: {}",
        rtt_cpu.sleeps_per((2 * ROUNDS * RTT_OPS) as u64)
    );
    println!();
    println!(
        "relay VmRSS: started {rss_started} KiB; one session, idle {rss_session} KiB; after the bulk rows {rss_after_bulk} KiB (peak {hwm} KiB)"
    );
    println!();
    for (label, r, p) in &bulk {
        println!(
            "target: bulk {label:<7} >= {:.0}% of plain and >= {TARGET_BULK_MBS:.0} MB/s: {r:.0} MB/s, {:.0}%  {}",
            TARGET_BULK_SHARE * 100.0,
            r / p * 100.0,
            pass(*r >= TARGET_BULK_MBS && r / p >= TARGET_BULK_SHARE)
        );
    }
    let p50 = rr.p50 / 1e3;
    println!(
        "target: request p50 <= {TARGET_P50_US:.0} us: {p50:.1} us  {}",
        pass(p50 <= TARGET_P50_US)
    );
    let idle = rss_started.max(rss_session);
    println!(
        "target: relay idle RSS <= {} KiB: {idle} KiB  {}",
        TARGET_RSS_KIB,
        pass(idle <= TARGET_RSS_KIB)
    );
    println!(
        "wall time {:.1} s, of which set-up (netns, backend, relay) {:.2} s",
        total.elapsed().as_secs_f64(),
        t_setup.as_secs_f64()
    );
    drop(fac);
    Ok(())
}
