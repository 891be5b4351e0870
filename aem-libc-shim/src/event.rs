//! Registering events, and taking them as records (polled delivery).
//!
//! A [`Registration`] is an RAII handle: dropping it unregisters the event.
//! Pending events are taken with [`wait`], highest priority first, then in
//! activation order; repeated activations arrive coalesced in one
//! [`Record`] whose `count` is exact.  [`context_fd`] gives a descriptor
//! that poll, select and epoll see readable while records are pending.

use core::mem::size_of;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use core::time::Duration;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Weak};

use aem_syscalls::uapi;

use crate::owner::Owner;
use crate::socket::{AcceptFlags, StateChange};
use crate::{Errno, Error, SourceKind};

/// A record's "value or -errno" word.
pub(crate) fn errno_or(word: u64) -> Result<u64, Errno> {
    let v = word as i64;
    if v < 0 {
        Err(Errno(-v as i32))
    } else {
        Ok(v as u64)
    }
}

/// Readiness events of an fd source (`EPOLLIN`, `EPOLLOUT`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FdEvents(pub u32);

impl FdEvents {
    /// Readable.
    pub const IN: FdEvents = FdEvents(libc::EPOLLIN as u32);
    /// Writable.
    pub const OUT: FdEvents = FdEvents(libc::EPOLLOUT as u32);
    /// Urgent data.
    pub const PRI: FdEvents = FdEvents(libc::EPOLLPRI as u32);
    /// The peer closed its writing end.
    pub const RDHUP: FdEvents = FdEvents(libc::EPOLLRDHUP as u32);
    /// An error (always reported).
    pub const ERR: FdEvents = FdEvents(libc::EPOLLERR as u32);
    /// Hang-up (always reported).
    pub const HUP: FdEvents = FdEvents(libc::EPOLLHUP as u32);

    /// Whether every event of `other` is in `self`.
    pub const fn contains(self, other: FdEvents) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for FdEvents {
    type Output = FdEvents;
    fn bitor(self, rhs: FdEvents) -> FdEvents {
        FdEvents(self.0 | rhs.0)
    }
}

/// The clock a timer runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Clock {
    /// `CLOCK_MONOTONIC`: does not jump, stops in suspend.
    Monotonic,
    /// `CLOCK_REALTIME`: wall-clock time.
    Realtime,
    /// `CLOCK_BOOTTIME`: monotonic, counting suspend.
    Boottime,
}

impl Clock {
    fn raw(self) -> u32 {
        (match self {
            Clock::Monotonic => libc::CLOCK_MONOTONIC,
            Clock::Realtime => libc::CLOCK_REALTIME,
            Clock::Boottime => libc::CLOCK_BOOTTIME,
        }) as u32
    }
}

/// When a timer first expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expiry {
    /// This long after registration.
    After(Duration),
    /// At this time of its clock (since the clock's epoch).
    At(Duration),
}

/// What an event watches.
#[derive(Debug, Clone, Copy)]
pub enum Source<'fd> {
    /// Readiness of a pollable fd.  The kernel keeps the file open until
    /// the event is unregistered.
    Fd {
        /// The file descriptor.
        fd: BorrowedFd<'fd>,
        /// The events to watch; ERR and HUP are always reported.
        events: FdEvents,
    },
    /// Connections accepted by the kernel on a listening socket, one per
    /// record ([`EventData::Accept`]); level-triggered by nature.  For a
    /// handler that receives each connection as an `OwnedFd`, see
    /// [`crate::on_accept`].
    Accept {
        /// The listening socket.
        fd: BorrowedFd<'fd>,
        /// Flags for each new connection's descriptor.
        flags: AcceptFlags,
    },
    /// A TCP socket's state changes, in order
    /// ([`EventData::SocketState`]).  The kernel holds the socket, not the
    /// descriptor: closing it still closes the connection, and the closing
    /// states are delivered too.
    SocketState {
        /// The TCP socket.
        fd: BorrowedFd<'fd>,
    },
    /// A high-resolution timer.
    Timer {
        /// Its clock.
        clock: Clock,
        /// Its first expiry.
        expiry: Expiry,
        /// Its period after the first expiry; `None` for one shot.
        interval: Option<Duration>,
    },
}

/// The smallest alternate signal stack [`Options::onstack`] accepts: room
/// for the handler frame (up to some 3 KiB of extended FPU state) and a
/// closure that formats, allocates and locks.
pub const ONSTACK_MIN_SIZE: usize = 32 * 1024;

/// How an event is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Options {
    /// 0 (lowest) to 99; higher priorities are delivered first.  An inline
    /// event of priority 1 or more also boosts the thread that runs its
    /// handler: within the fair class below 50, in the real-time band from
    /// 50 (which needs `CAP_SYS_NICE` or `RLIMIT_RTPRIO`, else `EPERM`).
    pub priority: u8,
    /// Unregister after the first delivery.
    pub oneshot: bool,
    /// Fd source: deliver again while the fd stays ready.
    pub level: bool,
    /// Disable after each delivery; [`Registration::enable`] re-arms.
    pub dispatch: bool,
    /// Register disabled.
    pub disabled: bool,
    /// Inline handlers only: run on the thread's alternate signal stack
    /// (`sigaltstack(2)`).  The registering thread must have one of at
    /// least [`ONSTACK_MIN_SIZE`] bytes installed, else registering fails
    /// with `EINVAL`: the one `std` gives each thread, a few pages for its
    /// stack-overflow message, is too small to run a closure on.
    pub onstack: bool,
    /// Inline handlers only: do not boost the thread that runs it.
    pub noboost: bool,
    /// Returned with every record.
    pub cookie: u64,
}

/// A registered event; dropping it unregisters the event.
///
/// Once the kernel has ended the event -- a one-shot event whose record
/// [`wait`] took, or a closure of [`crate::dispatch`] that returned
/// [`Action::Unregister`](crate::Action::Unregister) -- the handle is
/// inert: its calls fail with `ENOENT` and dropping it unregisters
/// nothing, since the kernel may have given its id to a new event.
#[derive(Debug)]
pub struct Registration {
    id: u32,
    /// A copy inherited over `fork()` is inert (see `owner.rs`).
    owner: Owner,
    /// Whether the event is one-shot, and so in [`ONESHOTS`] until its
    /// record is taken.
    oneshot: bool,
    /// Set when the kernel has ended the event.
    ended: Arc<AtomicBool>,
}

/// The one-shot events whose record nobody took yet, by id: [`wait`]
/// marks each ended as it takes its record.  An `aem::sync::Mutex`, since
/// a handler may drop a registration.
static ONESHOTS: crate::sync::Mutex<BTreeMap<u32, Weak<AtomicBool>>> =
    crate::sync::Mutex::new(BTreeMap::new());

/// How many entries [`ONESHOTS`] has: [`wait`] skips the lock at 0.
static ONESHOTS_LEN: AtomicUsize = AtomicUsize::new(0);

/// Mark the one-shot events of `records` ended.
fn end_oneshots(records: &[uapi::aem_record]) {
    if ONESHOTS_LEN.load(Ordering::Acquire) == 0 {
        return;
    }
    let mut oneshots = ONESHOTS.lock();
    for rec in records {
        if let Some(ended) = oneshots.remove(&rec.id) {
            ONESHOTS_LEN.fetch_sub(1, Ordering::Release);
            if let Some(ended) = ended.upgrade() {
                ended.store(true, Ordering::Release);
            }
        }
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The registration attributes for `options`, without a source.
pub(crate) fn attr_base(options: Options) -> uapi::aem_event_attr {
    let mut attr = uapi::aem_event_attr {
        priority: u32::from(options.priority),
        cookie: options.cookie,
        ..Default::default()
    };
    let flags = [
        (options.oneshot, uapi::AEM_EV_ONESHOT),
        (options.level, uapi::AEM_EV_LEVEL),
        (options.dispatch, uapi::AEM_EV_DISPATCH),
        (options.disabled, uapi::AEM_EV_DISABLED),
        (options.onstack, uapi::AEM_EV_ONSTACK),
        (options.noboost, uapi::AEM_EV_NOBOOST),
    ];
    attr.flags = flags
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |f, (_, bit)| f | bit);
    attr
}

/// The registration attributes for `source` and `options` (no handler).
pub(crate) fn attr_for(source: Source<'_>, options: Options) -> uapi::aem_event_attr {
    let mut attr = attr_base(options);
    match source {
        Source::Fd { fd, events } => {
            attr.source = SourceKind::Fd.raw();
            attr.__bindgen_anon_1.fd = uapi::aem_fd_source {
                fd: fd.as_raw_fd(),
                events: events.0,
            };
        }
        Source::Accept { fd, flags } => {
            attr.source = SourceKind::Accept.raw();
            attr.__bindgen_anon_1.accept = uapi::aem_accept_source {
                fd: fd.as_raw_fd(),
                flags: flags.raw(),
            };
        }
        Source::SocketState { fd } => {
            attr.source = SourceKind::SocketState.raw();
            attr.__bindgen_anon_1.socket = uapi::aem_socket_source {
                fd: fd.as_raw_fd(),
                flags: 0,
            };
        }
        Source::Timer {
            clock,
            expiry,
            interval,
        } => {
            attr.source = SourceKind::Timer.raw();
            let (flags, value) = match expiry {
                Expiry::After(d) => (0, d),
                Expiry::At(t) => (uapi::AEM_TIMER_ABSTIME, t),
            };
            attr.__bindgen_anon_1.timer = uapi::aem_timer_source {
                clockid: clock.raw(),
                flags,
                value_ns: ns(value),
                interval_ns: interval.map_or(0, ns),
            };
        }
    }
    attr
}

/// `aem_ctl()` on the event `id` of a handle made by `owner`: `ENOENT`
/// in a `fork()` child, where the id would name another event.
pub(crate) fn ctl_owned(owner: Owner, id: u32, op: u32, arg: u64) -> Result<(), Error> {
    if !owner.is_current() {
        return Err(Error::Os(Errno(libc::ENOENT)));
    }
    aem_syscalls::aem_ctl(id as i32, op, arg)?;
    Ok(())
}

/// Register an event for polled delivery.
pub fn register(source: Source<'_>, options: Options) -> Result<Registration, Error> {
    register_attr(&attr_for(source, options))
}

/// [`register`] for ready-made attributes.
pub(crate) fn register_attr(attr: &uapi::aem_event_attr) -> Result<Registration, Error> {
    let oneshot = attr.flags & uapi::AEM_EV_ONESHOT != 0;
    let ended = Arc::new(AtomicBool::new(false));
    // A one-shot's record may be taken by another thread as soon as the
    // kernel has the event: it is in the table before [`wait`] can look.
    let mut oneshots = oneshot.then(|| ONESHOTS.lock());
    // SAFETY: `attr` is a live aem_event_attr of exactly the size passed.
    let id = unsafe { aem_syscalls::aem_register(attr, size_of::<uapi::aem_event_attr>(), 0) }?;
    if let Some(oneshots) = oneshots.as_mut() {
        if oneshots.insert(id, Arc::downgrade(&ended)).is_none() {
            ONESHOTS_LEN.fetch_add(1, Ordering::Release);
        }
    }
    Ok(Registration {
        id,
        owner: Owner::current(),
        oneshot,
        ended,
    })
}

impl Registration {
    /// The registration's id, as in records and `/proc/<pid>/aem`.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn ctl(&self, op: u32, arg: u64) -> Result<(), Error> {
        if self.ended.load(Ordering::Acquire) {
            return Err(Error::Os(Errno(libc::ENOENT)));
        }
        ctl_owned(self.owner, self.id, op, arg)
    }

    /// The flag that says the kernel ended the event, for
    /// [`crate::dispatch`] to set.
    pub(crate) fn ended(&self) -> Arc<AtomicBool> {
        self.ended.clone()
    }

    /// Take a one-shot event that is still pending out of [`ONESHOTS`].
    fn forget_oneshot(&self) {
        if !self.oneshot || self.ended.load(Ordering::Acquire) {
            return;
        }
        let mut oneshots = ONESHOTS.lock();
        if let Some(entry) = oneshots.get(&self.id) {
            if entry.ptr_eq(&Arc::downgrade(&self.ended)) {
                oneshots.remove(&self.id);
                ONESHOTS_LEN.fetch_sub(1, Ordering::Release);
            }
        }
    }

    /// Deliver the event again; activations counted meanwhile are queued.
    pub fn enable(&self) -> Result<(), Error> {
        self.ctl(uapi::AEM_CTL_ENABLE, 0)
    }

    /// Stop delivering the event; activations are still counted.
    pub fn disable(&self) -> Result<(), Error> {
        self.ctl(uapi::AEM_CTL_DISABLE, 0)
    }

    /// Change the event's priority (0 to 99).
    pub fn set_priority(&self, priority: u8) -> Result<(), Error> {
        self.ctl(uapi::AEM_CTL_SET_PRIORITY, u64::from(priority))
    }

    /// Unregister now, reporting failure (dropping ignores it).
    pub fn unregister(mut self) -> Result<(), Error> {
        let r = self.unregister_now();
        // Unregistered already: what is left is the memory.
        self.ended.store(true, Ordering::Release);
        r
    }

    fn unregister_now(&mut self) -> Result<(), Error> {
        self.forget_oneshot();
        self.ctl(uapi::AEM_CTL_UNREGISTER, 0)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // ENOENT: a one-shot event whose record is on its way (or a copy
        // inherited over fork()).
        let _ = self.unregister_now();
    }
}

/// What a delivered event carries, by source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventData {
    /// Fd readiness: the fd and its ready events.
    Fd {
        /// The registered fd.
        fd: RawFd,
        /// The events that were ready.
        ready: FdEvents,
    },
    /// Timer expiries since the previous delivery, overruns included.
    Timer {
        /// Number of expirations.
        expirations: u64,
    },
    /// An accepted connection, or why accepting failed (`EMFILE`: the
    /// connection waits in the backlog and the event is disabled until
    /// enabled again).  The receiver owns the new descriptor.
    Accept {
        /// The listening socket.
        listener: RawFd,
        /// The new connection's descriptor, or the error.
        conn: Result<RawFd, Errno>,
    },
    /// An asynchronous read into the registration's buffer: the bytes
    /// read, 0 at end of file, or the error.
    Read {
        /// Bytes read, or the error.
        result: Result<usize, Errno>,
    },
    /// One TCP state change.
    SocketState(StateChange),
    /// A source this crate does not know yet.
    Other {
        /// The record's source number.
        source: u32,
        /// Its raw data.
        data: [u64; 2],
    },
}

/// One delivery of a polled event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Record {
    /// The registration's id.
    pub id: u32,
    /// [`Options::cookie`].
    pub cookie: u64,
    /// Activations coalesced into this delivery.
    pub count: u64,
    /// The source's data.
    pub data: EventData,
}

impl From<&uapi::aem_record> for Record {
    fn from(r: &uapi::aem_record) -> Record {
        let data = match r.source {
            s if s == SourceKind::Fd.raw() => EventData::Fd {
                fd: r.data[0] as RawFd,
                ready: FdEvents(r.data[1] as u32),
            },
            s if s == SourceKind::Timer.raw() => EventData::Timer {
                expirations: r.data[0],
            },
            s if s == SourceKind::Accept.raw() => EventData::Accept {
                listener: r.data[1] as RawFd,
                conn: errno_or(r.data[0]).map(|fd| fd as RawFd),
            },
            s if s == SourceKind::Read.raw() => EventData::Read {
                result: errno_or(r.data[0]).map(|n| n as usize),
            },
            s if s == SourceKind::SocketState.raw() => {
                EventData::SocketState(StateChange::from_record(r.data, r.count))
            }
            source => EventData::Other {
                source,
                data: r.data,
            },
        };
        Record {
            id: r.id,
            cookie: r.cookie,
            count: r.count,
            data,
        }
    }
}

/// Wait for pending polled events and take up to `max` of them: at most
/// 1024 a call (`AEM_WAIT_MAX_RECORDS`), a larger `max` takes 1024; 0 is
/// `EINVAL`.  `None` waits for ever; an elapsed timeout gives an empty
/// vector.
/// A signal ends the wait with `Error::Os(EINTR)`.
///
/// Not handler-safe: a handler that waits holds back every other event of
/// its thread.
pub fn wait(max: usize, timeout: Option<Duration>) -> Result<Vec<Record>, Error> {
    crate::not_handler_safe("aem::wait");
    // The kernel takes at most AEM_WAIT_MAX_RECORDS a call: asking for
    // more asks for that many (and allocates no more).
    let max = max.min(uapi::AEM_WAIT_MAX_RECORDS as usize);
    let mut raw = vec![uapi::aem_record::default(); max];
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts.as_ref().map_or(core::ptr::null(), |t| t as *const _);
    let max = u32::try_from(max).unwrap_or(u32::MAX);
    // SAFETY: `raw` holds `max` records; `ts_ptr` is null or points at a
    // live timespec.
    let n = unsafe { aem_syscalls::aem_wait(raw.as_mut_ptr(), max, ts_ptr, 0) }?;
    let raw = &raw[..n as usize];
    end_oneshots(raw);
    Ok(raw.iter().map(Record::from).collect())
}

/// A new descriptor for the process's AEM context, readable while polled
/// records are pending; close-on-exec.
pub fn context_fd() -> Result<OwnedFd, Error> {
    let fd = aem_syscalls::aem_ctl(0, uapi::AEM_CTL_CONTEXT_FD, libc::O_CLOEXEC as u64)?;
    // SAFETY: the kernel just returned this new descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
