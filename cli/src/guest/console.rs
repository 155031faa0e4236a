//! The guest's own view, as ground truth: the workload prints it to the
//! console between marker lines, on boot and whenever a command arrives on
//! its control port.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One row of the guest's `ps -o pid,ppid,user,comm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestProcess {
    pub pid: u32,
    pub ppid: u32,
    pub user: String,
    pub name: String,
}

/// One row of the guest's `/proc/modules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestModule {
    pub name: String,
    pub size: u64,
}

/// Sends `command` to the workload and returns the console text between
/// `BEGIN-MARKER nonce` and `END-MARKER nonce`.
fn request_block(dir: &Path, command: &str, marker: &str, timeout: Duration) -> Result<String> {
    request_block_with(dir, command, &[], marker, timeout)
}

/// [`request_block`] for a command that takes arguments after the nonce.
fn request_block_with(
    dir: &Path,
    command: &str,
    arguments: &[&str],
    marker: &str,
    timeout: Duration,
) -> Result<String> {
    if let Some(bad) = arguments
        .iter()
        .find(|a| a.is_empty() || a.contains(char::is_whitespace))
    {
        bail!("a guest command argument must be one word, not {bad:?}");
    }
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let nonce = format!(
        "{}-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed),
        now.as_nanos()
    );
    let mut control = UnixStream::connect(dir.join("control.sock")).with_context(|| {
        format!(
            "connecting to the guest's control port in {}",
            dir.display()
        )
    })?;
    control.set_write_timeout(Some(Duration::from_secs(5)))?;
    // The leading newline ends any partial line a client that died mid-write left behind.
    let line = [command, &nonce]
        .iter()
        .chain(arguments)
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    control.write_all(format!("\n{line}\n").as_bytes())?;
    // Hold the connection until the answer is in: QEMU feeds the guest's UART
    // a few bytes at a time and drops what it has not fed once we hang up.
    let block = wait_block(&dir.join("console.log"), marker, &nonce, timeout);
    drop(control);
    block
}

fn wait_block(console: &Path, marker: &str, nonce: &str, timeout: Duration) -> Result<String> {
    let begin = format!("{marker}-BEGIN {nonce}\n");
    let end = format!("{marker}-END {nonce}\n");
    let deadline = Instant::now() + timeout;
    loop {
        // The guest's tty turns "\n" into "\r\n" on the serial line.
        let text = std::fs::read_to_string(console)
            .unwrap_or_default()
            .replace("\r\n", "\n");
        if let Some(block) = text
            .split_once(&begin)
            .and_then(|(_, after)| after.split_once(&end))
            .map(|(block, _)| block.to_owned())
        {
            return Ok(block);
        }
        if Instant::now() >= deadline {
            bail!("the guest did not answer `{marker}` within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Has a fresh `cat` process in the guest open `path` (after the workload
/// writes it); returns that process's pid.
pub fn open_file(dir: &Path, path: &str, timeout: Duration) -> Result<u32> {
    let block = request_block_with(dir, "open", &[path], "FURNACE-OPEN", timeout)?;
    let line = block
        .lines()
        .find_map(|l| l.strip_prefix("opened "))
        .context("the guest's open block has no `opened` line")?;
    let pid = line.split_whitespace().next().and_then(|p| p.parse().ok());
    pid.with_context(|| format!("bad `opened` line {line:?}"))
}

/// Runs `sleep seconds` in the guest; returns the sleep's pid and exit status.
pub fn run_sleep(dir: &Path, seconds: u32, timeout: Duration) -> Result<(u32, i32)> {
    let block = request_block_with(
        dir,
        "sleep",
        &[&seconds.to_string()],
        "FURNACE-SLEEP",
        timeout,
    )?;
    let line = block
        .lines()
        .find_map(|l| l.strip_prefix("exited "))
        .context("the guest's sleep block has no `exited` line")?;
    let mut words = line.split_whitespace().map(str::parse::<i64>);
    match (words.next(), words.next()) {
        (Some(Ok(pid)), Some(Ok(status))) => Ok((pid as u32, status as i32)),
        _ => bail!("bad `exited` line {line:?}"),
    }
}

/// One run of the workload's open loop: a shell that renamed itself and
/// opened a file `count` times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenLoop {
    pub pid: u32,
    pub count: u32,
    /// As the guest's clock measured the loop.
    pub elapsed_ns: u64,
}

/// `count` opens of `path` by a shell named `fburst`.
pub fn open_burst(dir: &Path, count: u32, path: &str, timeout: Duration) -> Result<OpenLoop> {
    let block = request_block_with(
        dir,
        "burst",
        &[&count.to_string(), path],
        "FURNACE-BURST",
        timeout,
    )?;
    parse_open_loop(&block)
}

/// `count` opens of `/dev/null` by a shell named `floop`, timed by the guest.
pub fn open_loop(dir: &Path, count: u32, timeout: Duration) -> Result<OpenLoop> {
    let block = request_block_with(dir, "loop", &[&count.to_string()], "FURNACE-LOOP", timeout)?;
    parse_open_loop(&block)
}

fn parse_open_loop(block: &str) -> Result<OpenLoop> {
    let field = |name: &str| -> Result<u64> {
        block
            .split_whitespace()
            .skip_while(|w| *w != name)
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("the guest's loop block has no {name}: {block:?}"))
    };
    Ok(OpenLoop {
        pid: field("pid")? as u32,
        count: field("count")? as u32,
        elapsed_ns: field("elapsed_ns")?,
    })
}

/// The guest's own process list, freshly printed. The `ps` process that
/// printed it is left out: it had exited before anyone could look.
pub fn processes(dir: &Path, timeout: Duration) -> Result<Vec<GuestProcess>> {
    parse_ps(&request_block(dir, "ps", "FURNACE-PS", timeout)?)
}

/// Like [`processes`], with the pid the guest's own `ps` ran as: ground
/// truth for whatever watched that `ps` from outside.
pub fn processes_and_ps_pid(dir: &Path, timeout: Duration) -> Result<(Vec<GuestProcess>, u32)> {
    let block = request_block(dir, "ps", "FURNACE-PS", timeout)?;
    let pid = ps_pid(&block).context("the guest's ps block has no FURNACE-PS-SELF line")?;
    Ok((parse_ps(&block)?, pid))
}

/// The process list the workload printed at boot.
pub fn boot_processes(dir: &Path) -> Result<Vec<GuestProcess>> {
    parse_ps(&wait_block(
        &dir.join("console.log"),
        "FURNACE-PS",
        "boot",
        Duration::ZERO,
    )?)
}

pub fn modules(dir: &Path, timeout: Duration) -> Result<Vec<GuestModule>> {
    parse_modules(&request_block(dir, "modules", "FURNACE-MODULES", timeout)?)
}

/// Addresses the guest's `/proc/kallsyms` gave at boot, e.g. for `init_task`.
pub fn boot_kallsyms(dir: &Path) -> Result<Vec<(String, u64)>> {
    let text = std::fs::read_to_string(dir.join("console.log"))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("FURNACE-KALLSYMS "))
        .context("the console has no FURNACE-KALLSYMS line")?;
    parse_kallsyms(line)
}

fn parse_kallsyms(line: &str) -> Result<Vec<(String, u64)>> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .chunks(3)
        .filter(|c| c.len() == 3)
        .map(|c| {
            let address = u64::from_str_radix(c[0], 16)
                .with_context(|| format!("bad kallsyms address {:?}", c[0]))?;
            Ok((c[2].to_owned(), address))
        })
        .collect()
}

fn ps_pid(block: &str) -> Option<u32> {
    block
        .lines()
        .find_map(|l| l.strip_prefix("FURNACE-PS-SELF "))
        .and_then(|p| p.trim().parse().ok())
}

fn parse_ps(block: &str) -> Result<Vec<GuestProcess>> {
    let own_pid = ps_pid(block);
    let mut processes = Vec::new();
    for line in block.lines() {
        let mut words = line.split_whitespace();
        let (Some(pid), Some(ppid), Some(user), Some(name)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        let (Ok(pid), Ok(ppid)) = (pid.parse::<u32>(), ppid.parse::<u32>()) else {
            continue; // the header line
        };
        if Some(pid) == own_pid {
            continue;
        }
        processes.push(GuestProcess {
            pid,
            ppid,
            user: user.to_owned(),
            name: name.to_owned(),
        });
    }
    if processes.is_empty() {
        bail!("the guest's ps block had no processes: {block:?}");
    }
    Ok(processes)
}

fn parse_modules(block: &str) -> Result<Vec<GuestModule>> {
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (name, size) = line
                .split_once(' ')
                .with_context(|| format!("bad module line {line:?}"))?;
            Ok(GuestModule {
                name: name.to_owned(),
                size: size
                    .trim()
                    .parse()
                    .with_context(|| format!("bad module size in {line:?}"))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_blocks_parse_without_the_header_or_ps_itself() {
        let looped = parse_open_loop("pid 97 count 500\nelapsed_ns 123456789\n").unwrap();
        assert_eq!(
            (looped.pid, looped.count, looped.elapsed_ns),
            (97, 500, 123_456_789)
        );
        let block = "PID   PPID  USER     COMMAND\n    1     0 root     init\n   70     1 tenant   fworker-gamma\n   84     1 root     ps\nFURNACE-PS-SELF 84\n";
        let ps = parse_ps(block).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(
            ps[1],
            GuestProcess {
                pid: 70,
                ppid: 1,
                user: "tenant".into(),
                name: "fworker-gamma".into()
            }
        );
    }

    #[test]
    fn kallsyms_lines_parse() {
        let got = parse_kallsyms("ffffffff82a1aa40 D init_task ffffffff8211ffe0 D linux_banner ")
            .unwrap();
        assert_eq!(
            got,
            vec![
                ("init_task".into(), 0xffffffff82a1aa40),
                ("linux_banner".into(), 0xffffffff8211ffe0)
            ]
        );
    }
}
