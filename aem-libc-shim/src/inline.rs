//! Inline handlers: closures the kernel runs in the main flow of the
//! registering thread, like signal handlers, when their event fires.
//!
//! A handler interrupts the thread wherever it is, between any two
//! instructions, so it must not take a lock or touch state the interrupted
//! code may hold half-changed: until the reentrancy-safe helpers land,
//! treat it like a signal handler (atomics, system calls).  The kernel
//! never interrupts a handler with another event of the process, saves and
//! restores every register and the FPU state around it, and this crate
//! saves and restores `errno`.

use core::arch::global_asm;
use core::ffi::c_void;
use core::mem::size_of;

use aem_syscalls::uapi;

use crate::event::{attr_for, Options, Record, Source};
use crate::Error;

/// What a handler asks the kernel to do with its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Keep the event registered and enabled.
    Rearm,
    /// Disable the event; [`InlineRegistration::enable`] re-arms it.
    Disarm,
    /// Unregister the event.
    Unregister,
}

impl Action {
    fn raw(self) -> i64 {
        i64::from(match self {
            Action::Rearm => uapi::AEM_HANDLER_REARM,
            Action::Disarm => uapi::AEM_HANDLER_DISARM,
            Action::Unregister => uapi::AEM_HANDLER_UNREGISTER,
        })
    }
}

type Handler = Box<dyn FnMut(&Record) -> Action + Send>;

// The return path of every handler: aem_return(the handler's result).
global_asm!(
    ".pushsection .text.aem_shim_restorer,\"ax\",@progbits",
    ".globl aem_shim_restorer",
    ".type aem_shim_restorer,@function",
    "aem_shim_restorer:",
    "mov rdi, rax",
    "mov eax, {nr}",
    "syscall",
    "ud2",
    ".size aem_shim_restorer, .-aem_shim_restorer",
    ".popsection",
    nr = const uapi::__NR_aem_return,
);

unsafe extern "C" {
    fn aem_shim_restorer();
}

/// The common entry of every inline handler: finds the closure through
/// the record's cookie, keeps `errno`, and never unwinds into the kernel's
/// frame.
extern "C" fn aem_shim_entry(_id: i64, rec: *const uapi::aem_record, _uc: *mut c_void) -> i64 {
    // SAFETY: errno is this thread's; reading it has no preconditions.
    let saved_errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a pointer to the record it wrote into the
    // handler's frame, valid for the handler's duration.
    let record = Record::from(unsafe { &*rec });
    // SAFETY: the cookie is the `Box<Handler>` leaked by `register_inline`,
    // freed only after the event is unregistered; the kernel never runs two
    // handlers of a process on one thread at once, and a registration's
    // handler runs only on its registering thread.
    let handler = unsafe { &mut *(record.cookie as *mut Handler) };
    let action = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&record)))
        .unwrap_or_else(|_| {
            eprintln!("aem: an inline handler panicked; aborting");
            std::process::abort()
        });
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
    action.raw()
}

/// An event whose handler runs inline; dropping it unregisters the event
/// and frees the handler.  It stays on the registering thread (it is not
/// `Send`): the handler runs on that thread, so it cannot be running while
/// the handle is dropped.
#[derive(Debug)]
pub struct InlineRegistration {
    id: u32,
    handler: *mut Handler,
}

/// Register an event whose `handler` the kernel runs in the main flow of
/// the calling thread.  [`Options::cookie`] is used by this crate and
/// ignored.
pub fn register_inline<F>(
    source: Source<'_>,
    options: Options,
    handler: F,
) -> Result<InlineRegistration, Error>
where
    F: FnMut(&Record) -> Action + Send + 'static,
{
    register_inline_attr(attr_for(source, options), handler)
}

/// [`register_inline`] for ready-made attributes.
pub(crate) fn register_inline_attr<F>(
    mut attr: uapi::aem_event_attr,
    handler: F,
) -> Result<InlineRegistration, Error>
where
    F: FnMut(&Record) -> Action + Send + 'static,
{
    let boxed: Box<Handler> = Box::new(Box::new(handler));
    let handler = Box::into_raw(boxed);
    attr.handler = aem_shim_entry as *const () as u64;
    attr.restorer = aem_shim_restorer as *const () as u64;
    attr.cookie = handler as u64;
    // SAFETY: `attr` is a live aem_event_attr of exactly the size passed.
    match unsafe { aem_syscalls::aem_register(&attr, size_of::<uapi::aem_event_attr>(), 0) } {
        Ok(id) => Ok(InlineRegistration { id, handler }),
        Err(e) => {
            // SAFETY: the kernel refused the registration: nothing else
            // holds the box.
            drop(unsafe { Box::from_raw(handler) });
            Err(e.into())
        }
    }
}

impl InlineRegistration {
    /// The registration's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Deliver the event again after a [`Action::Disarm`] or a disable.
    pub fn enable(&self) -> Result<(), Error> {
        aem_syscalls::aem_ctl(self.id as i32, uapi::AEM_CTL_ENABLE, 0)?;
        Ok(())
    }

    /// Stop delivering the event; activations are still counted.
    pub fn disable(&self) -> Result<(), Error> {
        aem_syscalls::aem_ctl(self.id as i32, uapi::AEM_CTL_DISABLE, 0)?;
        Ok(())
    }
}

impl Drop for InlineRegistration {
    fn drop(&mut self) {
        // ENOENT: a one-shot event, or one whose handler unregistered it.
        let _ = aem_syscalls::aem_ctl(self.id as i32, uapi::AEM_CTL_UNREGISTER, 0);
        // SAFETY: after unregistration the kernel never runs the handler
        // again, and handlers run on this registration's thread, so none is
        // running now unless `drop` is called from the handler itself,
        // which cannot own the registration.
        drop(unsafe { Box::from_raw(self.handler) });
    }
}

/// Block inline delivery to the calling thread until [`unblock`];
/// nestable.  Events arriving meanwhile stay pending.
pub fn block() -> Result<(), Error> {
    aem_syscalls::aem_ctl(0, uapi::AEM_CTL_BLOCK, 0)?;
    Ok(())
}

/// Undo one [`block`]; at zero, pending events run at once.
pub fn unblock() -> Result<(), Error> {
    aem_syscalls::aem_ctl(0, uapi::AEM_CTL_UNBLOCK, 0)?;
    Ok(())
}

/// Keep the process alive for its events: sleep, running inline handlers
/// as their events fire, until a signal handler runs.  Returns the error
/// that ended the wait, `Error::Os(EINTR)` after a signal.
pub fn run() -> Error {
    // SAFETY: no pointers are passed.
    match unsafe {
        aem_syscalls::aem_wait(
            core::ptr::null_mut(),
            0,
            core::ptr::null(),
            uapi::AEM_WAIT_KEEPALIVE,
        )
    } {
        Ok(_) => Error::Os(aem_syscalls::Errno(libc::EINTR)),
        Err(e) => e.into(),
    }
}
