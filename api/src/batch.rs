//! Batches: many VMI calls in one round trip, linked by earlier results.

use crate::client::{kernel, process};
use crate::error::ApiError;
use crate::v1::{self, call::Op, LinkOp, LinkTarget};

/// A call's place in a [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRef(pub u32);

/// Calls to run in one round trip. A call may take its address or pid from
/// the integer result of an earlier call, so a list walk is one message.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    calls: Vec<v1::Call>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    pub fn push(&mut self, op: Op) -> CallRef {
        self.calls.push(v1::Call {
            op: Some(op),
            links: Vec::new(),
        });
        CallRef(self.calls.len() as u32 - 1)
    }

    /// Before `call` runs, combine its `target` argument with `source`'s result.
    pub fn link(
        &mut self,
        call: CallRef,
        source: CallRef,
        target: LinkTarget,
        op: LinkOp,
    ) -> CallRef {
        if let Some(c) = self.calls.get_mut(call.0 as usize) {
            c.links.push(v1::Link {
                source: source.0,
                target: target as i32,
                op: op as i32,
            });
        }
        call
    }

    /// `address = offset + source's result` (field of a struct a pointer points to).
    pub fn add_address(&mut self, call: CallRef, source: CallRef) -> CallRef {
        self.link(call, source, LinkTarget::Address, LinkOp::Add)
    }

    pub fn read_integer(&mut self, pid: u32, address: u64, width: u32) -> CallRef {
        let space = if pid == 0 { kernel() } else { process(pid) };
        self.push(Op::ReadInteger(v1::ReadIntegerRequest {
            address,
            width,
            space,
        }))
    }

    pub fn read_string(&mut self, pid: u32, address: u64, max_length: u64) -> CallRef {
        let space = if pid == 0 { kernel() } else { process(pid) };
        self.push(Op::ReadString(v1::ReadStringRequest {
            address,
            max_length,
            space,
        }))
    }

    pub fn read_virtual(&mut self, pid: u32, address: u64, size: u64) -> CallRef {
        let space = if pid == 0 { kernel() } else { process(pid) };
        self.push(Op::ReadVirtual(v1::ReadVirtualRequest {
            address,
            size,
            space,
        }))
    }

    pub fn read_physical(&mut self, address: u64, size: u64) -> CallRef {
        self.push(Op::ReadPhysical(v1::ReadPhysicalRequest { address, size }))
    }

    pub fn symbol_address(&mut self, name: &str) -> CallRef {
        self.push(Op::SymbolAddress(v1::SymbolRequest { name: name.into() }))
    }

    pub fn translate_kernel(&mut self, address: u64) -> CallRef {
        self.push(Op::TranslateKernel(v1::TranslateKernelRequest { address }))
    }

    pub fn calls(&self) -> &[v1::Call] {
        &self.calls
    }
}

/// What a batch returned: a result per call that ran, and the error that
/// stopped it, if one did.
#[derive(Debug, Clone)]
pub struct BatchResults {
    pub results: Vec<v1::CallResult>,
    pub error: Option<ApiError>,
}

impl BatchResults {
    fn value(&self, call: CallRef) -> Option<&v1::call_result::Value> {
        self.results.get(call.0 as usize)?.value.as_ref()
    }

    pub fn integer(&self, call: CallRef) -> Option<u64> {
        match self.value(call)? {
            v1::call_result::Value::Integer(v) => Some(*v),
            v1::call_result::Value::Symbol(s) => Some(s.address),
            v1::call_result::Value::Translation(t) => Some(t.physical_address),
            _ => None,
        }
    }

    pub fn text(&self, call: CallRef) -> Option<&str> {
        match self.value(call)? {
            v1::call_result::Value::Text(t) => Some(t),
            _ => None,
        }
    }

    pub fn data(&self, call: CallRef) -> Option<&[u8]> {
        match self.value(call)? {
            v1::call_result::Value::Data(d) => Some(d),
            _ => None,
        }
    }
}
