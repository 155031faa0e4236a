//! Stop replies: `S AA`, `T AA n:r;…`, `W AA`, `X AA` (gdb docs, "Stop Reply Packets").

use crate::error::{Result, VmiError};

const SIGTRAP: u8 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A breakpoint that the stub says was software (`swbreak`).
    SoftwareBreakpoint,
    HardwareBreakpoint,
    Watchpoint {
        address: u64,
    },
    /// SIGTRAP with no detail: a breakpoint or a finished step (QEMU's usual report).
    Trap,
    /// Any other signal, e.g. SIGINT after an interrupt.
    Signal(u8),
    /// The guest is gone: exited (`W`) or terminated (`X`).
    Ended,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReply {
    pub signal: u8,
    /// The vCPU that stopped, as the stub names threads (`01`, `p1.2`…).
    pub thread: Option<String>,
    pub reason: StopReason,
}

impl StopReply {
    pub fn parse(reply: &[u8]) -> Result<StopReply> {
        let bad = || {
            VmiError::Gdb(format!(
                "not a stop reply: {:?}",
                String::from_utf8_lossy(&reply[..reply.len().min(80)])
            ))
        };
        let text = std::str::from_utf8(reply).map_err(|_| bad())?;
        let kind = text.chars().next().ok_or_else(bad)?;
        let signal = text
            .get(1..3)
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .ok_or_else(bad)?;
        let mut stop = StopReply {
            signal,
            thread: None,
            reason: match signal {
                SIGTRAP => StopReason::Trap,
                other => StopReason::Signal(other),
            },
        };
        match kind {
            'S' => {}
            'W' | 'X' => stop.reason = StopReason::Ended,
            'T' => {
                for pair in text[3..].split(';').filter(|p| !p.is_empty()) {
                    let (name, value) = pair.split_once(':').ok_or_else(bad)?;
                    match name {
                        "thread" => stop.thread = Some(value.to_owned()),
                        "swbreak" => stop.reason = StopReason::SoftwareBreakpoint,
                        "hwbreak" => stop.reason = StopReason::HardwareBreakpoint,
                        "watch" | "rwatch" | "awatch" => {
                            let address = u64::from_str_radix(value, 16).map_err(|_| bad())?;
                            stop.reason = StopReason::Watchpoint { address };
                        }
                        _ => {} // registers, core, and reasons we do not act on
                    }
                }
            }
            _ => return Err(bad()),
        }
        Ok(stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemus_breakpoint_and_interrupt_stops_parse() {
        let hit = StopReply::parse(b"T05thread:01;").unwrap();
        assert_eq!(hit.reason, StopReason::Trap);
        assert_eq!(hit.thread.as_deref(), Some("01"));
        let interrupted = StopReply::parse(b"T02thread:p1.2;").unwrap();
        assert_eq!(interrupted.reason, StopReason::Signal(2));
        assert_eq!(interrupted.thread.as_deref(), Some("p1.2"));
        assert_eq!(StopReply::parse(b"S05").unwrap().reason, StopReason::Trap);
    }

    #[test]
    fn detailed_reasons_are_kept() {
        assert_eq!(
            StopReply::parse(b"T05swbreak:;thread:01;").unwrap().reason,
            StopReason::SoftwareBreakpoint
        );
        assert_eq!(
            StopReply::parse(b"T05thread:01;watch:ffff888000001000;")
                .unwrap()
                .reason,
            StopReason::Watchpoint {
                address: 0xffff_8880_0000_1000
            }
        );
        assert_eq!(StopReply::parse(b"W00").unwrap().reason, StopReason::Ended);
        assert_eq!(StopReply::parse(b"X09").unwrap().reason, StopReason::Ended);
    }

    #[test]
    fn anything_else_is_a_typed_error() {
        for garbage in [
            &b""[..],
            b"OK",
            b"T",
            b"Tzz",
            b"T05thread",
            b"T05watch:xyz;",
            b"\xff\xfe",
        ] {
            assert!(StopReply::parse(garbage).is_err(), "{garbage:?}");
        }
    }
}
