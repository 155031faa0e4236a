//! `ctr run --rm IMAGE ID /bin/true` under `io.furnace.v1` and under
//! `io.containerd.runc.v2`, interleaved in one run against one containerd on
//! its stock layout (`/var/lib/containerd`, `/run/containerd`, a config
//! naming only its sockets), and each shim's resident memory while a task
//! runs.
//!
//! Targets: at most 1.0× runc's wall time (issue 13; 1.2× in issue 4);
//! shim RSS ≤ 5 MiB.
//! `cargo bench -p furnace-tests --bench shim_start` (`make bench` runs all).

mod common;

use furnace_tests::containerd::{Layout, FURNACE_RUNTIME};
use furnace_tests::stack::FurnaceStack;
use std::time::{Duration, Instant};

const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
const ROUNDS: usize = 30;
const WARMUP: usize = 3;

fn run_true(stack: &FurnaceStack, runtime: &str, id: &str) -> Duration {
    let started = Instant::now();
    let out = stack.ctr_run_on(runtime, "--rm", id, &[], &["/bin/true"]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{runtime}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn summary(name: &str, samples: &mut [Duration]) -> f64 {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64;
    let median = ms(samples[samples.len() / 2]);
    let p90 = ms(samples[(samples.len() * 9) / 10]);
    println!(
        "{name:<24} median {median:7.1} ms  mean {mean:7.1} ms  p90 {p90:7.1} ms  (n={})",
        samples.len()
    );
    median
}

/// VmRSS of the shim whose command name starts with `comm`, while a task
/// runs; prints where it lies (resident KiB per mapped file, and anonymous).
fn shim_rss_kib(stack: &FurnaceStack, runtime: &str, comm: &str) -> u64 {
    let id = format!("rss-{}", comm.len());
    let out = stack.ctr_run_on(runtime, "-d", &id, &[], &["/furnace-probe", "hold"]);
    assert!(
        out.status.success(),
        "{runtime}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    let rss = stack
        .containerd
        .pids_of_shims()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| comm.starts_with(c.trim()))
        })
        .find_map(|pid| {
            print_rss_by_mapping(runtime, pid);
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .expect("the shim's VmRSS");
    stack.remove(&id);
    rss
}

fn print_rss_by_mapping(runtime: &str, pid: u32) {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return;
    };
    let mut by_file: std::collections::BTreeMap<String, u64> = Default::default();
    let mut current = String::new();
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            *by_file.entry(current.clone()).or_default() += kib;
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|w| w.contains('-'))
        {
            let path = line.split_whitespace().nth(5).unwrap_or("[anon]");
            let perms = line.split_whitespace().nth(1).unwrap_or("");
            current = format!("{}({perms})", path.rsplit('/').next().unwrap_or(path));
        }
    }
    let mut parts: Vec<_> = by_file.into_iter().filter(|(_, kib)| *kib > 0).collect();
    parts.sort_by_key(|(_, kib)| std::cmp::Reverse(*kib));
    let parts: Vec<String> = parts.iter().map(|(f, kib)| format!("{f} {kib}")).collect();
    println!(
        "  {runtime} shim resident KiB by mapping: {}",
        parts.join(", ")
    );
}

fn main() {
    println!("host: {}", common::cpu_model());
    let stack = FurnaceStack::start_on("bench", Layout::Stock)
        .expect("the Furnace stack starts on containerd's stock layout");
    for i in 0..WARMUP {
        run_true(&stack, FURNACE_RUNTIME, &format!("warm-f{i}"));
        run_true(&stack, RUNC_RUNTIME, &format!("warm-r{i}"));
    }
    let (mut furnace, mut runc) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        // Alternate which goes first, so neither always follows the other.
        if i % 2 == 0 {
            furnace.push(run_true(&stack, FURNACE_RUNTIME, &format!("f{i}")));
            runc.push(run_true(&stack, RUNC_RUNTIME, &format!("r{i}")));
        } else {
            runc.push(run_true(&stack, RUNC_RUNTIME, &format!("r{i}")));
            furnace.push(run_true(&stack, FURNACE_RUNTIME, &format!("f{i}")));
        }
    }
    println!("ctr run --rm IMAGE ID /bin/true, {ROUNDS} interleaved rounds:");
    let f = summary("io.furnace.v1", &mut furnace);
    let r = summary("io.containerd.runc.v2", &mut runc);
    let ratio = f / r;
    println!(
        "ratio furnace/runc (medians) {ratio:.2}x  (target <= 1.0x: {})",
        if ratio <= 1.0 { "PASS" } else { "MISS" }
    );

    let furnace_rss = shim_rss_kib(&stack, FURNACE_RUNTIME, "containerd-shim-furnace-v1");
    let runc_rss = shim_rss_kib(&stack, RUNC_RUNTIME, "containerd-shim-runc-v2");
    println!(
        "shim RSS while a task runs: io.furnace.v1 {:.1} MiB, io.containerd.runc.v2 {:.1} MiB, ratio {:.2}x  (target <= 5 MiB: {})",
        furnace_rss as f64 / 1024.0,
        runc_rss as f64 / 1024.0,
        furnace_rss as f64 / runc_rss as f64,
        if furnace_rss <= 5 * 1024 { "PASS" } else { "MISS" }
    );
}
