//! Handler pools: closures the kernel runs on a set of threads the process
//! gives it (EXEC-3), as a Windows I/O completion port or io_uring's
//! io-wq would, with no event thread handing work over.
//!
//! Each pool thread sleeps in `aem_wait(AEM_WAIT_SERVE)`.  When a pool
//! event fires, the kernel wakes the most recently idle pool thread, which
//! runs the event's handler on its way out of that call and goes back to
//! sleep.  Pending pool events are taken highest priority first across the
//! whole pool, a given event's handler never runs on two threads at once,
//! and events that find every thread busy wait, counted, for the first
//! thread that is done.
//!
//! A pool thread runs nothing but this crate's loop around that call, so a
//! handler interrupts no code of the program: registering one is safe, and
//! handlers may use `std` printing, `log`, `std::sync` locks and any
//! allocator, as on any thread.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::mem::size_of;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::os::fd::{AsFd, OwnedFd};
use std::thread::JoinHandle;

use aem_syscalls::{uapi, Errno};

use crate::event::{attr_for, ctl_owned, FdEvents, Options, Record, Source};
use crate::features::FeatureSet;
use crate::inline::{
    call_handler, register_inline_quiet, restorer_address, set_running_pool_event,
};
use crate::owner::Owner;
use crate::{Action, Error};

/// A pool's handler: what [`Pool::on_event`] boxes.
type Closure = Box<dyn FnMut(&mut Record) -> Action + Send>;

// `Slot::state`: a generation above these bits.
/// A handler runs the closure.
const RUNNING: u64 = 1 << 0;
/// The registration was dropped: whoever clears the last of `RUNNING` and
/// `RETIRED`'s owner frees the closure.  Also set on free slots.
const RETIRED: u64 = 1 << 1;
/// The kernel ended the event (a one-shot delivered, `Action::Unregister`):
/// its id may be another event's, which the handle must leave alone.
const ENDED: u64 = 1 << 2;
const GENERATION_SHIFT: u32 = 3;
/// The generation bits that fit in a cookie, above a 48-bit address.
const COOKIE_GENERATION_MASK: u64 = 0xffff;
const ADDRESS_BITS: u32 = 48;

/// Where a pool registration's closure lives.
///
/// Slots are never freed, only reused (a free list), so that a handler the
/// kernel set up before its registration was dropped -- a frame built,
/// its entry not yet run -- always finds valid memory behind its cookie;
/// it then sees a retired slot, or a newer generation, and skips the
/// closure.  The closure is touched only by whoever set `RUNNING` on a
/// live slot, or by whoever owns a retired one (the table's free list, or
/// the one that saw `RETIRED` and `RUNNING` clear together).
struct Slot {
    state: AtomicU64,
    oneshot: AtomicBool,
    closure: UnsafeCell<Option<Closure>>,
}

// SAFETY: `closure` is only touched by one thread at a time, as the
// protocol on `state` above ensures; the closure itself is `Send`.
unsafe impl Sync for Slot {}

static FREE_SLOTS: crate::sync::Mutex<Vec<&'static Slot>> = crate::sync::Mutex::new(Vec::new());

impl Slot {
    /// A slot for `closure`, live at a new generation.
    fn take(closure: Closure, oneshot: bool) -> (&'static Slot, u64) {
        let slot = FREE_SLOTS.lock().pop().unwrap_or_else(|| {
            Box::leak(Box::new(Slot {
                state: AtomicU64::new(RETIRED),
                oneshot: AtomicBool::new(false),
                closure: UnsafeCell::new(None),
            }))
        });
        assert!(
            (slot as *const Slot as u64) >> ADDRESS_BITS == 0,
            "aem: a pool slot above the 48-bit address space"
        );
        // SAFETY: the slot is retired: no handler touches the closure, and
        // the free list gave it to this thread alone.
        unsafe { *slot.closure.get() = Some(closure) };
        slot.oneshot.store(oneshot, Ordering::Relaxed);
        let generation = (slot.state.load(Ordering::Relaxed) >> GENERATION_SHIFT).wrapping_add(1);
        // Release: a handler that sees the generation sees the closure.
        slot.state
            .store(generation << GENERATION_SHIFT, Ordering::Release);
        (slot, generation)
    }

    fn cookie(&'static self, generation: u64) -> u64 {
        self as *const Slot as u64 | (generation & COOKIE_GENERATION_MASK) << ADDRESS_BITS
    }

    /// The slot and generation a cookie names.
    ///
    /// # Safety
    ///
    /// `cookie` was made by [`Slot::cookie`].
    unsafe fn from_cookie(cookie: u64) -> (&'static Slot, u64) {
        let address = cookie & ((1 << ADDRESS_BITS) - 1);
        // SAFETY: slots are leaked, never freed.
        (
            unsafe { &*(address as *const Slot) },
            cookie >> ADDRESS_BITS,
        )
    }

    /// Free a retired slot whose closure this thread owns.
    fn free(&'static self) {
        // SAFETY: retired, and owned by the caller (see `Slot`).
        let closure = unsafe { (*self.closure.get()).take() };
        drop(closure);
        FREE_SLOTS.lock().push(self);
    }

    /// Mark the slot retired; frees it unless a handler runs the closure,
    /// which then frees it when it returns.
    fn retire(&'static self) {
        if self.state.fetch_or(RETIRED, Ordering::AcqRel) & RUNNING == 0 {
            self.free();
        }
    }
}

/// The entry of every pool handler: finds the closure through the cookie
/// and runs it, unless its registration was dropped meanwhile.
extern "C" fn aem_pool_entry(_id: i64, rec: *const uapi::aem_record, _uc: *mut c_void) -> i64 {
    // SAFETY: the kernel passes a pointer to the record it wrote into the
    // handler's frame, valid for the handler's duration; an accept
    // record's descriptor was installed for this delivery alone.
    let mut record = unsafe { Record::from_raw(&*rec) };
    // SAFETY: every pool event is registered with such a cookie.
    let (slot, generation) = unsafe { Slot::from_cookie(record.cookie) };
    let mut state = slot.state.load(Ordering::Acquire);
    loop {
        let current = (state >> GENERATION_SHIFT) & COOKIE_GENERATION_MASK == generation;
        if !current || state & (RUNNING | RETIRED) != 0 {
            // Dropped (or, with a kernel that broke its promise, running
            // elsewhere): the record is closed, the closure not called.
            return Action::Rearm.raw();
        }
        match slot.state.compare_exchange_weak(
            state,
            state | RUNNING,
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => break,
            Err(now) => state = now,
        }
    }
    // SAFETY: this thread set `RUNNING` on a live slot: the closure is its
    // alone until it clears it.
    let closure = unsafe { (*slot.closure.get()).as_mut() }.expect("a live slot has a closure");
    set_running_pool_event(record.id);
    let action = call_handler(record.id, &mut **closure, &mut record);
    set_running_pool_event(0);
    if slot.oneshot.load(Ordering::Relaxed) || action == Action::Unregister {
        slot.state.fetch_or(ENDED, Ordering::Relaxed);
    }
    let previous = slot.state.fetch_and(!RUNNING, Ordering::AcqRel);
    if previous & RETIRED != 0 {
        slot.free();
    }
    drop(record);
    action.raw()
}

/// A pool event; dropping it unregisters the event and frees its closure
/// (at once, or when a handler running it on a pool thread returns).  It
/// may be dropped on any thread, a pool handler's included.
#[derive(Debug)]
pub struct PoolRegistration {
    id: u32,
    slot: &'static Slot,
    generation: u64,
    /// A copy inherited over `fork()` is inert (see `owner.rs`).
    owner: Owner,
}

impl core::fmt::Debug for Slot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl PoolRegistration {
    /// The registration's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `aem_ctl(op)`, unless the kernel ended the event (`ENOENT`).
    fn ctl(&self, op: u32) -> Result<(), Error> {
        let state = self.slot.state.load(Ordering::Acquire);
        debug_assert_eq!(state >> GENERATION_SHIFT, self.generation);
        if state & ENDED != 0 {
            return Err(Error::Os(Errno(libc::ENOENT)));
        }
        ctl_owned(self.owner, self.id, op, 0)
    }

    /// Deliver the event again after an [`Action::Disarm`] or a disable.
    pub fn enable(&self) -> Result<(), Error> {
        self.ctl(uapi::AEM_CTL_ENABLE)
    }

    /// Stop delivering the event; activations are still counted.
    pub fn disable(&self) -> Result<(), Error> {
        self.ctl(uapi::AEM_CTL_DISABLE)
    }
}

impl Drop for PoolRegistration {
    fn drop(&mut self) {
        // ENOENT: a copy inherited over fork(), or an event the kernel
        // ended.  After this no handler of it starts on a pool thread;
        // one running now frees the closure when it returns.
        let _ = self.ctl(uapi::AEM_CTL_UNREGISTER);
        self.slot.retire();
    }
}

/// One pool thread, as the pool sees it.
#[derive(Debug)]
struct Worker {
    /// Written to stop the thread (its own inline event ends its wait).
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

/// A set of threads that run pool events' handlers (EXEC-3).  Dropping it
/// stops its threads, each once its running handler returns, and waits
/// for them (all but the calling thread, when one of its own handlers
/// drops it).  Pool events outlive it: registered in the process, they
/// wait for the next pool's threads.
///
/// A handler's [`Action`] is applied when it returns: an
/// [`PoolRegistration::enable`] by another thread while the handler runs
/// is undone by its [`Action::Disarm`].  A handler that may race with an
/// enable disables its event with [`PoolRegistration::disable`] (under the
/// lock the enabler takes) and returns [`Action::Rearm`], which leaves a
/// disabled event disabled.
///
/// ```no_run
/// use std::sync::Mutex;
/// use std::time::Duration;
///
/// let pool = aem::Pool::new(4).unwrap();
/// let log = std::sync::Arc::new(Mutex::new(Vec::new()));
/// let seen = log.clone();
/// let _tick = pool
///     .on_event(aem::Source::periodic(Duration::from_millis(10)), aem::Options::new(), move |rec| {
///         // Any Rust works here: locks, printing, allocation.
///         seen.lock().unwrap().push(rec.count);
///         println!("tick on {:?}", std::thread::current().name());
///         aem::Action::Rearm
///     })
///     .unwrap();
/// std::thread::sleep(Duration::from_millis(100));
/// ```
#[derive(Debug)]
pub struct Pool {
    workers: Vec<Worker>,
}

/// Make the calling thread's `aem_wait(KEEPALIVE or SERVE)` return 0: the
/// one a handler interrupted, or else the next.
fn end_wait() {
    // An error (a kernel without the call) leaves the wait on: the pool's
    // drop would then wait for good, but `Pool::new` checked the feature.
    let _ = aem_syscalls::aem_ctl(0, uapi::AEM_CTL_END_WAIT, 0);
}

/// Which idle pool thread the kernel wakes for a pool event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WakeOrder {
    /// The most recently idle thread, as an I/O completion port wakes
    /// threads: its cache and stack are the warmest, and under a light
    /// load the other threads stay asleep.
    #[default]
    MostRecentlyIdle,
    /// The longest idle thread: the threads take events in turn, which
    /// spreads the load evenly (`AEM_WAIT_ROUND_ROBIN`).  In a process
    /// whose pools differ, threads of `MostRecentlyIdle` pools are woken
    /// first.
    RoundRobin,
}

impl WakeOrder {
    fn wait_flags(self) -> u32 {
        match self {
            WakeOrder::MostRecentlyIdle => uapi::AEM_WAIT_SERVE,
            WakeOrder::RoundRobin => uapi::AEM_WAIT_SERVE | uapi::AEM_WAIT_ROUND_ROBIN,
        }
    }
}

/// Serve until [`end_wait`]; what the pool threads run.
fn serve(stop: OwnedFd, order: WakeOrder, ready: std::sync::mpsc::Sender<Result<(), Error>>) {
    let source = Source::fd(stop.as_fd(), FdEvents::IN);
    let registration = attr_for(source, Options::new().oneshot(true)).and_then(|attr| {
        // SAFETY: the handler makes one system call and touches nothing
        // else.
        unsafe {
            register_inline_quiet(attr, |_| {
                end_wait();
                Action::Unregister
            })
        }
    });
    let registration = match registration {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    loop {
        // SAFETY: no pointers are passed.
        match unsafe {
            aem_syscalls::aem_wait(
                core::ptr::null_mut(),
                0,
                core::ptr::null(),
                order.wait_flags(),
            )
        } {
            Ok(_) => break,
            // A signal handler ran on this thread: serve on.
            Err(aem_syscalls::Error::Os(e)) if e.0 == libc::EINTR => continue,
            Err(e) => {
                crate::eprintln!("aem: a pool thread stops serving: {e}");
                break;
            }
        }
    }
    drop(registration);
}

/// A thread or descriptor that could not be made, as its errno.
fn io_error(e: std::io::Error) -> Error {
    Error::Os(Errno(e.raw_os_error().unwrap_or(libc::EIO)))
}

impl Pool {
    /// Start `threads` pool threads (named `aem-pool`), each serving once
    /// this returns, woken most recently idle first.  Fails with `EINVAL`
    /// for 0 threads, with `EOPNOTSUPP` when the kernel has no handler
    /// pools, or as thread creation and registration do.
    pub fn new(threads: usize) -> Result<Pool, Error> {
        Pool::with_wake_order(threads, WakeOrder::MostRecentlyIdle)
    }

    /// As [`Pool::new`], with the threads woken in `order`.
    pub fn with_wake_order(threads: usize, order: WakeOrder) -> Result<Pool, Error> {
        if threads == 0 {
            return Err(Error::Os(Errno(libc::EINVAL)));
        }
        if !crate::features()?.features.contains(FeatureSet::POOL) {
            return Err(Error::Os(Errno(libc::EOPNOTSUPP)));
        }
        let mut pool = Pool {
            workers: Vec::with_capacity(threads),
        };
        for _ in 0..threads {
            let stop = nix::sys::eventfd::EventFd::from_flags(
                nix::sys::eventfd::EfdFlags::EFD_CLOEXEC
                    | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )
            .map_err(|e| Error::Os(Errno(e as i32)))?;
            let stop = OwnedFd::from(stop);
            let theirs = stop.try_clone().map_err(io_error)?;
            let (ready, started) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name("aem-pool".into())
                .spawn(move || serve(theirs, order, ready))
                .map_err(io_error)?;
            pool.workers.push(Worker {
                stop,
                thread: Some(thread),
            });
            // Dropping `pool` on an error stops the threads started.
            started
                .recv()
                .unwrap_or(Err(Error::Os(Errno(libc::ECHILD))))?;
        }
        Ok(pool)
    }

    /// How many threads the pool has.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Register an event whose `handler` runs on a pool thread, any of the
    /// process's pools' (the kernel keeps one pool per process).  The
    /// closure may do what code on any thread may.  One pool thread at a
    /// time runs it: it is `FnMut`, and needs no lock for its own state.
    ///
    /// [`Options::onstack`] is refused (`EINVAL`): pool threads have no
    /// alternate stack.  [`Options::cookie`] is used by this crate.
    pub fn on_event<F>(
        &self,
        source: Source<'_>,
        options: Options,
        handler: F,
    ) -> Result<PoolRegistration, Error>
    where
        F: FnMut(&mut Record) -> Action + Send + 'static,
    {
        if options.onstack {
            return Err(Error::Os(Errno(libc::EINVAL)));
        }
        let mut attr = attr_for(source, options)?;
        let (slot, generation) = Slot::take(Box::new(handler), options.oneshot);
        attr.flags |= uapi::AEM_EV_POOL;
        attr.handler = aem_pool_entry as *const () as u64;
        attr.restorer = restorer_address();
        attr.cookie = slot.cookie(generation);
        // SAFETY: `attr` is a live aem_event_attr of exactly the size passed.
        match unsafe { aem_syscalls::aem_register(&attr, size_of::<uapi::aem_event_attr>(), 0) } {
            Ok(id) => Ok(PoolRegistration {
                id,
                slot,
                generation,
                owner: Owner::current(),
            }),
            Err(e) => {
                slot.retire();
                Err(e.into())
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for worker in &self.workers {
            // An eventfd write of 1 fails only when the counter would
            // overflow, which one write per worker never makes it.
            let _ = nix::unistd::write(&worker.stop, &1u64.to_ne_bytes());
        }
        let me = std::thread::current().id();
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                // Dropped by one of its own handlers: that thread stops
                // once the handler returns; it cannot wait for itself.
                if thread.thread().id() != me {
                    let _ = thread.join();
                }
            }
        }
    }
}
