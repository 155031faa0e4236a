//! A ram file that shrinks under its mapping. Touching a mapped page past a
//! file's end raises SIGBUS, whose default action would end the sidecar and
//! every app's session with it. Whoever can write the guest directory can
//! truncate the file (QEMU being replaced, an operator, a mistake), so the
//! sidecar survives it: a process-wide SIGBUS handler finds the mapping the
//! fault lies in, maps an anonymous page over the faulting one, marks the
//! mapping shrunk and returns. The interrupted copy then completes on that
//! page, and the read or write that faulted sees the mark and fails with
//! GUEST_GONE, as does every later one: the guest's memory is no longer
//! what the file holds.
//!
//! A SIGBUS outside every registered mapping goes to the handler that was
//! installed before ours (Rust's own, or the default action).

use crate::error::{Result, VmiError};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// How many mappings can be watched at once: one per guest or snapshot a
/// process has open, so a sidecar needs one and a test a handful.
const SLOTS: usize = 64;

/// One watched mapping. `len == 0` marks a free slot; `start` is written
/// before `len` is published and cleared after it is withdrawn, so the
/// handler never matches a half-written slot.
struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    shrunk: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    shrunk: AtomicBool::new(false),
};
static WATCHED: [Slot; SLOTS] = [FREE; SLOTS];
/// Serialises registration; the handler reads the slots without it.
static CLAIM: Mutex<()> = Mutex::new(());
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
/// What handled SIGBUS before us, for faults that are not ours.
static PREVIOUS: OnceLock<std::result::Result<SigAction, nix::Error>> = OnceLock::new();

/// A mapping watched for SIGBUS until this is dropped. Drop it before the
/// mapping is unmapped.
#[derive(Debug)]
pub struct ShrinkGuard {
    slot: usize,
}

impl ShrinkGuard {
    /// Watches `len` bytes mapped at `start`.
    pub fn watch(start: *const u8, len: usize) -> Result<ShrinkGuard> {
        install()?;
        let _claim = CLAIM.lock().unwrap_or_else(|p| p.into_inner());
        let slot = WATCHED
            .iter()
            .position(|s| s.len.load(Ordering::Acquire) == 0)
            .ok_or_else(|| {
                VmiError::LimitExceeded(format!(
                    "more than {SLOTS} guest memory mappings open in one process"
                ))
            })?;
        let entry = &WATCHED[slot];
        entry.shrunk.store(false, Ordering::Release);
        entry.start.store(start as usize, Ordering::Release);
        entry.len.store(len.max(1), Ordering::Release);
        Ok(ShrinkGuard { slot })
    }

    /// Fails with GUEST_GONE once the file has shrunk under the mapping.
    pub fn check(&self) -> Result<()> {
        if WATCHED[self.slot].shrunk.load(Ordering::Acquire) {
            return Err(VmiError::GuestGone(
                "the guest's RAM file shrank under its mapping; its memory is gone".into(),
            ));
        }
        Ok(())
    }
}

impl Drop for ShrinkGuard {
    fn drop(&mut self) {
        let _claim = CLAIM.lock().unwrap_or_else(|p| p.into_inner());
        let entry = &WATCHED[self.slot];
        entry.len.store(0, Ordering::Release);
        entry.start.store(0, Ordering::Release);
    }
}

fn install() -> Result<()> {
    let previous = PREVIOUS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        PAGE_SIZE.store(usize::try_from(page).unwrap_or(4096), Ordering::Release);
        let action = SigAction::new(
            SigHandler::SigAction(on_sigbus),
            SaFlags::SA_SIGINFO | SaFlags::SA_ONSTACK,
            SigSet::empty(),
        );
        // SAFETY: `on_sigbus` only touches atomics and makes the
        // async-signal-safe calls mmap(2) and sigaction(2).
        unsafe { sigaction(Signal::SIGBUS, &action) }
    });
    match previous {
        Ok(_) => Ok(()),
        Err(e) => Err(VmiError::io(
            "installing the SIGBUS handler for guest RAM",
            std::io::Error::from(*e),
        )),
    }
}

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    let page = PAGE_SIZE.load(Ordering::Acquire);
    for entry in &WATCHED {
        let len = entry.len.load(Ordering::Acquire);
        let start = entry.start.load(Ordering::Acquire);
        if len == 0 || address < start || address - start >= len {
            continue;
        }
        let faulting = address & !(page - 1);
        // SAFETY: the page lies in a mapping this process owns and keeps
        // until its guard is dropped; replacing it with zeroed anonymous
        // memory only changes what the interrupted copy reads or writes.
        let mapped = unsafe {
            libc::mmap(
                faulting as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            entry.shrunk.store(true, Ordering::Release);
            return;
        }
        break;
    }
    // Not ours, or not patchable: the fault repeats on return and meets the
    // handler that came before ours.
    let fallback = match PREVIOUS.get() {
        Some(Ok(previous)) => *previous,
        _ => SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
    };
    // SAFETY: restoring a handler that was installed before, or the default.
    let _ = unsafe { sigaction(Signal::SIGBUS, &fallback) };
}
