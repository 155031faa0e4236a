//! Helpers shared by the bench binaries (`mod common;` in each): the
//! fixed-seed address generator, the timing loops and the host description.
//! Each bench uses only some of them.
#![allow(dead_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

/// xorshift64: tiny, deterministic, good enough to scatter addresses.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Mean (from an untimed-inside loop) and per-op percentiles, in ns.
pub struct Stats {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub ops: usize,
}

pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64
}

/// Runs `op` over `inputs` twice: once timed as a whole (the mean), once with
/// a clock read around each op (the percentiles).
pub fn measure<T>(inputs: &[T], mut op: impl FnMut(&T)) -> Stats {
    let start = Instant::now();
    for input in inputs {
        op(input);
    }
    let mean = start.elapsed().as_nanos() as f64 / inputs.len() as f64;
    let mut samples = Vec::with_capacity(inputs.len());
    for input in inputs {
        let t = Instant::now();
        op(input);
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    Stats {
        mean,
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
        ops: inputs.len(),
    }
}

/// The round whose mean is the median.
pub fn median_round(mut rounds: Vec<Stats>) -> Stats {
    rounds.sort_by(|a, b| a.mean.total_cmp(&b.mean));
    rounds.swap_remove(rounds.len() / 2)
}

/// What one clock read around an op adds to the per-op percentiles.
pub fn clock_overhead_ns() -> f64 {
    let n = 100_000;
    let start = Instant::now();
    for _ in 0..n {
        black_box(Instant::now());
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// CPU time (user + system) process `pid` (or "self") has used so far, or
/// 0 if unknown.
pub fn cpu_time(pid: &str) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let fields: Vec<u64> = s
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            Some(fields.iter().sum::<u64>())
        })
        .unwrap_or(0);
    // USER_HZ is 100 on every Linux we run on.
    Duration::from_millis(ticks * 10)
}
