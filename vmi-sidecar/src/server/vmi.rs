//! The VMI service: decode, check the app's permission, run, encode.

use super::apps::App;
use super::events::{registers_message, Owner};
use super::lease::Holder;
use super::ops::{check_read_size, execute, invalid, Dtbs, OpResult};
use super::reply::Reply;
use super::{batch, Sidecar};
use furnace_api::v1::{self, call::Op, call_result::Value, Permission};
use furnace_api::{ApiError, ErrorCode};
use prost::Message;
use std::time::Duration;

fn decode<M: Message + Default>(payload: &[u8]) -> OpResult<M> {
    M::decode(payload)
        .map_err(|e| invalid(format!("undecodable {}: {e}", std::any::type_name::<M>())))
}

impl Sidecar {
    pub(super) fn handle_vmi(
        &self,
        app: &App,
        connection: u64,
        method: &str,
        payload: &[u8],
        reply: &mut Reply,
    ) -> OpResult<()> {
        if self.guest_gone() {
            return Err(ApiError::new(
                ErrorCode::GuestGone,
                format!("guest {} is gone: its QEMU exited", self.guest),
            ));
        }
        if !matches!(method, "ReadPhysical" | "ReadVirtual" | "ReadSymbol") {
            let message = self.handle_vmi_message(app, connection, method, payload)?;
            reply.encoded(&message);
            return Ok(());
        }
        if !app.has(Permission::Read) {
            return Err(not_permitted(method, Permission::Read));
        }
        // Reads go straight from guest memory into the reply frame.
        match method {
            "ReadPhysical" => {
                let r: v1::ReadPhysicalRequest = decode(payload)?;
                check_read_size(&self.limits, r.size)?;
                let driver = self.kernel.driver();
                Ok(
                    reply
                        .bytes_with(r.size as usize, |out| driver.read_physical(r.address, out))?,
                )
            }
            "ReadVirtual" => {
                let r: v1::ReadVirtualRequest = decode(payload)?;
                check_read_size(&self.limits, r.size)?;
                let dtb = Dtbs::default().of(&self.kernel, r.space.as_ref())?;
                Ok(reply.bytes_with(r.size as usize, |out| {
                    self.kernel.read_virtual(dtb, r.address, out)
                })?)
            }
            _ => {
                let r: v1::ReadSymbolRequest = decode(payload)?;
                check_read_size(&self.limits, r.size)?;
                let address = self
                    .kernel
                    .symbol_address(&r.symbol)?
                    .wrapping_add(r.offset);
                Ok(reply
                    .bytes_with(r.size as usize, |out| self.kernel.read_kernel(address, out))?)
            }
        }
    }

    fn handle_vmi_message(
        &self,
        app: &App,
        connection: u64,
        method: &str,
        payload: &[u8],
    ) -> OpResult<Vec<u8>> {
        let need = |permission: Permission| -> OpResult<()> {
            if app.has(permission) {
                Ok(())
            } else {
                Err(not_permitted(method, permission))
            }
        };
        let unary = |op: Op| -> OpResult<Vec<u8>> {
            need(Permission::Read)?;
            Ok(encode_value(
                execute(&self.kernel, &self.limits, &mut Dtbs::default(), &op)?.value,
            ))
        };
        match method {
            "ReadInteger" => unary(Op::ReadInteger(decode(payload)?)),
            "ReadString" => unary(Op::ReadString(decode(payload)?)),
            "TranslateKernel" => unary(Op::TranslateKernel(decode(payload)?)),
            "TranslateUser" => unary(Op::TranslateUser(decode(payload)?)),
            "SymbolAddress" => unary(Op::SymbolAddress(decode(payload)?)),
            "MemberOffset" => unary(Op::MemberOffset(decode(payload)?)),
            "WritePhysical" => {
                need(Permission::Write)?;
                let r: v1::WritePhysicalRequest = decode(payload)?;
                self.check_write_size(r.data.len())?;
                self.kernel.driver().write_physical(r.address, &r.data)?;
                Ok(v1::Empty {}.encode_to_vec())
            }
            "WriteVirtual" => {
                need(Permission::Write)?;
                let r: v1::WriteVirtualRequest = decode(payload)?;
                self.check_write_size(r.data.len())?;
                let dtb = Dtbs::default().of(&self.kernel, r.space.as_ref())?;
                self.write_virtual(dtb, r.address, &r.data)?;
                Ok(v1::Empty {}.encode_to_vec())
            }
            "GetInfo" => {
                need(Permission::Read)?;
                Ok(self.info()?.encode_to_vec())
            }
            "GetRegisters" => {
                need(Permission::Read)?;
                let r: v1::RegistersRequest = decode(payload)?;
                let registers = self
                    .kernel
                    .driver()
                    .vcpu_registers()
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::Unsupported,
                            "this guest's driver has no vCPU registers",
                        )
                    })?
                    .registers(r.vcpu)?;
                Ok(registers_message(&registers).encode_to_vec())
            }
            "Pause" => {
                need(Permission::Pause)?;
                let r: v1::PauseRequest = decode(payload)?;
                if r.lease_ms == 0 {
                    return Err(invalid("a pause lease must last at least 1 ms"));
                }
                let granted = r.lease_ms.min(self.limits.max_pause_ms);
                let holder = Holder {
                    app: app.id.clone(),
                    connection,
                };
                let (id, granted) = self
                    .leases
                    .acquire(holder, Duration::from_millis(granted.into()))?;
                Ok(v1::Lease {
                    id,
                    granted_ms: granted.as_millis() as u32,
                }
                .encode_to_vec())
            }
            "Resume" => {
                need(Permission::Pause)?;
                let r: v1::ResumeRequest = decode(payload)?;
                self.leases.release(r.lease_id, &app.id)?;
                Ok(v1::Empty {}.encode_to_vec())
            }
            "ListProcesses" => {
                need(Permission::Read)?;
                let mut walk = self.kernel.process_walk()?;
                fit_in_one_reply(&mut walk);
                if let Some(reason) = &walk.incomplete {
                    tracing::warn!(app = %app.id, %reason, listed = walk.entries.len(), "a partial process list");
                }
                Ok(v1::ProcessList {
                    processes: walk.entries,
                    incomplete: walk.incomplete.unwrap_or_default(),
                }
                .encode_to_vec())
            }
            "ListModules" => {
                need(Permission::Read)?;
                Ok(v1::ModuleList {
                    modules: self.kernel.modules()?,
                }
                .encode_to_vec())
            }
            "Batch" => {
                need(Permission::Read)?;
                let r: v1::BatchRequest = decode(payload)?;
                batch::validate(&r.calls, &self.limits)?;
                Ok(batch::run(&self.kernel, &self.limits, &r.calls).encode_to_vec())
            }
            "Subscribe" => {
                let r: v1::SubscribeRequest = decode(payload)?;
                let spec = r.spec.ok_or_else(|| invalid("Subscribe needs a spec"))?;
                let owner = Owner {
                    app: app.id.clone(),
                    connection,
                };
                Ok(self
                    .events
                    .subscribe(owner, &app.granted(), &spec)?
                    .encode_to_vec())
            }
            "NextEvents" => {
                let r: v1::NextEventsRequest = decode(payload)?;
                Ok(self.events.next(&app.id, &r)?.encode_to_vec())
            }
            "Ack" => {
                let r: v1::AckRequest = decode(payload)?;
                self.events.ack(&app.id, &r.events)?;
                Ok(v1::Empty {}.encode_to_vec())
            }
            "Unsubscribe" => {
                let r: v1::UnsubscribeRequest = decode(payload)?;
                self.events.unsubscribe(&app.id, r.subscription)?;
                Ok(v1::Empty {}.encode_to_vec())
            }
            _ => Err(ApiError::new(
                ErrorCode::Unsupported,
                format!("no method /furnace.vmi.v1.Vmi/{method}"),
            )),
        }
    }

    fn check_write_size(&self, len: usize) -> OpResult<()> {
        if len as u64 > self.limits.max_read_bytes {
            return Err(ApiError::new(
                ErrorCode::LimitExceeded,
                format!("a write of {len} bytes exceeds the per-call limit"),
            ));
        }
        Ok(())
    }

    /// Writes page by page, translating each page first so nothing is written
    /// unless the whole range is mapped.
    fn write_virtual(&self, dtb: u64, address: u64, data: &[u8]) -> OpResult<()> {
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < data.len() {
            let at = address.wrapping_add(done as u64);
            let n = ((4096 - (at & 4095)) as usize).min(data.len() - done);
            pieces.push((self.kernel.translate(dtb, at)?.physical, done, n));
            done += n;
        }
        for (physical, from, n) in pieces {
            self.kernel
                .driver()
                .write_physical(physical, &data[from..from + n])?;
        }
        Ok(())
    }

    fn info(&self) -> OpResult<v1::GuestInfo> {
        let driver = self.kernel.driver();
        let vcpu_count = match driver.vcpu_registers() {
            Some(regs) => regs.vcpu_count()?,
            None => 0,
        };
        Ok(v1::GuestInfo {
            name: self.guest.clone(),
            id: driver.describe(),
            memory_size: driver.physical_size(),
            os_type: "linux".into(),
            page_mode: format!("{:?}", self.kernel.paging_mode()),
            vcpu_count,
            kernel_banner: self.kernel.banner()?,
            kaslr_offset: self.kernel.location().virtual_shift,
        })
    }
}

pub(super) fn not_permitted(method: &str, permission: Permission) -> ApiError {
    ApiError::new(
        ErrorCode::NotPermitted,
        format!(
            "{method} needs the `{}` permission, which this app was not granted",
            permission_name(permission)
        ),
    )
}

pub fn permission_name(p: Permission) -> &'static str {
    match p {
        Permission::Unspecified => "unspecified",
        Permission::Read => "read",
        Permission::Write => "write",
        Permission::Pause => "pause",
        Permission::Events => "events",
        Permission::Syscalls => "syscalls",
    }
}

/// The reply message of a unary call, from its result.
fn encode_value(value: Option<Value>) -> Vec<u8> {
    match value {
        Some(Value::Data(data)) => v1::Bytes { data }.encode_to_vec(),
        Some(Value::Integer(value)) => v1::Integer { value }.encode_to_vec(),
        Some(Value::Text(value)) => v1::Text { value }.encode_to_vec(),
        Some(Value::Translation(t)) => t.encode_to_vec(),
        Some(Value::Symbol(s)) => s.encode_to_vec(),
        None => Vec::new(),
    }
}

/// Cuts a process list that would not fit in one reply frame, saying so:
/// a guest can forge a task list longer than 4 MiB of replies.
fn fit_in_one_reply(walk: &mut crate::linux::Walk<v1::Process>) {
    // Room for the list's own framing and the `incomplete` text.
    let budget = super::connection::MAX_REPLY_PAYLOAD - 4096;
    let mut used = 0;
    let fits = walk
        .entries
        .iter()
        .take_while(|p| {
            used +=
                p.encoded_len() + 1 + prost::encoding::encoded_len_varint(p.encoded_len() as u64);
            used <= budget
        })
        .count();
    if fits < walk.entries.len() {
        walk.incomplete = Some(format!(
            "the list would not fit in one {} byte reply; the first {fits} of {} are listed",
            furnace_api::wire::MAX_PAYLOAD,
            walk.entries.len()
        ));
        walk.entries.truncate(fits);
    }
}
