//! Signals as events: a signal handler in closure form, run inline like
//! any other event, so it may do anything an inline handler may (print,
//! allocate, lock with this crate's helpers; see the `# Safety` section of
//! [`crate::register_inline`]) instead of only what async-signal-safety
//! allows.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::event::{FdEvents, Options, Record, Source};
use crate::inline::{register_inline, Action, InlineRegistration};
use crate::{Errno, Error};

/// A signal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(pub i32);

impl Signal {
    /// `SIGHUP`
    pub const HUP: Signal = Signal(libc::SIGHUP);
    /// `SIGINT`
    pub const INT: Signal = Signal(libc::SIGINT);
    /// `SIGTERM`
    pub const TERM: Signal = Signal(libc::SIGTERM);
    /// `SIGUSR1`
    pub const USR1: Signal = Signal(libc::SIGUSR1);
    /// `SIGUSR2`
    pub const USR2: Signal = Signal(libc::SIGUSR2);
    /// `SIGCHLD`
    pub const CHLD: Signal = Signal(libc::SIGCHLD);
}

/// Signals delivered as events (see [`on_signals`]); dropping it stops
/// the delivery.  The signals stay blocked.
#[derive(Debug)]
pub struct SignalRegistration {
    // Unregistered before the descriptor closes.
    _event: InlineRegistration,
    _fd: OwnedFd,
}

fn os(e: nix::errno::Errno) -> Error {
    Error::Os(Errno(e as i32))
}

/// Receive `signals` as events: `handler` runs inline on the calling
/// thread, once per signal received, with its number.
///
/// The signals are blocked in the calling thread and read from a
/// `signalfd(2)`: call this before creating threads (which inherit the
/// mask), or block the signals in every thread, so that no thread takes a
/// process-directed signal the ordinary way.
///
/// # Safety
///
/// `handler` runs inline, interrupting the calling thread between any two
/// instructions: it must keep the contract of
/// [`register_inline`](crate::register_inline#safety).
pub unsafe fn on_signals<F>(
    signals: &[Signal],
    options: Options,
    mut handler: F,
) -> Result<SignalRegistration, Error>
where
    F: FnMut(Signal) -> Action + Send + 'static,
{
    // nix's `Signal` has no real-time signals: the numbers go in with
    // sigaddset(3), which checks them, into a set nix made empty.
    let mut raw_set: libc::sigset_t = *SigSet::empty().as_ref();
    for s in signals {
        // SAFETY: `raw_set` is an initialised sigset_t; an invalid number
        // fails with EINVAL.
        if unsafe { libc::sigaddset(&mut raw_set, s.0) } != 0 {
            return Err(Error::Os(Errno(libc::EINVAL)));
        }
    }
    // SAFETY: `raw_set` was initialised by SigSet::empty and changed only
    // by sigaddset.
    let set = unsafe { SigSet::from_sigset_t_unchecked(raw_set) };
    let old = set.thread_swap_mask(SigmaskHow::SIG_BLOCK).map_err(os)?;
    // A failure below gives the thread its mask back: signals blocked with
    // no event to read them would be lost to the program.
    let restore_mask = |e: Error| {
        let _ = old.thread_set_mask();
        e
    };
    let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| restore_mask(os(e)))?;
    let fd = OwnedFd::from(fd);
    let raw = fd.as_raw_fd();
    let on_readable = move |_: &mut Record| {
        let mut action = Action::Rearm;
        loop {
            // SAFETY: signalfd_siginfo is plain data.
            let mut info: libc::signalfd_siginfo = unsafe { core::mem::zeroed() };
            let size = core::mem::size_of_val(&info);
            // SAFETY: reads one record into a live buffer of its size,
            // from the descriptor the registration keeps open.
            let n =
                unsafe { libc::read(raw, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
            if n != size as isize {
                return action;
            }
            action = handler(Signal(info.ssi_signo as i32));
            if action != Action::Rearm {
                return action;
            }
        }
    };
    // SAFETY: our caller keeps the contract for `handler`; around it the
    // closure only calls read(2), which is async-signal-safe, on a stack
    // buffer.
    let event =
        unsafe { register_inline(Source::fd(fd.as_fd(), FdEvents::IN), options, on_readable) }
            .map_err(restore_mask)?;
    Ok(SignalRegistration {
        _event: event,
        _fd: fd,
    })
}
