//! `furnace-memdump`: streams a range of guest physical memory to stdout as
//! one gzip member, read through the app's VMI socket a chunk at a time, so
//! neither the app nor the sidecar holds more than a chunk.
//!
//! The guest keeps running unless someone pauses it, so a dump of a live
//! guest is not one instant; pause it (QMP `stop`, or an app lease) for that.

use clap::Parser;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Writes guest physical memory [START, START+LENGTH) to stdout, gzip-compressed.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The VMI socket; the runtime mounts the app's own socket here.
    #[arg(long, default_value = furnace_api::client::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// First guest-physical address (decimal, 0x-hex, or with a K/M/G suffix).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    start: u64,
    /// Bytes to dump [default: to the end of guest memory].
    #[arg(long, value_parser = parse_size)]
    length: Option<u64>,
    /// gzip level, 0 (store) to 9 (smallest).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=9))]
    level: u32,
}

/// Bytes per read: well under the protocol's 4 MiB frame.
const CHUNK: usize = 1 << 20;

/// `4096`, `0x1000`, `4K`, `16M`, `1G` (binary units).
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&text[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    let value = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse(),
    }
    .map_err(|e| format!("{text:?} is not a size (decimal, 0x-hex, K/M/G suffix): {e}"))?;
    value
        .checked_mul(unit)
        .ok_or_else(|| format!("{text:?} does not fit in 64 bits"))
}

/// A writer that counts what passes through it.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The range to dump, checked against the guest's memory size.
fn range(start: u64, length: Option<u64>, memory_size: u64) -> Result<(u64, u64), String> {
    if start >= memory_size {
        return Err(format!(
            "--start {start:#x} is at or past the end of guest memory ({memory_size:#x})"
        ));
    }
    let length = length.unwrap_or(memory_size - start);
    match start.checked_add(length) {
        Some(end) if end <= memory_size => Ok((start, length)),
        _ => Err(format!(
            "--start {start:#x} --length {length:#x} runs past the end of guest memory ({memory_size:#x})"
        )),
    }
}

fn dump(args: &Args) -> Result<String, String> {
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        return Err("stdout is a terminal; redirect the dump to a file (… > memory.gz)".into());
    }
    let vmi = furnace_api::Vmi::connect(&args.socket)
        .map_err(|e| format!("{}: {e}", args.socket.display()))?;
    let memory_size = vmi
        .info()
        .map_err(|e| format!("guest info: {e}"))?
        .memory_size;
    let (start, length) = range(args.start, args.length, memory_size)?;
    let began = Instant::now();
    let out = Counted {
        inner: stdout.lock(),
        bytes: 0,
    };
    let mut gzip = GzEncoder::new(out, Compression::new(args.level));
    let mut buffer = vec![0u8; CHUNK];
    let mut address = start;
    let end = start + length;
    while address < end {
        let n = (end - address).min(CHUNK as u64) as usize;
        vmi.read_physical_into(address, &mut buffer[..n])
            .map_err(|e| format!("reading {n} bytes at {address:#x}: {e}"))?;
        gzip.write_all(&buffer[..n])
            .map_err(|e| format!("writing to stdout: {e}"))?;
        address += n as u64;
    }
    let mut out = gzip
        .finish()
        .map_err(|e| format!("writing to stdout: {e}"))?;
    out.flush().map_err(|e| format!("writing to stdout: {e}"))?;
    let compressed = out.bytes;
    let seconds = began.elapsed().as_secs_f64();
    Ok(format!(
        "{start:#x}..{end:#x}: {length} bytes in, {compressed} bytes of gzip out, {seconds:.2} s ({:.0} MiB/s)",
        length as f64 / (1 << 20) as f64 / seconds.max(1e-9)
    ))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match dump(&args) {
        Ok(summary) => {
            eprintln!("furnace-memdump: {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("furnace-memdump: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_every_spelling_and_bad_ones_say_why() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("0x2G"), Ok(2 << 30));
        assert!(parse_size("ten").unwrap_err().contains("not a size"));
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999G").unwrap_err().contains("64 bits"));
    }

    #[test]
    fn the_range_defaults_to_the_rest_of_memory_and_never_runs_past_it() {
        assert_eq!(range(0, None, 512 << 20), Ok((0, 512 << 20)));
        assert_eq!(range(1 << 20, Some(4096), 512 << 20), Ok((1 << 20, 4096)));
        assert!(range(512 << 20, None, 512 << 20).is_err());
        assert!(range(1, Some(512 << 20), 512 << 20)
            .unwrap_err()
            .contains("past the end"));
        assert!(range(1, Some(u64::MAX), 512 << 20).is_err());
    }
}
