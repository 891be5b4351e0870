//! Inline handlers: closures the kernel runs in the main flow of the
//! registering thread, like signal handlers, when their event fires.
//!
//! A handler interrupts the thread wherever it is, between any two
//! instructions, so what it shares with the main flow must be guarded:
//! the main flow keeps handlers out with [`crate::critical_section`], and
//! the helpers of this crate do so themselves ([`crate::sync::Mutex`],
//! [`crate::println!`], [`crate::HandlerSafeAlloc`]).  The kernel never
//! interrupts a handler with another event of the process, saves and
//! restores every register and the FPU state around it, and this crate
//! saves and restores `errno`.
//!
//! The compiler cannot check what a handler touches, so every function
//! that registers one is `unsafe`; the contract its caller keeps is
//! written once, in the `# Safety` section of [`register_inline`], and the
//! others refer to it.

use core::arch::global_asm;
use core::cell::Cell;
use core::ffi::c_void;
use core::mem::size_of;
use core::ptr;

use aem_syscalls::uapi;

use crate::event::{attr_for, ctl_owned, Options, Record, Source};
use crate::owner::Owner;
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
    pub(crate) fn raw(self) -> i64 {
        i64::from(match self {
            Action::Rearm => uapi::AEM_HANDLER_REARM,
            Action::Disarm => uapi::AEM_HANDLER_DISARM,
            Action::Unregister => uapi::AEM_HANDLER_UNREGISTER,
        })
    }
}

/// What a registration's cookie points at: its closure, and whether the
/// kernel has ended the event.
struct Handler {
    closure: Box<dyn FnMut(&mut Record) -> Action + Send>,
    /// A one-shot event: the kernel unregisters it as it delivers it.
    oneshot: bool,
    /// Set by the entry when the kernel unregistered the event (a one-shot
    /// delivered, or `Action::Unregister`).  From then on its id may be
    /// given to a new event, which the handle must leave alone.  Only the
    /// registering thread reads or writes it.
    ended: Cell<bool>,
}

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

/// The address every handler of this crate returns to.
pub(crate) fn restorer_address() -> u64 {
    aem_shim_restorer as *const () as u64
}

thread_local! {
    /// The handler running on this thread, or null.
    static RUNNING: Cell<*mut Handler> = const { Cell::new(ptr::null_mut()) };
    /// Its registration was dropped while it ran: free it when it returns.
    static RETIRED: Cell<bool> = const { Cell::new(false) };
    /// The id of its event (meaningful while `RUNNING` is not null).
    static RUNNING_EVENT: Cell<u32> = const { Cell::new(0) };
    /// The id of the pool event whose handler runs on this thread, or 0.
    static RUNNING_POOL_EVENT: Cell<u32> = const { Cell::new(0) };
}

/// The id of the event whose inline handler runs on this thread, if one
/// does.
pub(crate) fn running_event() -> Option<u32> {
    match RUNNING_POOL_EVENT.get() {
        0 => in_handler().then(|| RUNNING_EVENT.get()),
        id => Some(id),
    }
}

/// Whether the calling code runs inside an inline handler (on this
/// thread), a pool handler ([`crate::Pool`]) included.
pub fn in_handler() -> bool {
    !RUNNING.get().is_null() || RUNNING_POOL_EVENT.get() != 0
}

/// Run a handler's closure as every entry does: a panic aborts the
/// program (it must not unwind into the kernel's frame), and in debug
/// builds so does a handler that returns with a critical section open.
pub(crate) fn call_handler(
    id: u32,
    closure: &mut (dyn FnMut(&mut Record) -> Action + Send),
    record: &mut Record,
) -> Action {
    let depth = crate::critical_depth();
    let action = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| closure(record)))
        .unwrap_or_else(|payload| {
            // Straight to fd 2: std's stderr may be captured (tests) or in
            // use by the interrupted code.  Nothing here allocates (the
            // payload is only looked at), and the abort skips its drop.
            // (With aem::panic's hook installed, the hook reported the
            // panic and aborted already, before any unwinding.)
            let why = crate::panic::payload_str(&*payload);
            crate::eprintln!("aem: the handler of event {id} panicked: {why}; aborting");
            std::process::abort()
        });
    if cfg!(debug_assertions) && crate::critical_depth() != depth {
        // Its thread's events would stay blocked for good: a bug to
        // report where it is, not to debug later.
        crate::eprintln!(
            "aem: the handler of event {id} returned with {} critical \
             section(s) still open; aborting",
            crate::critical_depth().wrapping_sub(depth)
        );
        std::process::abort();
    }
    action
}

/// Mark the pool event `id` (0: none) as the one whose handler runs on
/// this thread.
pub(crate) fn set_running_pool_event(id: u32) {
    RUNNING_POOL_EVENT.set(id);
}

/// Mark a function as not safe to call from an inline handler: in debug
/// builds, calling it from one panics with a message naming `name` (and
/// the panic aborts the program, as every handler panic does).  Release
/// builds check nothing.
///
/// The crate's own such functions ([`run`], [`crate::wait`]) call it;
/// programs can mark theirs the same way.
#[track_caller]
#[inline]
pub fn not_handler_safe(name: &str) {
    if cfg!(debug_assertions) && in_handler() {
        panic!(
            "aem: {name} is not handler-safe and was called from an AEM inline handler \
             (see the aem crate's \"Handler safety\" documentation)"
        );
    }
}

/// The common entry of every inline handler: finds the closure through
/// the record's cookie, keeps `errno`, frees a registration dropped by its
/// own handler, and never unwinds into the kernel's frame.
extern "C" fn aem_shim_entry(_id: i64, rec: *const uapi::aem_record, _uc: *mut c_void) -> i64 {
    // SAFETY: errno is this thread's; reading it has no preconditions.
    let saved_errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a pointer to the record it wrote into the
    // handler's frame, valid for the handler's duration; an accept
    // record's descriptor was installed for this delivery alone, and the
    // kernel's copy of the record is never decoded again, so `record`
    // owns it (and closes it below unless the handler takes it).
    let mut record = unsafe { Record::from_raw(&*rec) };
    let raw = record.cookie as *mut Handler;
    RUNNING_EVENT.set(record.id);
    RUNNING.set(raw);
    // SAFETY: the cookie is the `Box<Handler>` leaked by `register_inline`,
    // freed only after the event is unregistered, and not while it runs
    // (`RETIRED`); the kernel never runs two handlers of a process on one
    // thread at once, and a registration's handler runs only on its
    // registering thread.
    let handler = unsafe { &mut *raw };
    let action = call_handler(record.id, &mut *handler.closure, &mut record);
    RUNNING.set(ptr::null_mut());
    if handler.oneshot || action == Action::Unregister {
        handler.ended.set(true);
    }
    if RETIRED.replace(false) {
        // SAFETY: the registration was dropped (and the event unregistered)
        // while this handler ran; nothing else holds the box.
        drop(unsafe { Box::from_raw(raw) });
    }
    // Closes an accepted connection the handler left in the record
    // (close(2) may set errno: before errno is restored).
    drop(record);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
    action.raw()
}

/// An event whose handler runs inline; dropping it unregisters the event
/// and frees the handler.  It stays on the registering thread (it is not
/// `Send`), where the handler runs.  The handler itself may drop it (say,
/// from a thread-local table): the event is unregistered at once, the
/// closure -- and what it owns, such as an `on_read` buffer the handler
/// is looking at -- is freed when the handler returns, and the handler's
/// [`Action`] is then moot.
#[derive(Debug)]
pub struct InlineRegistration {
    id: u32,
    handler: *mut Handler,
    /// A copy inherited over `fork()` is inert (see `owner.rs`).
    owner: Owner,
}

/// Register an event whose `handler` the kernel runs in the main flow of
/// the calling thread.  [`Options::cookie`] is used by this crate and
/// ignored.
///
/// The handler borrows its [`Record`] mutably for the length of the call.
/// What the record owns -- the connection of an [`Source::accept`] event
/// ([`EventData::Accept`](crate::EventData::Accept)) -- is the handler's
/// to take ([`Record::take_accepted`]); what it leaves is closed when it
/// returns, so no connection leaks.  [`crate::on_accept`] hands each
/// connection over as an `OwnedFd`.
///
/// ```no_run
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::time::Duration;
///
/// static TICKS: AtomicU64 = AtomicU64::new(0);
/// let timer = aem::Source::periodic(Duration::from_millis(10));
/// // SAFETY: the handler only touches an atomic.
/// let _reg = unsafe {
///     aem::register_inline(timer, aem::Options::new(), |_| {
///         TICKS.fetch_add(1, Ordering::Relaxed);
///         aem::Action::Rearm
///     })
/// }
/// .unwrap();
/// ```
///
/// # Safety
///
/// `handler` runs like a signal handler: whenever its event fires, the
/// kernel runs it on the calling thread, interrupting that thread between
/// any two instructions -- in the middle of `malloc`, of a `RefCell`
/// borrow, of a `println!`, with a lock held.  It never interrupts another
/// inline handler of the process: handlers do not nest.  Safe code could
/// cause undefined behaviour or deadlock through it (a thread-local
/// `Cell<Option<Box<T>>>` that the main flow and the handler both `take()`
/// from frees the box twice), so registering a handler is `unsafe`, as
/// registering a signal action is with `signal_hook_registry::register`.
/// This contract is the same for every registration function of this
/// crate ([`on_accept`](crate::on_accept), [`on_read`](crate::on_read),
/// [`on_socket_state`](crate::on_socket_state),
/// [`on_signals`](crate::on_signals)).
///
/// The caller must ensure that `handler`, and all it calls or drops, only
/// touches state that is safe to use from an interrupting handler:
///
/// - atomics;
/// - data behind an [`aem::sync::Mutex`](crate::sync::Mutex) or
///   [`aem::sync::RwLock`](crate::sync::RwLock), or data the
///   main flow touches only inside an
///   [`aem::critical_section`](crate::critical_section) or
///   [`aem::critical`](crate::critical) (handlers of the thread never run
///   inside one);
/// - output only through [`aem::println!`](crate::println!),
///   [`aem::eprintln!`](crate::eprintln!), [`aem::print!`](crate::print!),
///   [`aem::eprint!`](crate::eprint!) and [`aem::io`](crate::io), and
///   logging only through `log`'s macros with this crate's backend
///   ([`aem::log`](crate::log)) installed, or through `tracing` events
///   with this crate's writer as `aem::tracing` (feature `tracing`)
///   describes;
/// - the heap (`Box`, `Vec`, `String`, `format!`, ...) only if the
///   program's global allocator is
///   [`aem::HandlerSafeAlloc`](crate::HandlerSafeAlloc), and the one over
///   a heap of its own, [`HandlerSafeAlloc::separate`](crate::HandlerSafeAlloc::separate),
///   unless the thread's main flow never calls C code that allocates with
///   the C library's `malloc` (`std::fs::read_dir`, `getaddrinfo`,
///   `setenv`, C libraries): those calls run outside any critical section;
///
/// and in particular that it does not use:
///
/// - `std::println!`, `std::eprintln!` or anything else that takes the
///   standard streams' locks or buffers;
/// - `std::sync::Mutex`, `RwLock` or any other lock that the interrupted
///   code may hold (it cannot release it before the handler returns);
/// - thread-local `RefCell`, `Cell` or other state that the main flow also
///   uses outside critical sections;
/// - C library functions that are not async-signal-safe (see
///   `signal-safety(7)`), unless the main flow calls them, and whatever
///   shares their state, only inside critical sections;
/// - [`aem::dispatch`](crate::dispatch), [`aem::on_event`](crate::on_event)
///   or dropping a [`DispatchRegistration`](crate::DispatchRegistration),
///   which take a `std` lock;
/// - [`aem::run`](run) or [`aem::wait`](crate::wait): from a handler they
///   would hold back every other event of the thread (in debug builds they
///   panic there, naming themselves, and a panicking handler aborts the
///   program; mark functions of your own the same way with
///   [`not_handler_safe`]).
pub unsafe fn register_inline<F>(
    source: Source<'_>,
    options: Options,
    handler: F,
) -> Result<InlineRegistration, Error>
where
    F: FnMut(&mut Record) -> Action + Send + 'static,
{
    // SAFETY: our caller keeps this function's contract for `handler`.
    unsafe { register_inline_attr(attr_for(source, options)?, handler) }
}

/// Whether the calling thread has an alternate signal stack a handler can
/// run on (see [`Options::onstack`]).
fn has_handler_sized_altstack() -> bool {
    // SAFETY: stack_t is plain data, filled in by sigaltstack.
    let mut ss: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: a null new stack only reads the current one into `ss`.
    let rc = unsafe { libc::sigaltstack(ptr::null(), &mut ss) };
    rc == 0 && ss.ss_flags & libc::SS_DISABLE == 0 && ss.ss_size >= crate::event::ONSTACK_MIN_SIZE
}

/// In debug builds, once per process (a fork child is another): an
/// inline handler registered while
/// the global allocator is not [`crate::HandlerSafeAlloc`] (the box just
/// allocated for it did not go through one) may not allocate -- say so
/// loudly, since the compiler cannot.
fn warn_unless_handler_safe_alloc() {
    /// The process generation (`owner.rs`) that was warned, plus one.
    static WARNED: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
    let generation = Owner::generation().wrapping_add(1);
    if !crate::alloc::handler_safe_alloc_in_use()
        && WARNED.swap(generation, core::sync::atomic::Ordering::Relaxed) != generation
    {
        crate::eprintln!(
            "aem: warning: an inline handler is registered, but the global allocator is \
             not aem::HandlerSafeAlloc: a handler that allocates (Box, Vec, String, \
             format!) can deadlock or corrupt the heap (see aem::register_inline, # Safety)"
        );
    }
}

/// [`register_inline`] for ready-made attributes.
///
/// # Safety
///
/// As for [`register_inline`]: `handler` must keep its contract.
pub(crate) unsafe fn register_inline_attr<F>(
    attr: uapi::aem_event_attr,
    handler: F,
) -> Result<InlineRegistration, Error>
where
    F: FnMut(&mut Record) -> Action + Send + 'static,
{
    warn_unless_handler_safe_alloc();
    // SAFETY: our caller keeps the contract for `handler`.
    unsafe { register_inline_quiet(attr, handler) }
}

/// [`register_inline_attr`] without the allocator warning, for this
/// crate's own handlers that do not allocate.
///
/// # Safety
///
/// As for [`register_inline`]: `handler` must keep its contract.
pub(crate) unsafe fn register_inline_quiet<F>(
    mut attr: uapi::aem_event_attr,
    handler: F,
) -> Result<InlineRegistration, Error>
where
    F: FnMut(&mut Record) -> Action + Send + 'static,
{
    if attr.flags & uapi::AEM_EV_ONSTACK != 0 && !has_handler_sized_altstack() {
        return Err(Error::Os(aem_syscalls::Errno(libc::EINVAL)));
    }
    let boxed = Box::new(Handler {
        closure: Box::new(handler),
        oneshot: attr.flags & uapi::AEM_EV_ONESHOT != 0,
        ended: Cell::new(false),
    });
    // Before the kernel can run the handler here: the thread's sections
    // must keep it out from its first delivery.
    crate::critical::prepare_thread_for_inline();
    let handler = Box::into_raw(boxed);
    attr.handler = aem_shim_entry as *const () as u64;
    attr.restorer = restorer_address();
    attr.cookie = handler as u64;
    // SAFETY: `attr` is a live aem_event_attr of exactly the size passed.
    match unsafe { aem_syscalls::aem_register(&attr, size_of::<uapi::aem_event_attr>(), 0) } {
        Ok(id) => Ok(InlineRegistration {
            id,
            handler,
            owner: Owner::current(),
        }),
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

    /// `aem_ctl(op)` on the event, unless the kernel ended it: then its id
    /// may be another event's, and this fails with `ENOENT` as it did
    /// before the id was given again.
    fn ctl(&self, op: u32) -> Result<(), Error> {
        // SAFETY: the box lives until this handle drops (or, dropped by
        // its own handler, until that returns); `ended` is only touched on
        // this thread.
        if unsafe { (*self.handler).ended.get() } {
            return Err(Error::Os(aem_syscalls::Errno(libc::ENOENT)));
        }
        ctl_owned(self.owner, self.id, op, 0)
    }

    /// Deliver the event again after a [`Action::Disarm`] or a disable.
    pub fn enable(&self) -> Result<(), Error> {
        self.ctl(uapi::AEM_CTL_ENABLE)
    }

    /// Stop delivering the event; activations are still counted.
    pub fn disable(&self) -> Result<(), Error> {
        self.ctl(uapi::AEM_CTL_DISABLE)
    }
}

impl Drop for InlineRegistration {
    fn drop(&mut self) {
        // ENOENT: a copy inherited over fork() (the child's own closure
        // copy is freed below all the same), or an event the kernel ended
        // (not asked: its id may be a new event's).
        let _ = self.ctl(uapi::AEM_CTL_UNREGISTER);
        if RUNNING.get() == self.handler {
            // Dropped by its own handler: freed when the handler returns.
            RETIRED.set(true);
            return;
        }
        // SAFETY: after unregistration the kernel never runs the handler
        // again, handlers run on this registration's thread, and this one
        // is not running (checked above).
        let closure = unsafe { Box::from_raw(self.handler) };
        // What the closure owns may be shared with other handlers of the
        // thread (an Rc, a buffer): none interrupts its destructors.
        crate::critical(|| drop(closure));
    }
}

/// Block inline delivery to the calling thread until [`unblock`], with a
/// system call (`AEM_CTL_BLOCK`); nestable.  Events arriving meanwhile stay
/// pending.  [`crate::critical_section`] does the same without a system
/// call; the two combine.
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
///
/// Not handler-safe: in a handler it would sleep with every other event of
/// the thread held back.
pub fn run() -> Error {
    not_handler_safe("aem::run");
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
