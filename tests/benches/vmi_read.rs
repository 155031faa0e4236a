//! VMI read benchmark: one run against one real guest prints every figure of
//! `docs/benchmarks.md`, each next to its physical limit or its peer measured
//! in the same run.
//!
//! `cargo bench -p furnace-tests --bench vmi_read` (or `make bench`) boots its
//! own guest through the test fixture and stops it at exit. Set
//! `FURNACE_BENCH_GUEST_DIR` to a running guest's directory to use that instead.
//!
//! Rows:
//! - 4 KiB physical reads at random page-aligned addresses of backed RAM,
//!   through `read_physical` (as the Linux layer calls it, via `&dyn Driver`),
//!   against a plain memcpy of the same pages from the same mapping: the limit;
//! - 8-byte kernel-virtual reads (`read_kernel_u64`, page walk included) at
//!   random 8-aligned offsets in the first 4 KiB of every task_struct;
//! - the same words read through QMP `xp /1gx PHYS` on one open monitor
//!   connection, as LibVMI's legacy KVM driver reads memory: the peer. It is
//!   given the physical address, translated beforehand, so it does less work
//!   than the Furnace row it is compared with;
//! - a full process-list walk;
//! - attach: mapping the guest, loading the profile, locating the kernel.
//!
//! Addresses come from a fixed-seed xorshift generator, so runs compare.

mod common;

use anyhow::{bail, ensure, Context, Result};
use common::{
    clock_overhead_ns, cpu_model, measure, median_round, ms, percentile, Stats, XorShift,
};
use furnace_tests::TestGuest;
use furnace_vmi::driver::qemu::QemuGuest;
use furnace_vmi::driver::qmp::QmpClient;
use furnace_vmi::driver::{Driver, PhysicalMemory, RamBacked};
use furnace_vmi::linux::LinuxKernel;
use furnace_vmi::profile::Profile;
use serde_json::Value;
use std::hint::black_box;
use std::time::Instant;

const SEED: u64 = 0x5eed_f0e5_ca5e_0001;
const PAGE: u64 = 4096;
const PHYS_OPS: usize = 200_000;
const VIRT_OPS: usize = 200_000;
const QMP_OPS: usize = 500;
const WALKS: usize = 200;
/// Rounds of the 4 KiB rows, alternated; each row reports its median round.
const ROUNDS: usize = 3;

/// Reads one guest-physical u64 through HMP `xp`, whose reply reads
/// `0000000001234000: 0x1122334455667788`.
fn xp_u64(qmp: &mut QmpClient, physical: u64) -> Result<u64> {
    let text = qmp.human_monitor(&format!("xp /1gx {physical:#x}"), None)?;
    let value = text
        .split_once(": ")
        .map(|(_, v)| v.trim())
        .and_then(|v| v.strip_prefix("0x"))
        .and_then(|v| u64::from_str_radix(v, 16).ok());
    value.with_context(|| format!("unexpected `xp` reply {text:?}"))
}

fn main() -> Result<()> {
    let total = Instant::now();
    // The fixture's atexit hook stops a guest we booted.
    let guest = TestGuest::for_bench("bench")?;
    let dir = guest.dir.clone();
    let record: Value = std::fs::read(dir.join("guest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let field = |k: &str| {
        record.get(k).map_or("?".to_owned(), |v| {
            v.to_string().trim_matches('"').to_owned()
        })
    };

    let t_boot = total.elapsed();

    // --- Attach, cold: map guest RAM, load the profile, locate the kernel.
    let t = Instant::now();
    let guest = QemuGuest::attach(&dir)?;
    let t_map = t.elapsed();
    let t = Instant::now();
    let profile = Profile::load(&dir.join("profile.json"))?;
    let t_profile = t.elapsed();
    let t = Instant::now();
    let kernel = LinuxKernel::attach(Box::new(guest), profile)?;
    let t_locate = t.elapsed();

    // A second view of the same guest: its mapping serves the physical rows
    // (read_physical and the memcpy limit read the very same mapping).
    let mem = QemuGuest::attach(&dir)?;
    let ranges = mem.physical_ranges();
    let backed: u64 = ranges.iter().map(|(_, len)| len).sum();
    let clock = clock_overhead_ns();

    // --- 4 KiB physical reads vs memcpy.
    let pages: Vec<(u64, u64)> = ranges
        .iter()
        .map(|&(start, len)| (start / PAGE, len / PAGE))
        .collect();
    let page_count: u64 = pages.iter().map(|p| p.1).sum();
    let mut rng = XorShift(SEED);
    let phys_addrs: Vec<u64> = (0..PHYS_OPS)
        .map(|_| {
            let mut i = rng.below(page_count);
            for &(first, n) in &pages {
                if i < n {
                    return (first + i) * PAGE;
                }
                i -= n;
            }
            unreachable!("i < page_count")
        })
        .collect();
    let regions = mem.ram().regions().to_vec();
    let file_offsets: Vec<usize> = phys_addrs
        .iter()
        .map(|&a| {
            let r = regions
                .iter()
                .find(|r| r.guest_address <= a && a + PAGE <= r.guest_address + r.len)
                .expect("every chosen page lies in one region");
            (r.file_offset + (a - r.guest_address)) as usize
        })
        .collect();
    let ram = mem.ram();
    let driver: &dyn Driver = &mem;
    let mut buf = [0u8; PAGE as usize];
    // Fault in every page of the mapping first, so neither row pays first-touch faults.
    for &(start, len) in &ranges {
        for a in (start..start + len).step_by(PAGE as usize) {
            driver.read_physical(a, &mut buf)?;
        }
    }
    let mut check = [0u8; PAGE as usize];
    let mut same = 0;
    for (&a, &o) in phys_addrs.iter().zip(&file_offsets).take(100) {
        driver.read_physical(a, &mut buf)?;
        ram.read_file(o, &mut check)?;
        same += usize::from(buf == check);
    }
    // Alternate the two rows for a few rounds and keep each row's median
    // round, so a burst of host noise does not land on one row only.
    let (mut phys_rounds, mut copy_rounds) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        phys_rounds.push(measure(&phys_addrs, |&a| {
            driver.read_physical(a, &mut buf).expect("backed page");
            black_box(&buf);
        }));
        copy_rounds.push(measure(&file_offsets, |&o| {
            ram.read_file(o, &mut buf).expect("backed page");
            black_box(&buf);
        }));
    }
    let (phys, copy) = (median_round(phys_rounds), median_round(copy_rounds));

    // --- 8-byte kernel-virtual reads in task_structs.
    let processes = kernel.processes()?;
    ensure!(!processes.is_empty(), "the process walk found no processes");
    let virt_addrs: Vec<u64> = (0..VIRT_OPS)
        .map(|_| {
            let task = processes[rng.below(processes.len() as u64) as usize].task;
            task + rng.below(PAGE / 8) * 8
        })
        .collect();
    for &a in virt_addrs.iter().take(10_000) {
        black_box(kernel.read_kernel_u64(a)?);
    }
    let virt = measure(&virt_addrs, |&a| {
        black_box(kernel.read_kernel_u64(a).expect("direct-map address"));
    });

    // The same kind of word by physical address: Furnace, then QMP `xp` (the peer).
    let qmp_virt = &virt_addrs[..QMP_OPS];
    let qmp_phys: Vec<u64> = qmp_virt
        .iter()
        .map(|&a| kernel.kernel_to_physical(a).map(|t| t.physical))
        .collect::<furnace_vmi::Result<_>>()?;
    let mut word = [0u8; 8];
    let phys8_addrs: Vec<u64> = virt_addrs[..20_000]
        .iter()
        .map(|&a| kernel.kernel_to_physical(a).map(|t| t.physical))
        .collect::<furnace_vmi::Result<_>>()?;
    let phys8 = measure(&phys8_addrs, |&a| {
        driver.read_physical(a, &mut word).expect("backed word");
        black_box(&word);
    });
    let mut qmp = QmpClient::connect(&dir.join("qmp.sock"))?;
    let mut agree = 0;
    for (&v, &p) in qmp_virt.iter().zip(&qmp_phys).take(50) {
        agree += usize::from(xp_u64(&mut qmp, p)? == kernel.read_kernel_u64(v)?);
    }
    let xp = measure(&qmp_phys, |&p| {
        black_box(xp_u64(&mut qmp, p).expect("xp reads backed memory"));
    });
    drop(qmp);

    // --- Attach again, warm: the RAM pages are now faulted in, the profile cached.
    let profile = Profile::load(&dir.join("profile.json"))?;
    let t = Instant::now();
    let again = LinuxKernel::attach(Box::new(QemuGuest::attach(&dir)?), profile)?;
    let t_warm = t.elapsed();
    ensure!(
        again.location().virtual_shift == kernel.location().virtual_shift,
        "a second attach found the kernel elsewhere"
    );
    drop(again);

    // --- Process-list walk.
    let mut walks = Vec::with_capacity(WALKS);
    let mut counts = Vec::with_capacity(WALKS);
    for _ in 0..WALKS {
        let t = Instant::now();
        let ps = kernel.processes()?;
        walks.push(t.elapsed().as_nanos() as u64);
        counts.push(ps.len());
    }
    walks.sort_unstable();
    counts.sort_unstable();
    if counts.first() != counts.last() {
        eprintln!(
            "note: the process count changed during the walks ({:?}..{:?})",
            counts.first(),
            counts.last()
        );
    }

    // --- Report.
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("Furnace VMI read benchmark (cargo bench -p furnace-tests --bench vmi_read)");
    println!("host:  {nproc} CPUs, {}", cpu_model());
    println!(
        "guest: {} MiB RAM ({} MiB backed), {} vCPU, accel {}, cpu {}, kernel {}, {:?} paging",
        field("memory_mib"),
        backed >> 20,
        field("vcpus"),
        field("accel"),
        field("cpu"),
        field("kernel_release"),
        kernel.paging_mode()
    );
    println!(
        "seed {SEED:#x}; 4 KiB rows: median of {ROUNDS} alternated rounds; percentiles include one clock read per op (~{clock:.0} ns)"
    );
    println!();
    println!(
        "{:<44} {:>8} {:>10} {:>10} {:>10}",
        "operation", "ops", "mean ns", "p50 ns", "p99 ns"
    );
    let row = |name: &str, s: &Stats| {
        println!(
            "{name:<44} {:>8} {:>10.0} {:>10.0} {:>10.0}",
            s.ops, s.mean, s.p50, s.p99
        );
    };
    row("4 KiB physical read (read_physical)", &phys);
    row("4 KiB memcpy, same pages (limit)", &copy);
    row("8 B kernel-virtual read (read_kernel_u64)", &virt);
    row("8 B physical read (read_physical)", &phys8);
    row("8 B physical read, QMP xp (peer)", &xp);
    println!();
    println!(
        "read_physical / memcpy, 4 KiB:           {:>8.2}x",
        phys.mean / copy.mean
    );
    println!(
        "QMP xp / read_kernel_u64, 8 B:           {:>8.0}x",
        xp.mean / virt.mean
    );
    println!(
        "QMP xp / read_physical, 8 B:             {:>8.0}x",
        xp.mean / phys8.mean
    );
    println!(
        "process walk (kernel.processes()):        {:>8.1} us median, {:.1} us p99 over {WALKS} walks, {} processes",
        percentile(&walks, 0.5) / 1e3,
        percentile(&walks, 0.99) / 1e3,
        counts[counts.len() / 2]
    );
    println!(
        "attach:                                   {:>8.1} ms = map guest {:.1} + load profile {:.1} + locate kernel {:.1}",
        ms(t_map + t_profile + t_locate),
        ms(t_map),
        ms(t_profile),
        ms(t_locate)
    );
    println!(
        "attach, warm (second attach, pages mapped):{:>7.1} ms = map guest + locate kernel",
        ms(t_warm)
    );
    println!("checks: read_physical == memcpy on {same}/100 pages; xp == read_kernel_u64 on {agree}/50 words (live guest)");
    println!(
        "wall time {:.1} s, of which guest boot {:.1} s",
        total.elapsed().as_secs_f64(),
        t_boot.as_secs_f64()
    );
    if same == 0 || agree == 0 {
        bail!("the readers disagree on every sample; the figures above measure the wrong thing");
    }
    Ok(())
}
