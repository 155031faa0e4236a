//! Linked batches: validated as a whole before anything runs, then executed in
//! order, each call's links applied from the results before it.

use super::ops::{execute, invalid, Dtbs, OpResult};
use crate::linux::LinuxKernel;
use furnace_api::v1::{
    call::Op, call_result::Value, BatchResponse, Call, CallResult, LinkOp, LinkTarget,
};
use furnace_api::{ApiError, ErrorCode};
use furnace_config::SidecarConfig;

/// The reply must fit in one frame; keep room for the envelope.
const RESULT_BUDGET: usize = furnace_api::wire::MAX_PAYLOAD as usize - (64 << 10);

/// Checks the whole batch: its length, and that every link points backwards,
/// at a call that yields an integer, and into an argument its call has.
pub fn validate(calls: &[Call], limits: &SidecarConfig) -> OpResult<()> {
    if calls.len() > limits.max_batch_calls {
        return Err(ApiError::new(
            ErrorCode::LimitExceeded,
            format!(
                "a batch of {} calls exceeds the limit of {}",
                calls.len(),
                limits.max_batch_calls
            ),
        ));
    }
    for (index, call) in calls.iter().enumerate() {
        let at = |message: String| ApiError {
            call_index: Some(index as u32),
            ..invalid(message)
        };
        let op = call
            .op
            .as_ref()
            .ok_or_else(|| at(format!("call {index} has no operation")))?;
        for link in &call.links {
            let source = link.source as usize;
            if source >= index {
                return Err(at(format!(
                    "call {index} links to call {source}; links may only point to earlier calls"
                )));
            }
            let source_op = calls[source]
                .op
                .as_ref()
                .ok_or_else(|| at(format!("call {source} has no operation")))?;
            if !yields_integer(source_op) {
                return Err(at(format!(
                    "call {index} links to call {source}, which does not yield an integer"
                )));
            }
            let target = LinkTarget::try_from(link.target)
                .map_err(|_| at(format!("call {index}: unknown link target {}", link.target)))?;
            if LinkOp::try_from(link.op).is_err() || link.op == LinkOp::Unspecified as i32 {
                return Err(at(format!(
                    "call {index}: unknown link operation {}",
                    link.op
                )));
            }
            let has = match target {
                LinkTarget::Address => address_of(op).is_some(),
                LinkTarget::Pid => has_pid(op),
                LinkTarget::Unspecified => false,
            };
            if !has {
                return Err(at(format!(
                    "call {index} has no {} argument to link",
                    target.as_str_name()
                )));
            }
        }
    }
    Ok(())
}

/// Runs a validated batch. The first failing call ends it.
pub fn run(kernel: &LinuxKernel, limits: &SidecarConfig, calls: &[Call]) -> BatchResponse {
    let mut results: Vec<CallResult> = Vec::with_capacity(calls.len());
    let mut integers: Vec<Option<u64>> = Vec::with_capacity(calls.len());
    let mut bytes = 0usize;
    let mut dtbs = Dtbs::default();
    for (index, call) in calls.iter().enumerate() {
        let mut op = call.op.clone().expect("validated");
        for link in &call.links {
            let value = integers[link.source as usize].expect("validated: sources yield integers");
            apply_link(&mut op, link.target, link.op, value);
        }
        let outcome = execute(kernel, limits, &mut dtbs, &op).and_then(|result| {
            bytes += result_size(&result);
            if bytes > RESULT_BUDGET {
                return Err(ApiError::new(
                    ErrorCode::LimitExceeded,
                    format!("the batch's results exceed {RESULT_BUDGET} bytes, the most one reply can carry"),
                ));
            }
            Ok(result)
        });
        match outcome {
            Ok(result) => {
                integers.push(integer_of(&result));
                results.push(result);
            }
            Err(error) => {
                let error = ApiError {
                    call_index: Some(index as u32),
                    ..error
                };
                return BatchResponse {
                    results,
                    error: Some(error.to_proto()),
                };
            }
        }
    }
    BatchResponse {
        results,
        error: None,
    }
}

fn yields_integer(op: &Op) -> bool {
    matches!(
        op,
        Op::ReadInteger(_)
            | Op::SymbolAddress(_)
            | Op::TranslateKernel(_)
            | Op::TranslateUser(_)
            | Op::MemberOffset(_)
    )
}

fn integer_of(result: &CallResult) -> Option<u64> {
    match result.value.as_ref()? {
        Value::Integer(v) => Some(*v),
        Value::Symbol(s) => Some(s.address),
        Value::Translation(t) => Some(t.physical_address),
        Value::Data(_) | Value::Text(_) => None,
    }
}

fn result_size(result: &CallResult) -> usize {
    match &result.value {
        Some(Value::Data(d)) => d.len(),
        Some(Value::Text(t)) => t.len(),
        _ => 16,
    }
}

fn address_of(op: &Op) -> Option<u64> {
    address_mut(&mut op.clone()).map(|a| *a)
}

fn address_mut(op: &mut Op) -> Option<&mut u64> {
    match op {
        Op::ReadPhysical(r) => Some(&mut r.address),
        Op::ReadVirtual(r) => Some(&mut r.address),
        Op::ReadSymbol(r) => Some(&mut r.offset),
        Op::ReadInteger(r) => Some(&mut r.address),
        Op::ReadString(r) => Some(&mut r.address),
        Op::TranslateKernel(r) => Some(&mut r.address),
        Op::TranslateUser(r) => Some(&mut r.address),
        Op::SymbolAddress(_) | Op::MemberOffset(_) => None,
    }
}

fn has_pid(op: &Op) -> bool {
    matches!(
        op,
        Op::ReadVirtual(_) | Op::ReadInteger(_) | Op::ReadString(_) | Op::TranslateUser(_)
    )
}

fn space_pid(space: &mut Option<furnace_api::v1::AddressSpace>) -> &mut u32 {
    &mut space.get_or_insert_with(Default::default).pid
}

fn pid_mut(op: &mut Op) -> Option<&mut u32> {
    let space = space_pid;
    match op {
        Op::ReadVirtual(r) => Some(space(&mut r.space)),
        Op::ReadInteger(r) => Some(space(&mut r.space)),
        Op::ReadString(r) => Some(space(&mut r.space)),
        Op::TranslateUser(r) => Some(&mut r.pid),
        _ => None,
    }
}

fn combine(op: i32, argument: u64, result: u64) -> u64 {
    match LinkOp::try_from(op) {
        Ok(LinkOp::Add) => argument.wrapping_add(result),
        Ok(LinkOp::Subtract) => result.wrapping_sub(argument),
        _ => result,
    }
}

fn apply_link(op: &mut Op, target: i32, link_op: i32, result: u64) {
    match LinkTarget::try_from(target) {
        Ok(LinkTarget::Address) => {
            if let Some(address) = address_mut(op) {
                *address = combine(link_op, *address, result);
            }
        }
        Ok(LinkTarget::Pid) => {
            if let Some(pid) = pid_mut(op) {
                *pid = combine(link_op, u64::from(*pid), result) as u32;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use furnace_api::v1::{Link, ReadIntegerRequest, SymbolRequest};

    fn read_at(address: u64) -> Call {
        Call {
            op: Some(Op::ReadInteger(ReadIntegerRequest {
                address,
                width: 8,
                space: None,
            })),
            links: vec![],
        }
    }

    fn linked(mut call: Call, source: u32, target: LinkTarget, op: LinkOp) -> Call {
        call.links.push(Link {
            source,
            target: target as i32,
            op: op as i32,
        });
        call
    }

    #[test]
    fn links_must_point_backwards_at_integers() {
        let limits = SidecarConfig::default();
        let sym = Call {
            op: Some(Op::SymbolAddress(SymbolRequest {
                name: "init_task".into(),
            })),
            links: vec![],
        };
        let ok = vec![
            sym.clone(),
            linked(read_at(8), 0, LinkTarget::Address, LinkOp::Add),
        ];
        assert!(validate(&ok, &limits).is_ok());

        let forward = vec![
            linked(read_at(8), 1, LinkTarget::Address, LinkOp::Add),
            sym.clone(),
        ];
        let err = validate(&forward, &limits).unwrap_err();
        assert_eq!(
            (err.code, err.call_index),
            (ErrorCode::InvalidArgument, Some(0))
        );

        let out_of_range = vec![
            sym.clone(),
            linked(read_at(8), 99, LinkTarget::Address, LinkOp::Add),
        ];
        assert!(validate(&out_of_range, &limits)
            .unwrap_err()
            .message
            .contains("earlier"));

        let self_link = vec![linked(read_at(8), 0, LinkTarget::Address, LinkOp::Add)];
        assert!(validate(&self_link, &limits).is_err());

        let no_pid = vec![
            sym.clone(),
            linked(sym.clone(), 0, LinkTarget::Pid, LinkOp::Overwrite),
        ];
        assert!(validate(&no_pid, &limits)
            .unwrap_err()
            .message
            .contains("LINK_TARGET_PID"));

        let bad_op = vec![
            sym,
            Call {
                links: vec![Link {
                    source: 0,
                    target: 1,
                    op: 42,
                }],
                ..read_at(0)
            },
        ];
        assert!(validate(&bad_op, &limits)
            .unwrap_err()
            .message
            .contains("link operation"));
    }

    #[test]
    fn oversized_batches_are_refused_before_running() {
        let limits = SidecarConfig {
            max_batch_calls: 3,
            ..SidecarConfig::default()
        };
        let err = validate(&vec![read_at(0); 4], &limits).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
    }

    #[test]
    fn link_arithmetic() {
        let mut op = read_at(0x10).op.unwrap();
        apply_link(
            &mut op,
            LinkTarget::Address as i32,
            LinkOp::Add as i32,
            0x1000,
        );
        assert_eq!(address_of(&op), Some(0x1010));
        apply_link(
            &mut op,
            LinkTarget::Address as i32,
            LinkOp::Subtract as i32,
            0x5000,
        );
        assert_eq!(address_of(&op), Some(0x5000 - 0x1010));
        apply_link(
            &mut op,
            LinkTarget::Address as i32,
            LinkOp::Overwrite as i32,
            7,
        );
        assert_eq!(address_of(&op), Some(7));
        apply_link(
            &mut op,
            LinkTarget::Pid as i32,
            LinkOp::Overwrite as i32,
            42,
        );
        let Op::ReadInteger(r) = op else {
            unreachable!()
        };
        assert_eq!(r.space.unwrap().pid, 42);
    }

    /// One walk of the task list serves every pid-scoped call of a batch:
    /// the reads of init_task's `tasks.next` are the same for one call and
    /// for fifty. Each call reads through pid 1's own page-table root.
    #[test]
    fn pid_scoped_calls_in_one_batch_walk_the_task_list_once() {
        use crate::arch::amd64::PagingMode;
        use crate::linux::test_image::{kernel_over, profile, Image, ImageMemory};
        use furnace_api::v1::{call_result::Value, AddressSpace};

        let profile = profile();
        let banner = profile.banner().unwrap();
        let layout = crate::linux::KernelLayout::from_profile(&profile).unwrap();
        let mut memory = ImageMemory::new(Image::build(&profile).bytes().to_vec()).unwrap();
        let head = Image::physical(layout.symbols.init_task + layout.task_tasks);
        let walks = memory.watch(head);
        let kernel = kernel_over(Box::new(memory), PagingMode::FourLevel);
        let in_pid_1 = |_| Call {
            op: Some(Op::ReadInteger(ReadIntegerRequest {
                address: layout.symbols.linux_banner,
                width: 8,
                space: Some(AddressSpace { pid: 1 }),
            })),
            links: vec![],
        };
        let limits = SidecarConfig::default();
        let mut reads = Vec::new();
        for calls in [1, 50] {
            let before = walks.load(std::sync::atomic::Ordering::Relaxed);
            let batch: Vec<Call> = (0..calls).map(in_pid_1).collect();
            let response = run(&kernel, &limits, &batch);
            assert_eq!(response.error, None);
            assert_eq!(response.results.len(), calls);
            for result in &response.results {
                let expected = u64::from_le_bytes(banner[..8].try_into().unwrap());
                assert_eq!(result.value, Some(Value::Integer(expected)));
            }
            reads.push(walks.load(std::sync::atomic::Ordering::Relaxed) - before);
        }
        assert!(reads[0] > 0, "the walk starts at init_task");
        assert_eq!(reads[0], reads[1], "reads of the list head: {reads:?}");
    }
}
