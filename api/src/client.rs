//! The Rust SDK: typed calls to the guest's sidecar over the app's socket,
//! and a batch builder whose calls can take arguments from earlier results.
//!
//! ```no_run
//! let vmi = furnace_api::Vmi::connect_default()?;
//! for p in vmi.processes()? {
//!     println!("{} {}", p.pid, p.name);
//! }
//! # Ok::<(), furnace_api::ApiError>(())
//! ```

use crate::error::ApiError;
use crate::ttrpc::{Request, Response};
use crate::v1::{self, ErrorCode};
use crate::wire::{self, TYPE_REQUEST, TYPE_RESPONSE};
use crate::VMI_SERVICE;
use prost::Message;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

pub type Result<T> = std::result::Result<T, ApiError>;

/// Where the runtime mounts the app's socket inside its container.
pub const DEFAULT_SOCKET: &str = "/run/furnace/vmi.sock";
/// How long a call may take before the client gives up on the sidecar.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client polls for a reply before it sleeps in `read`. Most
/// replies come back within this window; polling saves the cross-CPU wake-up
/// a blocking read costs (about 4 µs each way on this project's test hosts).
const REPLY_SPIN: Duration = Duration::from_micros(30);

/// Polls, bounded by [`REPLY_SPIN`], until the reply's first byte is readable.
fn wait_for_reply(stream: &UnixStream) {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + REPLY_SPIN;
    let mut byte = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    while std::time::Instant::now() < deadline {
        match recv(stream.as_raw_fd(), &mut byte, flags) {
            Err(nix::errno::Errno::EAGAIN) => std::hint::spin_loop(),
            // Data, end of stream or an error: the blocking read reports it.
            _ => return,
        }
    }
}

fn undecodable(method: &str, e: prost::DecodeError) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("undecodable {method} reply: {e}"),
    )
}

fn unavailable(context: &str, e: std::io::Error) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, format!("{context}: {e}"))
}

/// One connection; calls on it are sequential.
struct Connection {
    stream: UnixStream,
    next_stream_id: u32,
    buf: Vec<u8>,
    /// Set by a framing error or a timeout mid-reply, after which the
    /// stream's position is unknown: the connection is closed, and every
    /// later call fails with UNAVAILABLE instead of reading stale bytes.
    broken: Option<String>,
}

impl Connection {
    fn open(path: &Path, timeout: Duration) -> Result<Self> {
        let stream = crate::unix_socket::connect(path).map_err(|e| {
            unavailable(
                &format!("connecting to the sidecar at {}", path.display()),
                e,
            )
        })?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| unavailable("setting socket timeouts", e))?;
        Ok(Connection {
            stream,
            next_stream_id: 1,
            buf: Vec::new(),
            broken: None,
        })
    }

    /// Sends one request and returns the reply's payload, borrowed from the
    /// connection's buffer until the next call.
    fn call(&mut self, service: &str, method: &str, payload: Vec<u8>) -> Result<&[u8]> {
        if let Some(why) = &self.broken {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("this connection was closed after {why}; connect again"),
            ));
        }
        let outcome = self.exchange(service, method, payload);
        if let Err(e) = &outcome {
            if matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal) {
                let _ = self.stream.shutdown(std::net::Shutdown::Both);
                self.broken = Some(format!("a failed exchange ({})", e.message));
            }
        }
        // Re-borrow: the payload lives in `self.buf`.
        outcome.map(|range| &self.buf[range])
    }

    /// One request and its reply; the reply's payload is `self.buf[range]`.
    fn exchange(
        &mut self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
    ) -> Result<std::ops::Range<usize>> {
        let stream_id = self.next_stream_id;
        self.next_stream_id = self.next_stream_id.wrapping_add(2);
        let request = Request {
            service: service.into(),
            method: method.into(),
            payload,
            ..Default::default()
        };
        wire::write_frame(
            &mut self.stream,
            stream_id,
            TYPE_REQUEST,
            &request.encode_to_vec(),
        )
        .map_err(|e| unavailable("sending to the sidecar", e))?;
        wait_for_reply(&self.stream);
        let header = wire::read_header(&mut self.stream)
            .map_err(|e| unavailable("reading the sidecar's reply", e))?
            .ok_or_else(|| {
                ApiError::new(ErrorCode::Unavailable, "the sidecar closed the connection")
            })?;
        if header.kind != TYPE_RESPONSE
            || header.stream_id != stream_id
            || header.length > wire::MAX_PAYLOAD
        {
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("unexpected frame from the sidecar: {header:?} (waiting for stream {stream_id})"),
            ));
        }
        let reply = wire::read_payload(&mut self.stream, header.length, &mut self.buf)
            .map_err(|e| unavailable("reading the sidecar's reply", e))?;
        if let Some(payload) = ok_payload(reply) {
            // `reply` is `buf[..length]` and the payload its tail.
            return Ok(reply.len() - payload.len()..reply.len());
        }
        let response = Response::decode(reply)
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("undecodable reply: {e}")))?;
        match response.status {
            Some(status) if status.code != wire::code::OK => Err(ApiError::from_status(&status)),
            _ => Err(ApiError::new(
                ErrorCode::Internal,
                "a reply with neither payload nor failure status",
            )),
        }
    }
}

/// The payload of a successful `ttrpc.Response` (no status, field 2 only),
/// sliced out without copying; `None` for anything else.
fn ok_payload(response: &[u8]) -> Option<&[u8]> {
    if response.is_empty() {
        return Some(response);
    }
    length_delimited(response, 0x12)
}

/// The contents of `buf` when it is exactly one length-delimited field with `tag`.
fn length_delimited(buf: &[u8], tag: u8) -> Option<&[u8]> {
    let (&first, mut rest) = buf.split_first()?;
    if first != tag {
        return None;
    }
    let len = prost::encoding::decode_varint(&mut rest).ok()?;
    (rest.len() as u64 == len).then_some(rest)
}

/// A client of one ttrpc service on one socket.
pub(crate) struct ServiceClient {
    service: &'static str,
    connection: Mutex<Connection>,
}

impl ServiceClient {
    pub(crate) fn connect(service: &'static str, path: &Path, timeout: Duration) -> Result<Self> {
        Ok(ServiceClient {
            service,
            connection: Mutex::new(Connection::open(path, timeout)?),
        })
    }

    pub(crate) fn call<Q: Message, A: Message + Default>(
        &self,
        method: &str,
        request: &Q,
    ) -> Result<A> {
        self.call_with(method, request, |payload| {
            A::decode(payload).map_err(|e| undecodable(method, e))
        })
    }

    /// Calls `method` and hands the raw reply payload to `read`.
    fn call_with<Q: Message, T>(
        &self,
        method: &str,
        request: &Q,
        read: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let mut connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        read(connection.call(self.service, method, request.encode_to_vec())?)
    }

    /// Calls a method whose reply is `furnace.vmi.v1.Bytes`, handing `read`
    /// the data in place.
    fn call_bytes<Q: Message, T>(
        &self,
        method: &str,
        request: &Q,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        self.call_with(method, request, |payload| {
            if payload.is_empty() {
                return Ok(read(&[]));
            }
            match length_delimited(payload, 0x0a) {
                Some(data) => Ok(read(data)),
                None => Ok(read(
                    &v1::Bytes::decode(payload)
                        .map_err(|e| undecodable(method, e))?
                        .data,
                )),
            }
        })
    }
}

/// A tenant app's view of its guest.
pub use crate::batch::{Batch, BatchResults, CallRef};

pub struct Vmi {
    pub(crate) client: ServiceClient,
}

pub(crate) fn kernel() -> Option<v1::AddressSpace> {
    None
}

pub(crate) fn process(pid: u32) -> Option<v1::AddressSpace> {
    Some(v1::AddressSpace { pid })
}

impl Vmi {
    /// Connects to `/run/furnace/vmi.sock`, where the runtime mounts the app's socket.
    pub fn connect_default() -> Result<Self> {
        Self::connect(Path::new(DEFAULT_SOCKET))
    }

    pub fn connect(path: &Path) -> Result<Self> {
        Self::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    pub fn connect_with_timeout(path: &Path, timeout: Duration) -> Result<Self> {
        Ok(Vmi {
            client: ServiceClient::connect(VMI_SERVICE, path, timeout)?,
        })
    }

    pub fn read_physical(&self, address: u64, size: u64) -> Result<Vec<u8>> {
        let request = v1::ReadPhysicalRequest { address, size };
        self.client
            .call_bytes("ReadPhysical", &request, <[u8]>::to_vec)
    }

    /// Fills `buf` from guest-physical `address`: for bulk reads, with no
    /// allocation per call.
    pub fn read_physical_into(&self, address: u64, buf: &mut [u8]) -> Result<()> {
        let request = v1::ReadPhysicalRequest {
            address,
            size: buf.len() as u64,
        };
        let whole = self.client.call_bytes("ReadPhysical", &request, |data| {
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            data.len() == buf.len()
        })?;
        match whole {
            true => Ok(()),
            false => Err(ApiError::new(
                ErrorCode::Internal,
                "the sidecar returned another size than asked for",
            )),
        }
    }

    pub fn write_physical(&self, address: u64, data: &[u8]) -> Result<()> {
        self.client.call::<_, v1::Empty>(
            "WritePhysical",
            &v1::WritePhysicalRequest {
                address,
                data: data.to_vec(),
            },
        )?;
        Ok(())
    }

    /// Reads kernel virtual memory (`pid` 0) or process `pid`'s.
    pub fn read_virtual(&self, pid: u32, address: u64, size: u64) -> Result<Vec<u8>> {
        let space = if pid == 0 { kernel() } else { process(pid) };
        let request = v1::ReadVirtualRequest {
            address,
            size,
            space,
        };
        self.client
            .call_bytes("ReadVirtual", &request, <[u8]>::to_vec)
    }

    pub fn write_virtual(&self, pid: u32, address: u64, data: &[u8]) -> Result<()> {
        let space = if pid == 0 { kernel() } else { process(pid) };
        let request = v1::WriteVirtualRequest {
            address,
            data: data.to_vec(),
            space,
        };
        self.client.call::<_, v1::Empty>("WriteVirtual", &request)?;
        Ok(())
    }

    pub fn read_symbol(&self, symbol: &str, offset: u64, size: u64) -> Result<Vec<u8>> {
        let request = v1::ReadSymbolRequest {
            symbol: symbol.into(),
            offset,
            size,
        };
        self.client
            .call_bytes("ReadSymbol", &request, <[u8]>::to_vec)
    }

    /// Reads a little-endian integer of `width` (1, 2, 4 or 8) bytes.
    pub fn read_integer(&self, pid: u32, address: u64, width: u32) -> Result<u64> {
        let space = if pid == 0 { kernel() } else { process(pid) };
        let reply: v1::Integer = self.client.call(
            "ReadInteger",
            &v1::ReadIntegerRequest {
                address,
                width,
                space,
            },
        )?;
        Ok(reply.value)
    }

    pub fn read_u64(&self, pid: u32, address: u64) -> Result<u64> {
        self.read_integer(pid, address, 8)
    }

    pub fn read_u32(&self, pid: u32, address: u64) -> Result<u32> {
        Ok(self.read_integer(pid, address, 4)? as u32)
    }

    pub fn read_string(&self, pid: u32, address: u64, max_length: u64) -> Result<String> {
        let space = if pid == 0 { kernel() } else { process(pid) };
        let reply: v1::Text = self.client.call(
            "ReadString",
            &v1::ReadStringRequest {
                address,
                max_length,
                space,
            },
        )?;
        Ok(reply.value)
    }

    /// Kernel virtual to physical (kv2p).
    pub fn translate_kernel(&self, address: u64) -> Result<v1::Translation> {
        self.client
            .call("TranslateKernel", &v1::TranslateKernelRequest { address })
    }

    /// User virtual to physical in process `pid` (uv2p).
    pub fn translate_user(&self, pid: u32, address: u64) -> Result<v1::Translation> {
        self.client
            .call("TranslateUser", &v1::TranslateUserRequest { pid, address })
    }

    /// Run-time address of a kernel symbol (ksym2v).
    pub fn symbol_address(&self, name: &str) -> Result<u64> {
        Ok(self
            .client
            .call::<_, v1::Symbol>("SymbolAddress", &v1::SymbolRequest { name: name.into() })?
            .address)
    }

    pub fn member_offset(&self, structure: &str, member: &str) -> Result<u64> {
        let request = v1::MemberOffsetRequest {
            structure: structure.into(),
            member: member.into(),
        };
        Ok(self
            .client
            .call::<_, v1::Integer>("MemberOffset", &request)?
            .value)
    }

    pub fn info(&self) -> Result<v1::GuestInfo> {
        self.client.call("GetInfo", &v1::Empty {})
    }

    pub fn registers(&self, vcpu: u32) -> Result<v1::Registers> {
        self.client
            .call("GetRegisters", &v1::RegistersRequest { vcpu })
    }

    /// Pauses the guest for at most `lease` (the sidecar may grant less); the
    /// guest runs again on [`Vmi::resume`], on expiry, or when this connection closes.
    pub fn pause(&self, lease: Duration) -> Result<v1::Lease> {
        let lease_ms = u32::try_from(lease.as_millis()).unwrap_or(u32::MAX);
        self.client.call("Pause", &v1::PauseRequest { lease_ms })
    }

    pub fn resume(&self, lease: &v1::Lease) -> Result<()> {
        self.client
            .call::<_, v1::Empty>("Resume", &v1::ResumeRequest { lease_id: lease.id })?;
        Ok(())
    }

    /// Every process on the guest's task list; LIMIT_EXCEEDED when the
    /// sidecar could not walk the list round to its head.
    pub fn processes(&self) -> Result<Vec<v1::Process>> {
        let list = self.process_walk()?;
        if list.incomplete.is_empty() {
            return Ok(list.processes);
        }
        Err(ApiError::new(
            ErrorCode::LimitExceeded,
            format!(
                "the process list is incomplete ({} listed): {}; process_walk() returns the partial list",
                list.processes.len(),
                list.incomplete
            ),
        ))
    }

    /// The task list as far as the sidecar could walk it: `incomplete` says
    /// why it stopped early, if it did, and `processes` holds those before.
    pub fn process_walk(&self) -> Result<v1::ProcessList> {
        self.client
            .call::<_, v1::ProcessList>("ListProcesses", &v1::Empty {})
    }

    pub fn modules(&self) -> Result<Vec<v1::Module>> {
        Ok(self
            .client
            .call::<_, v1::ModuleList>("ListModules", &v1::Empty {})?
            .modules)
    }

    /// Runs every call of `batch` in one round trip.
    pub fn batch(&self, batch: &Batch) -> Result<BatchResults> {
        let reply: v1::BatchResponse = self.client.call(
            "Batch",
            &v1::BatchRequest {
                calls: batch.calls().to_vec(),
            },
        )?;
        Ok(BatchResults {
            results: reply.results,
            error: reply.error.as_ref().map(ApiError::from),
        })
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
