//! The few instructions a debugger can carry out itself for a vCPU stopped
//! on them, instead of single-stepping. Under TCG a single step is costly:
//! QEMU flushes every translated block when stepping is switched on and
//! again when it is switched off. Kernel functions commonly begin with one
//! of these: `endbr64` (IBT), the 5-byte NOP ftrace patches into a call only
//! while it traces that function, or `push %rbp` (functions ftrace may not
//! touch, such as `do_syscall_64`).

/// What executing the first instruction of some code amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulation {
    /// Nothing but `rip += length`.
    Skip { length: u64 },
    /// `rsp -= 8; [rsp] = register; rip += length`. `register` indexes the
    /// general registers in gdb's order (rax, rbx, rcx, rdx, rsi, rdi, rbp,
    /// rsp, r8 … r15), as [`crate::driver::Registers::gpr`] does.
    Push { register: usize, length: u64 },
}

/// gdb's index of each register in x86 encoding order (rax, rcx, rdx, rbx,
/// rsp, rbp, rsi, rdi).
const GDB_INDEX: [usize; 8] = [0, 2, 3, 1, 7, 6, 4, 5];

pub fn first_instruction(code: &[u8]) -> Option<Emulation> {
    const NO_EFFECT: &[&[u8]] = &[
        &[0xf3, 0x0f, 0x1e, 0xfa],             // endbr64
        &[0x0f, 0x1f, 0x44, 0x00, 0x00],       // nopl 0x0(%rax,%rax,1)
        &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00], // nopw 0x0(%rax,%rax,1)
        &[0x0f, 0x1f, 0x40, 0x00],             // nopl 0x0(%rax)
        &[0x0f, 0x1f, 0x00],                   // nopl (%rax)
        &[0x66, 0x90],                         // xchg %ax,%ax
        &[0x90],                               // nop
    ];
    if let Some(p) = NO_EFFECT.iter().find(|p| code.starts_with(p)) {
        return Some(Emulation::Skip {
            length: p.len() as u64,
        });
    }
    match code {
        [op @ 0x50..=0x57, ..] => Some(Emulation::Push {
            register: GDB_INDEX[usize::from(op - 0x50)],
            length: 1,
        }),
        [0x41, op @ 0x50..=0x57, ..] => Some(Emulation::Push {
            register: 8 + usize::from(op - 0x50),
            length: 2,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endbr64_nops_and_pushes_are_emulated_calls_are_not() {
        let skip = |length| Some(Emulation::Skip { length });
        assert_eq!(first_instruction(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]), skip(4));
        assert_eq!(
            first_instruction(&[0x0f, 0x1f, 0x44, 0x00, 0x00, 0x55]),
            skip(5)
        );
        assert_eq!(first_instruction(&[0x90]), skip(1));
        let push = |register, length| Some(Emulation::Push { register, length });
        assert_eq!(first_instruction(&[0x55, 0x48, 0x89, 0xe5]), push(6, 1)); // push %rbp
        assert_eq!(first_instruction(&[0x53]), push(1, 1)); // push %rbx
        assert_eq!(first_instruction(&[0x54]), push(7, 1)); // push %rsp
        assert_eq!(first_instruction(&[0x41, 0x57]), push(15, 2)); // push %r15
                                                                   // `call __fentry__` while ftrace traces the function.
        assert_eq!(first_instruction(&[0xe8, 0x01, 0x02, 0x03, 0x04]), None);
        assert_eq!(first_instruction(&[0x48, 0x89, 0xe5]), None); // mov %rsp,%rbp
        assert_eq!(first_instruction(&[0xf3, 0x0f]), None);
        assert_eq!(first_instruction(&[]), None);
    }
}
