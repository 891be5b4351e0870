//! Signals as events: a signal handler in closure form, run inline like
//! any other event, so it may do anything an inline handler may (print,
//! allocate, lock with this crate's helpers; see the `# Safety` section of
//! [`crate::register_inline`]) instead of only what async-signal-safety
//! allows.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

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

fn last_error() -> Error {
    Error::Os(Errno(
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
    ))
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
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for s in signals {
        // SAFETY: as above; an invalid number fails with EINVAL.
        if unsafe { libc::sigaddset(&mut set, s.0) } != 0 {
            return Err(Error::Os(Errno(libc::EINVAL)));
        }
    }
    // SAFETY: sigset_t is plain data, filled in by pthread_sigmask.
    let mut old: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: `set` is initialised, `old` is a live sigset_t to fill.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    if rc != 0 {
        return Err(Error::Os(Errno(rc)));
    }
    // A failure below gives the thread its mask back: signals blocked with
    // no event to read them would be lost to the program.
    let restore_mask = |e: Error| {
        // SAFETY: `old` is the mask pthread_sigmask returned.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut()) };
        e
    };
    // SAFETY: `set` is initialised; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(restore_mask(last_error()));
    }
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
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
