//! The calls an app can make, executed against the guest. Unary RPCs and
//! batch entries share this one implementation.

use crate::error::VmiError;
use crate::linux::LinuxKernel;
use furnace_api::v1::{
    call::Op, call_result::Value, AddressSpace, CallResult, Symbol, Translation,
};
use furnace_api::{ApiError, ErrorCode};
use furnace_config::SidecarConfig;

pub type OpResult<T> = std::result::Result<T, ApiError>;

impl From<VmiError> for ApiError {
    fn from(e: VmiError) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

/// Runs one batchable call.
pub fn execute(kernel: &LinuxKernel, limits: &SidecarConfig, op: &Op) -> OpResult<CallResult> {
    let value = match op {
        Op::ReadPhysical(r) => {
            let mut buf = sized_buffer(limits, r.size)?;
            kernel.driver().read_physical(r.address, &mut buf)?;
            Value::Data(buf)
        }
        Op::ReadVirtual(r) => {
            let mut buf = sized_buffer(limits, r.size)?;
            kernel.read_virtual(dtb(kernel, r.space.as_ref())?, r.address, &mut buf)?;
            Value::Data(buf)
        }
        Op::ReadSymbol(r) => {
            let mut buf = sized_buffer(limits, r.size)?;
            let address = kernel.symbol_address(&r.symbol)?.wrapping_add(r.offset);
            kernel.read_kernel(address, &mut buf)?;
            Value::Data(buf)
        }
        Op::ReadInteger(r) => {
            if !matches!(r.width, 1 | 2 | 4 | 8) {
                return Err(invalid(format!(
                    "integer width {} is not 1, 2, 4 or 8",
                    r.width
                )));
            }
            let mut bytes = [0u8; 8];
            kernel.read_virtual(
                dtb(kernel, r.space.as_ref())?,
                r.address,
                &mut bytes[..r.width as usize],
            )?;
            Value::Integer(u64::from_le_bytes(bytes))
        }
        Op::ReadString(r) => {
            let max = sized_buffer(limits, r.max_length)?.len();
            Value::Text(kernel.read_cstring(dtb(kernel, r.space.as_ref())?, r.address, max)?)
        }
        Op::TranslateKernel(r) => Value::Translation(translation(
            r.address,
            kernel.kernel_to_physical(r.address)?,
        )),
        Op::TranslateUser(r) => Value::Translation(translation(
            r.address,
            kernel.user_to_physical(r.pid, r.address)?,
        )),
        Op::SymbolAddress(r) => Value::Symbol(Symbol {
            name: r.name.clone(),
            address: kernel.symbol_address(&r.name)?,
        }),
        Op::MemberOffset(r) => {
            Value::Integer(kernel.profile().member_offset(&r.structure, &r.member)?)
        }
    };
    Ok(CallResult { value: Some(value) })
}

/// A zeroed buffer of `size` bytes, refused before allocating when over the limit.
fn sized_buffer(limits: &SidecarConfig, size: u64) -> OpResult<Vec<u8>> {
    check_read_size(limits, size)?;
    Ok(vec![0u8; size as usize])
}

/// Refuses a read over the per-call limit, before anything is allocated.
pub fn check_read_size(limits: &SidecarConfig, size: u64) -> OpResult<()> {
    if size > limits.max_read_bytes {
        return Err(ApiError::new(
            ErrorCode::LimitExceeded,
            format!(
                "a read of {size} bytes exceeds the limit of {} per call",
                limits.max_read_bytes
            ),
        ));
    }
    Ok(())
}

pub fn dtb(kernel: &LinuxKernel, space: Option<&AddressSpace>) -> OpResult<u64> {
    match space.map_or(0, |s| s.pid) {
        0 => Ok(kernel.kernel_dtb()),
        pid => Ok(kernel.process_dtb(pid)?),
    }
}

fn translation(address: u64, t: crate::arch::amd64::Translation) -> Translation {
    Translation {
        virtual_address: address,
        physical_address: t.physical,
        page_size: t.page_size,
    }
}

pub fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, message)
}
