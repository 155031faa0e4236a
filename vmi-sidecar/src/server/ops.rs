//! The calls an app can make, executed against the guest. Unary RPCs and
//! batch entries share this one implementation.

use crate::error::VmiError;
use crate::linux::{AddressSpaces, LinuxKernel};
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

/// Page-table roots for the calls of one request. The first call scoped to
/// a process walks the task list once; the rest of the request looks the
/// pid up in what that walk found, so a batch of pid-scoped calls costs one
/// walk, not one each. A process that exits mid-batch keeps its root until
/// the batch ends, as it would have between a walk and a read anyway.
#[derive(Default)]
pub struct Dtbs {
    walked: Option<OpResult<AddressSpaces>>,
}

impl Dtbs {
    /// The root of `space`: the kernel's for none or pid 0.
    pub fn of(&mut self, kernel: &LinuxKernel, space: Option<&AddressSpace>) -> OpResult<u64> {
        match space.map_or(0, |s| s.pid) {
            0 => Ok(kernel.kernel_dtb()),
            pid => self.of_pid(kernel, pid),
        }
    }

    pub fn of_pid(&mut self, kernel: &LinuxKernel, pid: u32) -> OpResult<u64> {
        let spaces = self
            .walked
            .get_or_insert_with(|| kernel.address_spaces().map_err(ApiError::from));
        match spaces {
            Ok(spaces) => Ok(spaces.dtb(pid)?),
            Err(e) => Err(e.clone()),
        }
    }
}

/// Runs one batchable call.
pub fn execute(
    kernel: &LinuxKernel,
    limits: &SidecarConfig,
    dtbs: &mut Dtbs,
    op: &Op,
) -> OpResult<CallResult> {
    let value = match op {
        Op::ReadPhysical(r) => {
            let mut buf = sized_buffer(limits, r.size)?;
            kernel.driver().read_physical(r.address, &mut buf)?;
            Value::Data(buf)
        }
        Op::ReadVirtual(r) => {
            let mut buf = sized_buffer(limits, r.size)?;
            kernel.read_virtual(dtbs.of(kernel, r.space.as_ref())?, r.address, &mut buf)?;
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
                dtbs.of(kernel, r.space.as_ref())?,
                r.address,
                &mut bytes[..r.width as usize],
            )?;
            Value::Integer(u64::from_le_bytes(bytes))
        }
        Op::ReadString(r) => {
            let max = sized_buffer(limits, r.max_length)?.len();
            Value::Text(kernel.read_cstring(dtbs.of(kernel, r.space.as_ref())?, r.address, max)?)
        }
        Op::TranslateKernel(r) => Value::Translation(translation(
            r.address,
            kernel.kernel_to_physical(r.address)?,
        )),
        Op::TranslateUser(r) => Value::Translation(translation(
            r.address,
            kernel.translate(dtbs.of_pid(kernel, r.pid)?, r.address)?,
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
