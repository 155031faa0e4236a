//! Sidecar round-trip benchmark: one run against one real guest and the real
//! `furnace-vmi-sidecar` binary prints what a call through the app's socket
//! costs, each figure next to the same operation done in-process (the
//! sidecar's own cost floor), and the targets of the issue.
//!
//! `cargo bench -p furnace-tests --bench sidecar_rtt` boots its own guest
//! through the test fixture, starts the sidecar on it, registers an app with
//! the `read` permission (uid 0) and connects the Rust SDK to the app's
//! socket. The sidecar is stopped (SIGTERM, then SIGKILL) when the bench ends,
//! panics included; the guest is stopped at exit. Set
//! `FURNACE_BENCH_GUEST_DIR` to a running guest's directory to use that instead.
//!
//! Rows:
//! - round trips of 8-byte, 4 KiB and 1 MiB `read_physical` at random
//!   addresses of backed RAM, beside `kernel.driver().read_physical` of the
//!   same bytes in this process;
//! - bulk physical reads through the socket, 1 MiB and the per-call maximum
//!   (4 MiB - 64 KiB) at a time, beside the in-process copy of the same chunks;
//! - a process list three ways: one SDK call per field, one linked batch per
//!   `BATCH_TASKS` tasks, and `ListProcesses` (the sidecar walks), beside
//!   `kernel.processes()` in this process. The four walks must agree on the
//!   (pid, name) set, with the guest paused, before any of them is timed.
//!
//! Addresses come from a fixed-seed xorshift generator, so runs compare.

mod common;

use anyhow::{bail, ensure, Context, Result};
use common::{
    clock_overhead_ns, cpu_model, cpu_time, measure, median_round, percentile, Stats, XorShift,
};
use furnace_api::v1::{self, Permission};
use furnace_api::Vmi;
use furnace_tests::walks::{walk_batched, walk_per_call, PidNames};
use furnace_tests::{TestGuest, TestSidecar};
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::driver::Driver;
use furnace_vmi::linux::LinuxKernel;
use furnace_vmi::profile::Profile;
use std::collections::BTreeSet;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

const SEED: u64 = 0x5eed_f0e5_ca5e_0002;
const MIB: u64 = 1 << 20;
/// The sidecar's default per-call read limit.
const MAX_READ: u64 = 4 * MIB - (64 << 10);
const SMALL_OPS: usize = 20_000;
const MIB_OPS: usize = 500;
const BULK_TOTAL: u64 = 256 * MIB;
/// Rounds of every read row, socket and in-process alternated; each row
/// reports its median round, so a burst of host noise does not land on one row only.
const ROUNDS: usize = 3;
const WALKS: usize = 200;
/// Tasks per linked batch (3 calls each).
const BATCH_TASKS: usize = 64;
/// The targets.
const TARGET_P50_8B_US: f64 = 20.0;
const TARGET_BULK_MBS: f64 = 1000.0;

/// Pauses the guest through this process's own QMP connection and resumes
/// it on drop.
struct Paused<'a>(&'a dyn Driver);

impl<'a> Paused<'a> {
    fn new(driver: &'a dyn Driver) -> Result<Self> {
        driver.control().context("the driver can pause")?.pause()?;
        Ok(Paused(driver))
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        if let Some(control) = self.0.control() {
            if let Err(e) = control.resume() {
                eprintln!("resuming the guest failed: {e}");
            }
        }
    }
}

/// `n` random `align`-aligned addresses at which `size` bytes lie within one
/// backed range.
fn addresses(
    rng: &mut XorShift,
    ranges: &[(u64, u64)],
    size: u64,
    align: u64,
    n: usize,
) -> Vec<u64> {
    let slots: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|&&(_, len)| len >= size)
        .map(|&(start, len)| (start.div_ceil(align) * align, (len - size) / align + 1))
        .collect();
    let total: u64 = slots.iter().map(|s| s.1).sum();
    (0..n)
        .map(|_| {
            let mut i = rng.below(total);
            for &(first, count) in &slots {
                if i < count {
                    return first + i * align;
                }
                i -= count;
            }
            unreachable!("i < total")
        })
        .collect()
}

fn walk_listprocesses(vmi: &Vmi) -> Result<PidNames> {
    Ok(vmi
        .processes()?
        .into_iter()
        .map(|p| (p.pid, p.name))
        .collect())
}

fn walk_in_process(kernel: &LinuxKernel) -> Result<PidNames> {
    Ok(kernel
        .processes()?
        .into_iter()
        .map(|p| (p.pid, p.name))
        .collect())
}

/// Median and p99 of `WALKS` full walks, in ns, and the list's length.
fn time_walks(mut walk: impl FnMut() -> Result<PidNames>) -> Result<(f64, f64, usize)> {
    let mut samples = Vec::with_capacity(WALKS);
    let mut len = 0;
    for _ in 0..WALKS {
        let t = Instant::now();
        let list = walk()?;
        samples.push(t.elapsed().as_nanos() as u64);
        len = black_box(list).len();
    }
    samples.sort_unstable();
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99), len))
}

/// MB/s (10^6 bytes) of reading `addrs` chunks of `size` bytes with `read`.
fn bulk_rate(addrs: &[u64], size: u64, mut read: impl FnMut(u64)) -> Stats {
    let t = Instant::now();
    for &a in addrs {
        read(a);
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = (addrs.len() as u64 * size) as f64 / secs / 1e6;
    // Stats carries the rate in `mean` so `median_round` picks the median round.
    Stats {
        mean: rate,
        p50: rate,
        p99: rate,
        ops: addrs.len(),
    }
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn main() -> Result<()> {
    let total = Instant::now();
    // The fixture's atexit hooks stop a guest and sidecar we started.
    let guest = TestGuest::for_bench("rtt")?;
    let dir = guest.dir.clone();
    let t_boot = total.elapsed();

    // --- The sidecar, an app, and the SDK on the app's socket.
    let t = Instant::now();
    let sidecar = TestSidecar::start(&guest, &[])?;
    let admin = sidecar.admin();
    let t_sidecar = t.elapsed();
    let registered = admin.register(&v1::RegisterRequest {
        app_id: "bench-rtt".into(),
        permissions: vec![Permission::Read as i32],
        uid: 0,
        gid: 0,
    })?;
    let vmi = Vmi::connect(Path::new(&registered.socket_path))?;

    // --- The same guest in this process.
    let kernel = LinuxKernel::attach(
        Box::new(QemuGuest::attach(&dir)?),
        Profile::load(&dir.join("profile.json"))?,
    )?;
    let driver = kernel.driver();
    let ranges = driver.physical_ranges();
    let backed: u64 = ranges.iter().map(|r| r.1).sum();
    let clock = clock_overhead_ns();

    // Fault in every page of both mappings (this process's and the
    // sidecar's), so no row pays first-touch faults.
    let mut big = vec![0u8; MAX_READ as usize];
    for &(start, len) in &ranges {
        let mut a = start;
        while a < start + len {
            let n = MAX_READ.min(start + len - a);
            driver.read_physical(a, &mut big[..n as usize])?;
            black_box(vmi.read_physical(a, n)?);
            a += n;
        }
    }

    let qemu_pid = std::fs::read_to_string(dir.join("qemu.pid"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut rng = XorShift(SEED);
    let addr8 = addresses(&mut rng, &ranges, 8, 8, SMALL_OPS);
    let addr4k = addresses(&mut rng, &ranges, 4096, 4096, SMALL_OPS);
    let addr1m = addresses(&mut rng, &ranges, MIB, 4096, MIB_OPS);
    let bulk1m = addresses(&mut rng, &ranges, MIB, MIB, (BULK_TOTAL / MIB) as usize);
    let bulk_max = addresses(
        &mut rng,
        &ranges,
        MAX_READ,
        MIB,
        BULK_TOTAL.div_ceil(MAX_READ) as usize,
    );

    // --- Correctness, with the guest paused so both sides see the same bytes
    // and the same task list.
    let (reads_same, reads_checked, walk_len) = {
        let _paused = Paused::new(driver)?;
        let mut same = 0;
        let mut checked = 0;
        for (addrs, size) in [(&addr8, 8), (&addr4k, 4096), (&addr1m, MIB)] {
            for &a in addrs.iter().take(50) {
                let mut buf = vec![0u8; size as usize];
                driver.read_physical(a, &mut buf)?;
                same += usize::from(vmi.read_physical(a, size)? == buf);
                checked += 1;
            }
        }
        let sets: Vec<(&str, BTreeSet<(u32, String)>)> = vec![
            (
                "in-process",
                walk_in_process(&kernel)?.into_iter().collect(),
            ),
            ("per-call", walk_per_call(&vmi)?.into_iter().collect()),
            (
                "batched",
                walk_batched(&vmi, BATCH_TASKS)?.into_iter().collect(),
            ),
            (
                "ListProcesses",
                walk_listprocesses(&vmi)?.into_iter().collect(),
            ),
        ];
        for (label, set) in &sets[1..] {
            if let Some(diff) = furnace_tests::set_difference(&sets[0].1, set) {
                bail!("the {label} walk disagrees with kernel.processes():\n{diff}");
            }
        }
        ensure!(
            sets[0].1.len() > 1,
            "the walks found {} processes",
            sets[0].1.len()
        );
        (same, checked, sets[0].1.len())
    };
    ensure!(
        reads_same == reads_checked,
        "socket reads differ from in-process reads on {}/{reads_checked} samples, guest paused",
        reads_checked - reads_same
    );

    // --- Round trips, each beside the in-process read of the same bytes.
    let (timed, qemu_cpu) = (Instant::now(), cpu_time(&qemu_pid));
    let mut buf = vec![0u8; MIB as usize];
    let mut rows = Vec::new();
    for (label, addrs, size) in [
        ("8 B", &addr8, 8u64),
        ("4 KiB", &addr4k, 4096),
        ("1 MiB", &addr1m, MIB),
    ] {
        let (mut socket, mut local) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            socket.push(measure(addrs, |&a| {
                black_box(vmi.read_physical(a, size).expect("backed RAM"));
            }));
            local.push(measure(addrs, |&a| {
                driver
                    .read_physical(a, &mut buf[..size as usize])
                    .expect("backed RAM");
                black_box(&buf);
            }));
        }
        rows.push((label, median_round(socket), median_round(local)));
    }

    // --- Bulk: the socket at 1 MiB and at the per-call maximum, against the
    // in-process copy of the same chunks, alternated. Bulk readers reuse one
    // buffer (`read_physical_into`), as a memory dumper would.
    let mut sink = vec![0u8; MAX_READ as usize];
    let mut bulk = Vec::new();
    for (label, addrs, size) in [
        ("1 MiB", &bulk1m, MIB),
        ("4 MiB - 64 KiB", &bulk_max, MAX_READ),
    ] {
        let (mut socket, mut local) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            socket.push(bulk_rate(addrs, size, |a| {
                vmi.read_physical_into(a, &mut sink[..size as usize])
                    .expect("backed RAM");
                black_box(&sink);
            }));
            local.push(bulk_rate(addrs, size, |a| {
                driver
                    .read_physical(a, &mut big[..size as usize])
                    .expect("backed RAM");
                black_box(&big);
            }));
        }
        bulk.push((label, median_round(socket).mean, median_round(local).mean));
    }

    // --- Process list, four ways.
    let walks = [
        (
            "per-call SDK walk",
            time_walks(|| walk_per_call(&vmi))?,
            format!("{} calls", 5 + 1 + 3 * walk_len),
        ),
        (
            "linked batches",
            time_walks(|| walk_batched(&vmi, BATCH_TASKS))?,
            format!(
                "{} calls ({BATCH_TASKS} tasks each)",
                1 + (walk_len + 1).div_ceil(BATCH_TASKS)
            ),
        ),
        (
            "ListProcesses",
            time_walks(|| walk_listprocesses(&vmi))?,
            "1 call".to_owned(),
        ),
    ];
    let local_walk = time_walks(|| walk_in_process(&kernel))?;
    let qemu_share =
        cpu_time(&qemu_pid).saturating_sub(qemu_cpu).as_secs_f64() / timed.elapsed().as_secs_f64();

    // --- Report.
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Furnace sidecar round-trip benchmark (cargo bench -p furnace-tests --bench sidecar_rtt)"
    );
    println!("host:  {nproc} CPUs, {}", cpu_model());
    println!(
        "guest: {} MiB backed, kernel {}; {walk_len} processes",
        backed >> 20,
        kernel
            .banner()
            .unwrap_or_default()
            .split_whitespace()
            .nth(2)
            .unwrap_or("?")
    );
    println!(
        "seed {SEED:#x}; socket = furnace_api::Vmi over the app's unix socket to furnace-vmi-sidecar;"
    );
    println!(
        "in-process = kernel.driver().read_physical / kernel.processes(); percentiles include one clock read (~{clock:.0} ns)"
    );
    println!(
        "host load average at start {}; the guest's QEMU used {:.0}% of a CPU while the rows ran; rows: median of {ROUNDS} alternated rounds",
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        qemu_share * 100.0
    );
    println!();
    println!(
        "{:<22} {:>6} {:>10} {:>10} {:>10} {:>11} {:>10} {:>10} {:>8}",
        "read_physical", "ops", "socket mean", "p50", "p99", "in-proc mean", "p50", "p99", "ratio"
    );
    for (label, s, l) in &rows {
        println!(
            "{label:<22} {:>6} {:>8.1} us {:>7.1} us {:>7.1} us {:>9.2} us {:>7.2} us {:>7.2} us {:>7.0}x",
            s.ops,
            s.mean / 1e3,
            s.p50 / 1e3,
            s.p99 / 1e3,
            l.mean / 1e3,
            l.p50 / 1e3,
            l.p99 / 1e3,
            s.mean / l.mean
        );
    }
    println!();
    println!(
        "{:<22} {:>12} {:>12} {:>14}   (MB = 10^6 B; {} MiB per round)",
        "bulk read, per call",
        "socket MB/s",
        "in-proc MB/s",
        "in-proc/socket",
        BULK_TOTAL >> 20
    );
    for (label, s, l) in &bulk {
        println!("{label:<22} {s:>12.0} {l:>12.0} {:>13.2}x", l / s);
    }
    println!();
    println!(
        "{:<22} {:>10} {:>10} {:>10}   round trips",
        "process list", "median", "p99", "vs in-proc"
    );
    for (label, (p50, p99, _), calls) in &walks {
        println!(
            "{label:<22} {:>7.0} us {:>7.0} us {:>9.0}x   {calls}",
            p50 / 1e3,
            p99 / 1e3,
            p50 / local_walk.0
        );
    }
    println!(
        "{:<22} {:>7.1} us {:>7.1} us {:>10}   (kernel.processes(): also ppid, uid, dtb)",
        "in-process",
        local_walk.0 / 1e3,
        local_walk.1 / 1e3,
        "1x"
    );
    println!();
    let p50_8b = rows[0].1.p50 / 1e3;
    println!(
        "target: p50 8-byte read <= {TARGET_P50_8B_US} us:  {p50_8b:.1} us  {}",
        pass(p50_8b <= TARGET_P50_8B_US)
    );
    for (label, s, _) in &bulk {
        println!(
            "target: bulk >= 1 GB/s, {label:<15} {:.2} GB/s  {}",
            s / 1e3,
            pass(*s >= TARGET_BULK_MBS)
        );
    }
    println!(
        "checks: socket == in-process on {reads_same}/{reads_checked} reads; the four walks agree on {walk_len} (pid, name) pairs (guest paused)"
    );
    println!(
        "wall time {:.1} s, of which guest boot {:.1} s, sidecar start {:.2} s",
        total.elapsed().as_secs_f64(),
        t_boot.as_secs_f64(),
        t_sidecar.as_secs_f64()
    );
    Ok(())
}
