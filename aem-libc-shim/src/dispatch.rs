//! Handlers that run only where the program asks: the safe mode.
//!
//! [`on_event`] registers a closure for an event that the kernel delivers
//! as a polled record; [`dispatch`] takes the records that are pending and
//! runs their closures on the calling thread, in its ordinary flow.  A
//! closure never interrupts other code, so it may do whatever the thread
//! may: print with `std`, lock a `std::sync::Mutex`, allocate with any
//! allocator, log with any backend.  That is why registering one is safe,
//! where an inline handler ([`crate::register_inline`]) is not.
//!
//! ```no_run
//! use std::time::Duration;
//! use aem::{Action, Options, Source};
//!
//! let tick = Source::periodic(Duration::from_millis(100));
//! let _reg = aem::on_event(tick, Options::new(), |rec| {
//!     println!("tick x{}", rec.count);
//!     Action::Rearm
//! })?;
//! loop {
//!     // Runs the closures of what arrived; records of events registered
//!     // with aem::register come back to the caller.
//!     for other in aem::dispatch(None)? {
//!         println!("not a dispatched event: {other:?}");
//!     }
//! }
//! # Ok::<(), aem::Error>(())
//! ```
//!
//! Records are taken per process: any thread may call [`dispatch`], and a
//! closure runs on whichever thread took its record, one call at a time
//! per event.  [`Options::cookie`] is used by this module and ignored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use aem_syscalls::uapi;

use crate::event::{attr_for, register_attr, Options, Record, Registration, Source};
use crate::inline::{not_handler_safe, Action};
use crate::Error;

type Closure = Box<dyn FnMut(&mut Record) -> Action + Send>;

/// One registration's closure, locked while it runs, so that two threads
/// dispatching records of the same event take turns; and its handle's
/// flag that says the event ended.
type Entry = Arc<(Mutex<Closure>, Arc<AtomicBool>)>;

/// Closures by cookie.  Cookies are never reused, unlike event ids: a
/// record of an event unregistered meanwhile finds nothing.
fn table() -> MutexGuard<'static, HashMap<u64, Entry>> {
    static TABLE: OnceLock<Mutex<HashMap<u64, Entry>>> = OnceLock::new();
    TABLE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

static NEXT_COOKIE: AtomicU64 = AtomicU64::new(1);

/// Records a [`dispatch`] call takes at most.
const BATCH: usize = 64;

/// An event whose closure [`dispatch`] runs; dropping it unregisters the
/// event and frees the closure (once it is not running).  It derefs to
/// its [`Registration`]: [`id`](Registration::id),
/// [`enable`](Registration::enable), [`disable`](Registration::disable),
/// [`set_priority`](Registration::set_priority).
#[derive(Debug)]
pub struct DispatchRegistration {
    registration: Registration,
    cookie: u64,
}

impl core::ops::Deref for DispatchRegistration {
    type Target = Registration;

    fn deref(&self) -> &Registration {
        &self.registration
    }
}

/// Register `handler` to run, from [`dispatch`], for each record of the
/// event `source` with `options`: the safe way to attach a closure to an
/// event, since it runs only where the program calls [`dispatch`], in its
/// ordinary flow.
///
/// Not handler-safe (nor is dropping the handle): both take a `std` lock
/// that the code an inline handler interrupted may hold.
///
/// The closure borrows its [`Record`] mutably: what the record owns -- the
/// connection of a [`Source::accept`] event -- is the closure's to take
/// ([`Record::take_accepted`]); what it leaves is closed when it returns.
///
/// The closure's [`Action`]: `Rearm` keeps the event as it is,
/// `Disarm` disables it (until [`Registration::enable`]),
/// `Unregister` ends it (the handle becomes inert).
pub fn on_event<F>(
    source: Source<'_>,
    options: Options,
    handler: F,
) -> Result<DispatchRegistration, Error>
where
    F: FnMut(&mut Record) -> Action + Send + 'static,
{
    not_handler_safe("aem::on_event");
    let cookie = NEXT_COOKIE.fetch_add(1, Ordering::Relaxed);
    let mut attr = attr_for(source, options)?;
    attr.cookie = cookie;
    // In the table, locked, before the kernel has the registration: a
    // record may be dispatched by another thread as soon as it has.
    let mut table = table();
    let registration = register_attr(&attr)?;
    let ended = registration.ended();
    table.insert(cookie, Arc::new((Mutex::new(Box::new(handler)), ended)));
    Ok(DispatchRegistration {
        registration,
        cookie,
    })
}

impl Drop for DispatchRegistration {
    fn drop(&mut self) {
        // The event is unregistered when `registration` drops, next.  A
        // closure running now (perhaps the one dropping this) is freed
        // when it returns: its dispatcher holds the other reference.
        table().remove(&self.cookie);
    }
}

/// Take the pending polled records of the process (at most 64), waiting
/// up to `timeout` for the first (`None`: for ever), and run the closures
/// of those registered with [`on_event`], in order, on the calling thread.
///
/// Returns the records that belong to no closure -- events registered with
/// [`crate::register`], or unregistered while their record was pending --
/// so that nothing is lost to a caller that mixes the two.  A signal, or an
/// inline handler that runs on this thread, ends the wait with
/// `Error::Os(EINTR)`; an elapsed timeout returns an empty vector.
///
/// Not handler-safe: an inline handler that dispatches would run closures
/// inside the code it interrupted.
pub fn dispatch(timeout: Option<Duration>) -> Result<Vec<Record>, Error> {
    not_handler_safe("aem::dispatch");
    let mut others = Vec::new();
    for mut rec in crate::event::wait(BATCH, timeout)? {
        let entry = table().get(&rec.cookie).cloned();
        let Some(entry) = entry else {
            others.push(rec);
            continue;
        };
        // A closure that panicked poisoned its lock; it runs again all the
        // same, as an inline handler would.
        let action = {
            let mut closure = entry.0.lock().unwrap_or_else(PoisonError::into_inner);
            closure(&mut rec)
        };
        let op = match action {
            Action::Rearm => continue,
            Action::Disarm => uapi::AEM_CTL_DISABLE,
            Action::Unregister => uapi::AEM_CTL_UNREGISTER,
        };
        // Not if the closure dropped its own handle: the id is no longer
        // this event's to act on.
        let mut table = table();
        if table.contains_key(&rec.cookie) && !entry.1.load(Ordering::Acquire) {
            let _ = aem_syscalls::aem_ctl(rec.id as i32, op, 0);
            if op == uapi::AEM_CTL_UNREGISTER {
                // Its id may go to a new event: the handle leaves it be.
                entry.1.store(true, Ordering::Release);
                table.remove(&rec.cookie);
            }
        }
    }
    Ok(others)
}
