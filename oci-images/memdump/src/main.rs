//! `furnace-memdump`: streams a range of guest physical memory to stdout as
//! one gzip member, read through the app's VMI socket a chunk at a time, so
//! neither the app nor the sidecar holds more than a chunk.
//!
//! The guest keeps running unless someone pauses it, so a dump of a live
//! guest is not one instant; pause it (QMP `stop`, or an app lease) for that.
//!
//! `--to-backend` (or `--facilities PATH`) streams the range to the tenant's
//! backend through the facilities relay instead, raw, one chunk per notify
//! with a header to reassemble it by, then a SHA-256 of the whole range
//! (`chunks.rs` has the format); nothing goes to stdout. It is never chosen
//! on its own: a dump is where its caller asked for it. The relay's limits
//! (message size, rate, bytes in flight) are waited out, never a reason to
//! drop a chunk, and the app exits only once the backend has confirmed
//! every message. `--reassemble` is the tenant's side: it rebuilds the range
//! from what `furnace backend` printed.

mod backend;
mod chunks;

use base64::Engine;
use chunks::{Header, Reassembler, Step};
use clap::Parser;
use flate2::write::GzEncoder;
use flate2::Compression;
use furnace_api::{ErrorCode, Vmi};
use sha2::{Digest, Sha256};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

/// Writes guest physical memory [START, START+LENGTH) to stdout,
/// gzip-compressed, or with --to-backend to the tenant's backend in chunks.
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
    /// gzip level, 0 (store) to 9 (smallest); for stdout only.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=9))]
    level: u32,
    /// Stream the range raw to the tenant's backend through the facilities
    /// relay, in chunks, then its SHA-256, instead of gzip to stdout.
    #[arg(long)]
    to_backend: bool,
    /// With --to-backend: memory bytes per message, rounded down to 4K and
    /// kept under the relay's message limit.
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    chunk: u64,
    /// The dump's name in its messages [default: from the time and the
    /// pid]; with --reassemble, the dump to rebuild [default: the first].
    #[arg(long, value_parser = parse_dump_id)]
    dump_id: Option<String>,
    #[command(flatten)]
    backend: backend::BackendArgs,
    /// The tenant's side, no guest needed: rebuild a dump from `furnace
    /// backend`'s JSON lines on stdin, raw, to stdout, checking its SHA-256.
    #[arg(long, conflicts_with_all = ["to_backend", "facilities"])]
    reassemble: bool,
}

/// Bytes per read: well under the protocol's 4 MiB frame.
const CHUNK: usize = 1 << 20;
/// Room in a backend message for the chunk header.
const HEADER_ROOM: u64 = 4096;
const PAGE: u64 = 4096;

fn parse_dump_id(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 256 {
        return Err("a dump id has 1 to 256 bytes".into());
    }
    Ok(text.to_owned())
}

/// Bytes of memory per backend message: as asked, page-aligned when it is
/// a page or more, and with its header within the relay's message limit.
fn chunk_size(asked: u64, max_message_bytes: u64) -> Result<u64, String> {
    if asked == 0 {
        return Err("--chunk 0: a chunk holds at least one byte".into());
    }
    let room = max_message_bytes.saturating_sub(HEADER_ROOM);
    let chunk = asked.min(room);
    let chunk = if chunk >= PAGE {
        chunk / PAGE * PAGE
    } else {
        chunk
    };
    if chunk == 0 {
        return Err(format!(
            "the relay takes messages of at most {max_message_bytes} bytes: no room for a chunk"
        ));
    }
    Ok(chunk)
}

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
    let to = args.backend.socket(args.to_backend);
    let stdout = std::io::stdout();
    if to.is_none() && stdout.is_terminal() {
        return Err("stdout is a terminal; redirect the dump to a file (… > memory.gz)".into());
    }
    let vmi = Vmi::connect(&args.socket).map_err(|e| format!("{}: {e}", args.socket.display()))?;
    let memory_size = vmi
        .info()
        .map_err(|e| format!("guest info: {e}"))?
        .memory_size;
    let (start, length) = range(args.start, args.length, memory_size)?;
    if let Some(socket) = to {
        return dump_to_backend(args, &vmi, &socket, start, length);
    }
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
        mib_per_second(length, seconds)
    ))
}

/// The default dump id: unique enough per guest and run.
fn default_dump_id() -> String {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}-{}", since.as_nanos(), std::process::id())
}

fn mib_per_second(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9)
}

/// Streams [start, start+length) to the backend (chunks.rs has the format).
fn dump_to_backend(
    args: &Args,
    vmi: &Vmi,
    socket: &std::path::Path,
    start: u64,
    length: u64,
) -> Result<String, String> {
    let fac = args.backend.connect(socket)?;
    let status = fac.relay_status().ok_or("the relay sent no status")?;
    let chunk = chunk_size(args.chunk, status.max_message_bytes)?;
    let chunks = chunks::chunk_count(length, chunk);
    let dump = args.dump_id.clone().unwrap_or_else(default_dump_id);
    let patience = args.backend.flush_timeout();
    let began = Instant::now();
    let mut refused = 0;
    let begin = Header::Begin {
        dump: dump.clone(),
        start,
        length,
        chunk,
        chunks,
    };
    refused += backend::notify_patiently(&fac, &chunks::encode(&begin, &[]), patience)
        .map_err(|e| format!("dump {dump}, the begin message: {e}"))?;
    let streamed = (|| {
        let mut hash = Sha256::new();
        let mut message = Vec::with_capacity(chunk as usize + HEADER_ROOM as usize);
        for seq in 0..chunks {
            let offset = seq * chunk;
            let n = chunk.min(length - offset);
            let header = Header::Chunk {
                dump: dump.clone(),
                seq,
                chunks,
                offset,
                address: start + offset,
                length: n,
            };
            message.clear();
            message.extend_from_slice(&chunks::encode_header(&header));
            let body = message.len();
            message.resize(body + n as usize, 0);
            for (i, piece) in message[body..].chunks_mut(CHUNK).enumerate() {
                let address = start + offset + (i * CHUNK) as u64;
                vmi.read_physical_into(address, piece)
                    .map_err(|e| format!("reading {} bytes at {address:#x}: {e}", piece.len()))?;
            }
            hash.update(&message[body..]);
            refused += backend::notify_patiently(&fac, &message, patience)
                .map_err(|e| format!("chunk {seq} of {chunks}: {e}"))?;
        }
        let sha256 = hex::encode(hash.finalize());
        let end = Header::End {
            dump: dump.clone(),
            chunks,
            length,
            sha256: sha256.clone(),
        };
        refused += backend::notify_patiently(&fac, &chunks::encode(&end, &[]), patience)
            .map_err(|e| format!("the end message: {e}"))?;
        fac.flush(patience).map_err(|e| match e.code {
            ErrorCode::DeadlineExceeded => format!(
                "the backend did not confirm the dump within {}s: {e}",
                patience.as_secs()
            ),
            _ => format!("waiting for the backend to confirm the dump: {e}"),
        })?;
        Ok::<_, String>(sha256)
    })();
    let sha256 = match streamed {
        Ok(sha256) => sha256,
        Err(e) => {
            // Best effort: tell the backend not to wait for the rest.
            let abort = Header::Abort {
                dump: dump.clone(),
                error: e.clone(),
            };
            if fac.notify(&chunks::encode(&abort, &[])).is_ok() {
                let _ = fac.flush(patience.min(Duration::from_secs(5)));
            }
            return Err(format!("dump {dump}: {e}"));
        }
    };
    let seconds = began.elapsed().as_secs_f64();
    Ok(format!(
        "{start:#x}..{:#x}: {length} bytes in, {chunks} chunk(s) of up to {chunk} bytes to the backend as dump {dump}, \
         sha256 {sha256}, {seconds:.2} s ({:.0} MiB/s), {refused} wait(s) for the relay's limits",
        start + length,
        mib_per_second(length, seconds)
    ))
}

/// One message out of a line `furnace backend` printed, if it is one.
fn backend_line_data(line: &str) -> Result<Option<Vec<u8>>, String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
        return Ok(None);
    };
    if let Some(text) = value.get("data").and_then(|d| d.as_str()) {
        return Ok(Some(text.as_bytes().to_vec()));
    }
    match value.get("data_base64").and_then(|d| d.as_str()) {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Some)
            .map_err(|e| format!("a data_base64 that is not base64: {e}")),
        None => Ok(None),
    }
}

/// `--reassemble`: `furnace backend`'s lines on stdin, the dump on stdout.
fn reassemble(args: &Args) -> Result<String, String> {
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        return Err("stdout is a terminal; redirect the dump to a file (… > memory.bin)".into());
    }
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut r = Reassembler::new(args.dump_id.clone());
    for (number, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        let Some(message) =
            backend_line_data(&line).map_err(|e| format!("line {}: {e}", number + 1))?
        else {
            continue;
        };
        if let Step::Done(f) = r.take(&message, &mut out)? {
            out.flush().map_err(|e| format!("writing the dump: {e}"))?;
            return Ok(format!(
                "dump {}: {:#x}..{:#x}, {} bytes in {} chunks, sha256 {} checked",
                f.dump,
                f.start,
                f.start + f.length,
                f.length,
                f.chunks,
                f.sha256
            ));
        }
    }
    match r.progress() {
        Some((got, of)) => Err(format!(
            "stdin ended after {got} of {of} chunks, before the dump's end"
        )),
        None => Err("no dump began on stdin".into()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let run = if args.reassemble { reassemble } else { dump };
    match run(&args) {
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

    #[test]
    fn a_chunk_fits_the_relays_message_limit_with_its_header_and_is_page_aligned() {
        assert_eq!(chunk_size(1 << 20, 16 << 20), Ok(1 << 20));
        assert_eq!(chunk_size(16 << 20, 16 << 20), Ok((16 << 20) - 4096));
        assert_eq!(chunk_size(1_000_000, 16 << 20), Ok(999_424));
        assert_eq!(chunk_size(100, 16 << 20), Ok(100));
        assert_eq!(chunk_size(1 << 20, 10_000), Ok(4096));
        assert!(chunk_size(1 << 20, 4096).is_err());
        assert!(chunk_size(0, 16 << 20).is_err());
    }

    #[test]
    fn backend_lines_give_text_and_base64_data_and_skip_the_rest() {
        assert_eq!(
            backend_line_data(r#"{"app":"a","type":"notify","data":"{\"x\":1}"}"#),
            Ok(Some(br#"{"x":1}"#.to_vec()))
        );
        assert_eq!(
            backend_line_data(r#"{"app":"a","type":"notify","data_base64":"AP8K"}"#),
            Ok(Some(vec![0, 0xff, b'\n']))
        );
        assert_eq!(backend_line_data("furnace backend: listening"), Ok(None));
        assert!(backend_line_data(r#"{"data_base64":"!"}"#).is_err());
    }
}
