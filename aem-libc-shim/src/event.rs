//! Registering events, and taking them as records (polled delivery).
//!
//! A [`Registration`] is an RAII handle: dropping it unregisters the event.
//! Pending events are taken with [`wait`], highest priority first, then in
//! activation order; repeated activations arrive coalesced in one
//! [`Record`] whose `count` is exact.  [`context_fd`] gives a descriptor
//! that poll, select and epoll see readable while records are pending.

use core::mem::size_of;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use core::time::Duration;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Weak};

use aem_syscalls::uapi;

use crate::memory_watch::Sharing;
use crate::module_type::ModuleType;
use crate::overload::Pressure;
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

bitflags::bitflags! {
    /// Readiness events of an fd source (`EPOLLIN`, `EPOLLOUT`, ...), a
    /// [`bitflags`] set: combine them with `|`, test them with
    /// [`contains`](FdEvents::contains), and make a set from the kernel's
    /// bits, unknown ones kept, with
    /// [`from_bits_retain`](FdEvents::from_bits_retain).
    ///
    /// ```
    /// use aem::FdEvents;
    ///
    /// let events = FdEvents::IN | FdEvents::RDHUP;
    /// assert!(events.contains(FdEvents::IN));
    /// assert_eq!(FdEvents::from_bits_retain(events.bits()), events);
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct FdEvents: u32 {
        /// Readable (`EPOLLIN`).
        const IN = libc::EPOLLIN as u32;
        /// Urgent data (`EPOLLPRI`).
        const PRI = libc::EPOLLPRI as u32;
        /// Writable (`EPOLLOUT`).
        const OUT = libc::EPOLLOUT as u32;
        /// An error (`EPOLLERR`; always reported).
        const ERR = libc::EPOLLERR as u32;
        /// Hang-up (`EPOLLHUP`; always reported).
        const HUP = libc::EPOLLHUP as u32;
        /// Normal data readable (`EPOLLRDNORM`).
        const RDNORM = libc::EPOLLRDNORM as u32;
        /// Priority band data readable (`EPOLLRDBAND`).
        const RDBAND = libc::EPOLLRDBAND as u32;
        /// Normal data writable (`EPOLLWRNORM`).
        const WRNORM = libc::EPOLLWRNORM as u32;
        /// Priority band data writable (`EPOLLWRBAND`).
        const WRBAND = libc::EPOLLWRBAND as u32;
        /// The peer closed its writing end (`EPOLLRDHUP`).
        const RDHUP = libc::EPOLLRDHUP as u32;
    }
}

/// No events.
impl Default for FdEvents {
    fn default() -> FdEvents {
        FdEvents::empty()
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
///
/// Made with its constructors ([`Source::fd`], [`Source::accept`],
/// [`Source::socket_state`], [`Source::timer`], the timer shorthands
/// [`Source::after`] and [`Source::periodic`], [`Source::process_exit`],
/// [`Source::child_exit`], [`Source::topic`], [`Source::module`],
/// [`Source::overload`] and [`Source::memory_watch`]); the variants are
/// `#[non_exhaustive]`, so that sources and their parameters can grow, and
/// their fields are public to read.
///
/// ```
/// use std::os::fd::AsFd;
/// use std::time::Duration;
/// use aem::{Clock, Expiry, FdEvents, Source};
///
/// let stdin = std::io::stdin();
/// let readable = Source::fd(stdin.as_fd(), FdEvents::IN);
/// let tick = Source::periodic(Duration::from_millis(10));
/// let new_year = Expiry::At(Duration::from_secs(1_893_456_000));
/// let at = Source::timer(Clock::Realtime, new_year, None);
/// # let _ = (readable, tick, at);
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Source<'fd> {
    /// Readiness of a pollable fd ([`Source::fd`]).  The kernel keeps the
    /// file open until the event is unregistered.
    #[non_exhaustive]
    Fd {
        /// The file descriptor.
        fd: BorrowedFd<'fd>,
        /// The events to watch; ERR and HUP are always reported.
        events: FdEvents,
    },
    /// Connections accepted by the kernel on a listening socket, one per
    /// record ([`EventData::Accept`], [`Source::accept`]); level-triggered
    /// by nature.  For a handler that receives each connection as an
    /// `OwnedFd`, see [`crate::on_accept`].
    #[non_exhaustive]
    Accept {
        /// The listening socket.
        fd: BorrowedFd<'fd>,
        /// Flags for each new connection's descriptor.
        flags: AcceptFlags,
    },
    /// A TCP socket's state changes, in order
    /// ([`EventData::SocketState`], [`Source::socket_state`]).  The kernel
    /// holds the socket, not the descriptor: closing it still closes the
    /// connection, and the closing states are delivered too.
    #[non_exhaustive]
    SocketState {
        /// The TCP socket.
        fd: BorrowedFd<'fd>,
    },
    /// A high-resolution timer ([`Source::timer`]).
    #[non_exhaustive]
    Timer {
        /// Its clock.
        clock: Clock,
        /// Its first expiry.
        expiry: Expiry,
        /// Its period after the first expiry; `None` for one shot.
        interval: Option<Duration>,
    },
    /// A process's exit, once, with its status
    /// ([`EventData::ProcessExit`], [`Source::process_exit`],
    /// [`Source::child_exit`]).
    #[non_exhaustive]
    ProcessExit {
        /// The process.
        process: Process<'fd>,
    },
    /// A subscription to a topic: one record per publication, in the
    /// topic's order ([`EventData::Topic`], [`Source::topic`],
    /// [`Topic::source`](crate::Topic::source)).  The kernel holds the
    /// topic, not the descriptor: the subscription outlives it.
    #[non_exhaustive]
    Topic {
        /// A descriptor of the topic, opened for subscribing
        /// ([`TopicOptions::subscribe`](crate::TopicOptions::subscribe)).
        topic: BorrowedFd<'fd>,
    },
    /// Notifications of an event type a driver or module added
    /// ([`EventData::Module`], [`Source::module`]).  The module stays
    /// loaded while the event is registered.
    #[non_exhaustive]
    Module {
        /// The type.
        type_: ModuleType,
    },
    /// Pressure on the CPU, memory or I/O crossed a threshold, and later
    /// cleared ([`EventData::Overload`], [`Source::overload`]).
    #[non_exhaustive]
    Overload {
        /// The PSI trigger.
        pressure: Pressure<'fd>,
    },
    /// A watched 32-bit word changed, as told by a wake after the store
    /// ([`EventData::MemoryWatch`], [`Source::memory_watch`]).
    #[non_exhaustive]
    MemoryWatch {
        /// The word.
        word: &'fd AtomicU32,
        /// Who wakes it.
        sharing: Sharing,
    },
}

/// A process whose exit [`Source::ProcessExit`] watches.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Process<'fd> {
    /// The process a pidfd refers to (`pidfd_open(2)`, `CLONE_PIDFD`):
    /// any process the caller could open one for, child or not.  Not a
    /// thread's pidfd (`PIDFD_THREAD`).
    Pidfd(BorrowedFd<'fd>),
    /// A child of the calling process, by pid.
    Child(libc::pid_t),
}

impl<'fd> Source<'fd> {
    /// Readiness of the pollable `fd`: `events` (ERR and HUP are always
    /// reported).
    pub const fn fd(fd: BorrowedFd<'fd>, events: FdEvents) -> Source<'fd> {
        Source::Fd { fd, events }
    }

    /// Connections the kernel accepts on the listening socket `listener`,
    /// their descriptors made with `flags` (`AcceptFlags::default()`:
    /// close-on-exec); each record owns its connection
    /// ([`EventData::Accept`]).
    pub const fn accept(listener: BorrowedFd<'fd>, flags: AcceptFlags) -> Source<'fd> {
        Source::Accept {
            fd: listener,
            flags,
        }
    }

    /// The TCP state changes of `socket`, in order.
    pub const fn socket_state(socket: BorrowedFd<'fd>) -> Source<'fd> {
        Source::SocketState { fd: socket }
    }

    /// A timer on `clock`, first expiring at `expiry`, then every
    /// `interval` (`None`: once).
    pub const fn timer(clock: Clock, expiry: Expiry, interval: Option<Duration>) -> Source<'fd> {
        Source::Timer {
            clock,
            expiry,
            interval,
        }
    }

    /// A timer that expires once, `delay` after registration
    /// ([`Clock::Monotonic`]).  The event stays registered unless
    /// [`Options::oneshot`] is set.
    pub const fn after(delay: Duration) -> Source<'fd> {
        Source::timer(Clock::Monotonic, Expiry::After(delay), None)
    }

    /// The exit of the process `pidfd` refers to (any process the caller
    /// holds a pidfd of).
    pub const fn process_exit(pidfd: BorrowedFd<'fd>) -> Source<'fd> {
        Source::ProcessExit {
            process: Process::Pidfd(pidfd),
        }
    }

    /// The exit of the calling process's child `pid`.
    pub const fn child_exit(pid: libc::pid_t) -> Source<'fd> {
        Source::ProcessExit {
            process: Process::Child(pid),
        }
    }

    /// A timer that expires every `period` ([`Clock::Monotonic`]), the
    /// first time one `period` after registration.
    pub const fn periodic(period: Duration) -> Source<'fd> {
        Source::timer(Clock::Monotonic, Expiry::After(period), Some(period))
    }

    /// The publications of the topic `topic` is a descriptor of, opened
    /// for subscribing (a [`Topic`](crate::Topic)'s
    /// [`as_fd`](std::os::fd::AsFd::as_fd), or one received from another
    /// process).  Registering fails with `EINVAL` when `topic` is not a
    /// topic, `EBADF` when it was not opened readable.
    pub const fn topic(topic: BorrowedFd<'fd>) -> Source<'fd> {
        Source::Topic { topic }
    }

    /// The notifications of the event type `type_`
    /// ([`ModuleType::by_name`]).  Registering fails with `ENOENT` when
    /// the type does not exist (any more).
    pub const fn module(type_: ModuleType) -> Source<'fd> {
        Source::Module { type_ }
    }

    /// Pressure crossing the threshold of the PSI trigger `pressure`
    /// ([`Pressure`]: CPU, memory or I/O, system-wide or in a cgroup),
    /// and clearing again.  Registering fails with `EINVAL` when PSI
    /// refuses the trigger (a window outside 500 ms to 10 s, or not a
    /// multiple of 2 s without `CAP_SYS_RESOURCE`; a threshold of 0 or
    /// above the window; a time beyond `u32::MAX` microseconds), `EBADF`
    /// when its cgroup is not a cgroup v2 directory, `EOPNOTSUPP` when
    /// the kernel has PSI disabled.
    pub const fn overload(pressure: Pressure<'fd>) -> Source<'fd> {
        Source::Overload { pressure }
    }

    /// Changes of the 32-bit `word`, seen when a writer stores to it and
    /// then wakes it ([`wake_watchers`](crate::wake_watchers) with the
    /// same `sharing`, or any `FUTEX_WAKE` of the word): each record tells
    /// the word's value at delivery and the one the previous record saw
    /// ([`EventData::MemoryWatch`]).  For [`Sharing::Shared`], the word
    /// lies in memory other processes map too.  Registering fails with
    /// `EBUSY` when the word has `AEM_SOURCE_MAX_WATCHES` (1024) watches.
    ///
    /// The registration keeps the word's address, not a borrow of it:
    /// the handles of registrations ([`Registration`] and those of the
    /// other modes) have no lifetime, since the kernel holds what the
    /// other sources name, files and processes, by reference; so `word`
    /// need be borrowed only for the registering call, and the event may
    /// outlive it.  That is sound because only the kernel uses the
    /// address, and only to read the word, with the user-access routines
    /// that fail rather than fault: were the memory freed while watched,
    /// the watch would report whatever lies there then, on wakes of that
    /// address by its new user; once unmapped, `Err(EFAULT)`, and the
    /// event is disabled.  Nothing is ever written through the address.
    /// Keep the word (a `static`, a leaked `Box`, a mapping) as long as
    /// the registration, to get meaningful records.
    pub const fn memory_watch(word: &'fd AtomicU32, sharing: Sharing) -> Source<'fd> {
        Source::MemoryWatch { word, sharing }
    }
}

/// The smallest alternate signal stack [`Options::onstack`] accepts: room
/// for the handler frame (up to some 3 KiB of extended FPU state) and a
/// closure that formats, allocates and locks.
pub const ONSTACK_MIN_SIZE: usize = 32 * 1024;

/// How an event is delivered.
///
/// Made with [`Options::new`] (or `Default`) and its chainable setters, in
/// the style of `std::fs::OpenOptions`; the fields are public to read.
///
/// ```
/// use aem::Options;
///
/// let options = Options::new().priority(10).oneshot(true);
/// assert_eq!((options.priority, options.oneshot, options.level), (10, true, false));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
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

impl Options {
    /// The defaults: priority 0, edge-triggered, delivered every time,
    /// enabled, on the thread's own stack, boosting, cookie 0.
    pub const fn new() -> Options {
        Options {
            priority: 0,
            oneshot: false,
            level: false,
            dispatch: false,
            disabled: false,
            onstack: false,
            noboost: false,
            cookie: 0,
        }
    }

    /// Sets [`priority`](Options#structfield.priority) (0 to 99; the kernel
    /// refuses more with `EINVAL`).
    pub const fn priority(mut self, priority: u8) -> Options {
        self.priority = priority;
        self
    }

    /// Sets [`oneshot`](Options#structfield.oneshot): unregister after the
    /// first delivery.
    pub const fn oneshot(mut self, oneshot: bool) -> Options {
        self.oneshot = oneshot;
        self
    }

    /// Sets [`level`](Options#structfield.level): an fd source is delivered
    /// again while the fd stays ready.
    pub const fn level(mut self, level: bool) -> Options {
        self.level = level;
        self
    }

    /// Sets [`dispatch`](Options#structfield.dispatch): disable after each
    /// delivery.
    pub const fn dispatch(mut self, dispatch: bool) -> Options {
        self.dispatch = dispatch;
        self
    }

    /// Sets [`disabled`](Options#structfield.disabled): register disabled.
    pub const fn disabled(mut self, disabled: bool) -> Options {
        self.disabled = disabled;
        self
    }

    /// Sets [`onstack`](Options#structfield.onstack): run an inline handler
    /// on the thread's alternate signal stack.
    pub const fn onstack(mut self, onstack: bool) -> Options {
        self.onstack = onstack;
        self
    }

    /// Sets [`noboost`](Options#structfield.noboost): an inline handler
    /// does not boost its thread.
    pub const fn noboost(mut self, noboost: bool) -> Options {
        self.noboost = noboost;
        self
    }

    /// Sets [`cookie`](Options#structfield.cookie), returned with every
    /// record.
    pub const fn cookie(mut self, cookie: u64) -> Options {
        self.cookie = cookie;
        self
    }
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
pub(crate) fn end_oneshots(records: &[uapi::aem_record]) {
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

/// The registration attributes for `source` and `options` (no handler);
/// `EINVAL` for source arguments the ABI cannot carry.
pub(crate) fn attr_for(
    source: Source<'_>,
    options: Options,
) -> Result<uapi::aem_event_attr, Error> {
    let mut attr = attr_base(options);
    match source {
        Source::Fd { fd, events } => {
            attr.source = SourceKind::Fd.raw();
            attr.__bindgen_anon_1.fd = uapi::aem_fd_source {
                fd: fd.as_raw_fd(),
                events: events.bits(),
            };
        }
        Source::Accept { fd, flags } => {
            attr.source = SourceKind::Accept.raw();
            attr.__bindgen_anon_1.accept = uapi::aem_accept_source {
                fd: fd.as_raw_fd(),
                flags: flags.bits(),
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
        Source::ProcessExit { process } => {
            attr.source = SourceKind::ProcessExit.raw();
            let (pidfd, pid) = match process {
                Process::Pidfd(fd) => (fd.as_raw_fd(), 0),
                Process::Child(pid) => (-1, pid),
            };
            attr.__bindgen_anon_1.process = uapi::aem_process_source {
                pidfd,
                pid,
                flags: 0,
                reserved: 0,
            };
        }
        Source::Topic { topic } => {
            attr.source = SourceKind::Topic.raw();
            attr.__bindgen_anon_1.topic = uapi::aem_topic_source {
                fd: topic.as_raw_fd(),
                flags: 0,
            };
        }
        Source::Module { type_ } => {
            attr.source = SourceKind::Module.raw();
            attr.__bindgen_anon_1.module = uapi::aem_module_source {
                type_: type_.raw(),
                flags: 0,
            };
        }
        Source::Overload { pressure } => {
            attr.source = SourceKind::Overload.raw();
            attr.__bindgen_anon_1.overload = pressure.raw()?;
        }
        Source::MemoryWatch { word, sharing } => {
            attr.source = SourceKind::MemoryWatch.raw();
            attr.__bindgen_anon_1.memory = uapi::aem_memory_watch_source {
                addr: word.as_ptr() as u64,
                flags: sharing.watch_flags(),
                reserved: 0,
            };
        }
    }
    Ok(attr)
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
    register_attr(&attr_for(source, options)?)
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
///
/// `#[non_exhaustive]`: the sources this crate does not decode yet arrive
/// as [`EventData::Other`], and may get their own variants.
#[derive(Debug)]
#[non_exhaustive]
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
    /// enabled again).
    ///
    /// The record owns the new descriptor: move it out of a record taken
    /// by value (`match rec.data`, [`Record::into_accepted`]) or out of
    /// one borrowed mutably ([`Record::take_accepted`]); a record dropped
    /// with its connection still in closes it.
    Accept {
        /// The listening socket.
        listener: RawFd,
        /// The new connection, or the error.
        conn: Result<OwnedFd, Errno>,
    },
    /// An asynchronous read into the registration's buffer: the bytes
    /// read, 0 at end of file, or the error.
    Read {
        /// Bytes read, or the error.
        result: Result<usize, Errno>,
    },
    /// One TCP state change.
    SocketState(StateChange),
    /// A process exited: its status, as `waitpid(2)` would have given it
    /// (`ExitStatusExt::code`, `::signal`, `::core_dumped` read it), or
    /// `None` when it was reaped before the event was registered and its
    /// status is gone.
    ProcessExit {
        /// How it ended.
        status: Option<ExitStatus>,
    },
    /// A publication to a topic.  The record's `count` is 1, or, when the
    /// subscriber fell more than `AEM_TOPIC_QUEUE` (16) publications
    /// behind, the number of publications this record sums up: `payload`
    /// and `seq` are then the last one's, and the sequence numbers skip
    /// the rest.
    Topic {
        /// What was published.
        payload: u64,
        /// Its number in the topic: 1, 2, ..., the order every subscriber
        /// sees.
        seq: u64,
    },
    /// Notifications of a driver's or module's event type: `count` of
    /// them, their data summed up.
    Module {
        /// The sum of the notifications' data.
        data: u64,
        /// The type notified.
        type_: ModuleType,
    },
    /// The last record of an event on a built-in driver's type that went
    /// away (a device removed): the event is disabled, and will not fire
    /// again.  `count` counts the end too, with the notifications not
    /// delivered before it, whose data `data` sums.  (A module's type
    /// cannot go while it is watched: the registration keeps the module.)
    ModuleGone {
        /// The sum of the data of the notifications counted with the end.
        data: u64,
    },
    /// Pressure crossed the threshold of a [`Source::overload`] trigger,
    /// or cleared: two windows passed without a firing.  `count` is the
    /// activations the record sums up, the firings and the clearing.
    Overload {
        /// The state when the record was delivered: overloaded, or
        /// cleared.
        overloaded: bool,
        /// The trigger's firings the record sums up: at least 1 for an
        /// overloaded record, 0 for a cleared one that sums up the
        /// clearing alone.
        firings: u64,
    },
    /// A watched word changed ([`Source::memory_watch`]).  `count` is the
    /// wakes the record sums up; the changes between two deliveries
    /// coalesce into the last value.
    MemoryWatch {
        /// The word's value at delivery; `Err(EFAULT)` when it could no
        /// longer be read (unmapped), which also disabled the event.
        value: Result<u32, Errno>,
        /// The value the previous record (or the registration) saw.
        previous: u32,
    },
    /// A source this crate does not know yet.
    Other {
        /// The record's source number.
        source: u32,
        /// Its raw data.
        data: [u64; 2],
    },
}

/// The status of a process-exit record: `si_code` and `si_status` in,
/// the wait status `waitpid(2)` gives out.
fn exit_status(data: [u64; 2]) -> Option<ExitStatus> {
    let status = (data[1] & 0xff) as i32;
    // A wait status keeps a signal in 7 bits, where 0 means "exited" and
    // 0x7f "stopped": neither is a signal that killed anything.
    let signal = status & 0x7f;
    let raw = match data[0] as i32 {
        libc::CLD_EXITED => status << 8,
        libc::CLD_KILLED | libc::CLD_DUMPED if signal == 0 || signal == 0x7f => return None,
        libc::CLD_KILLED => signal,
        libc::CLD_DUMPED => signal | 0x80,
        _ => return None,
    };
    Some(ExitStatus::from_raw(raw))
}

/// Equal when of the same source with equal data; two accepted
/// connections are equal when they are the same descriptor.
impl PartialEq for EventData {
    fn eq(&self, other: &EventData) -> bool {
        use EventData as D;
        match (self, other) {
            (D::Fd { fd: a, ready: r }, D::Fd { fd: b, ready: s }) => a == b && r == s,
            (D::Timer { expirations: a }, D::Timer { expirations: b }) => a == b,
            (
                D::Accept {
                    listener: a,
                    conn: c,
                },
                D::Accept {
                    listener: b,
                    conn: d,
                },
            ) => {
                let raw =
                    |c: &Result<OwnedFd, Errno>| c.as_ref().map(AsRawFd::as_raw_fd).map_err(|e| *e);
                a == b && raw(c) == raw(d)
            }
            (D::Read { result: a }, D::Read { result: b }) => a == b,
            (D::SocketState(a), D::SocketState(b)) => a == b,
            (D::ProcessExit { status: a }, D::ProcessExit { status: b }) => a == b,
            (D::Topic { payload: a, seq: c }, D::Topic { payload: b, seq: d }) => a == b && c == d,
            (D::Module { data: a, type_: c }, D::Module { data: b, type_: d }) => a == b && c == d,
            (D::ModuleGone { data: a }, D::ModuleGone { data: b }) => a == b,
            (
                D::Overload {
                    overloaded: a,
                    firings: c,
                },
                D::Overload {
                    overloaded: b,
                    firings: d,
                },
            ) => a == b && c == d,
            (
                D::MemoryWatch {
                    value: a,
                    previous: c,
                },
                D::MemoryWatch {
                    value: b,
                    previous: d,
                },
            ) => a == b && c == d,
            (D::Other { source: a, data: c }, D::Other { source: b, data: d }) => a == b && c == d,
            _ => false,
        }
    }
}

impl Eq for EventData {}

/// One delivery of an event.
///
/// Not `Clone`: an accept record owns the connection it carries (see
/// [`EventData::Accept`]).
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
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

/// What an accept record leaves in place of the connection taken out of
/// it.
const TAKEN: Errno = Errno(libc::EBADF);

impl Record {
    /// Decode a record as the kernel writes it (`struct aem_record`).
    ///
    /// A descriptor number that cannot be one (above `i32::MAX`) decodes
    /// as `Err(EBADF)`.
    ///
    /// # Safety
    ///
    /// If `raw` is an accept record carrying a descriptor (its `source` is
    /// `AEM_SOURCE_ACCEPT` and `data[0]` is not a negative errno), that
    /// descriptor must be open and owned by the caller, who hands it over
    /// to the record: nothing else may close or own it, and the record
    /// closes it when dropped.  The records `aem_wait(2)` fills and the
    /// one an inline handler's frame holds are such: the kernel installed
    /// each accepted descriptor for that delivery alone.
    pub unsafe fn from_raw(raw: &uapi::aem_record) -> Record {
        let r = raw;
        let data = match r.source {
            s if s == SourceKind::Fd.raw() => EventData::Fd {
                fd: r.data[0] as RawFd,
                ready: FdEvents::from_bits_retain(r.data[1] as u32),
            },
            s if s == SourceKind::Timer.raw() => EventData::Timer {
                expirations: r.data[0],
            },
            s if s == SourceKind::Accept.raw() => EventData::Accept {
                listener: r.data[1] as RawFd,
                conn: errno_or(r.data[0]).and_then(|fd| {
                    let fd = RawFd::try_from(fd).map_err(|_| Errno(libc::EBADF))?;
                    // SAFETY: `fd` is in 0..=i32::MAX, and our caller
                    // hands over its ownership.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                }),
            },
            s if s == SourceKind::Read.raw() => EventData::Read {
                result: errno_or(r.data[0]).map(|n| n as usize),
            },
            s if s == SourceKind::SocketState.raw() => {
                EventData::SocketState(StateChange::from_record(r.data, r.count))
            }
            s if s == SourceKind::ProcessExit.raw() => EventData::ProcessExit {
                status: exit_status(r.data),
            },
            s if s == SourceKind::Topic.raw() => EventData::Topic {
                payload: r.data[0],
                seq: r.data[1],
            },
            // Type 0 names no type: the end of a built-in driver's type.
            s if s == SourceKind::Module.raw() && r.data[1] == 0 => {
                EventData::ModuleGone { data: r.data[0] }
            }
            s if s == SourceKind::Module.raw() => EventData::Module {
                data: r.data[0],
                // A type number is a u32: the kernel zero-extends it.
                type_: ModuleType::from_raw(r.data[1] as u32),
            },
            s if s == SourceKind::Overload.raw() => EventData::Overload {
                overloaded: r.data[0] != 0,
                firings: r.data[1],
            },
            // A u32 read from user memory, zero-extended, or -EFAULT.
            s if s == SourceKind::MemoryWatch.raw() => EventData::MemoryWatch {
                value: errno_or(r.data[0]).map(|v| v as u32),
                previous: r.data[1] as u32,
            },
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

    /// Take the accepted connection out of an accept record, if it still
    /// holds one; `conn` is then `Err(EBADF)`.  For a handler, which
    /// borrows its record: a connection it does not take is closed when
    /// it returns.
    pub fn take_accepted(&mut self) -> Option<OwnedFd> {
        match &mut self.data {
            EventData::Accept {
                conn: conn @ Ok(_), ..
            } => core::mem::replace(conn, Err(TAKEN)).ok(),
            _ => None,
        }
    }

    /// The accepted connection of an accept record, if it holds one.
    pub fn into_accepted(self) -> Option<OwnedFd> {
        match self.data {
            EventData::Accept { conn: Ok(fd), .. } => Some(fd),
            _ => None,
        }
    }

    /// The connection or error of an accept record, taken out of it as
    /// [`take_accepted`](Record::take_accepted) does.
    pub(crate) fn take_accept_result(&mut self) -> Option<Result<OwnedFd, Errno>> {
        match &mut self.data {
            EventData::Accept { conn, .. } => Some(core::mem::replace(conn, Err(TAKEN))),
            _ => None,
        }
    }
}

/// Wait for pending polled events and take up to `max` of them (the
/// records own what they carry: see [`EventData::Accept`]): at most
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
    Ok(raw
        .iter()
        // SAFETY: the kernel installed the descriptor of each accept
        // record among these for this call alone; nothing else owns it.
        .map(|r| unsafe { Record::from_raw(r) })
        .collect())
}

/// A new descriptor for the process's AEM context, readable while polled
/// records are pending; close-on-exec.
pub fn context_fd() -> Result<OwnedFd, Error> {
    let fd = aem_syscalls::aem_ctl(0, uapi::AEM_CTL_CONTEXT_FD, libc::O_CLOEXEC as u64)?;
    // SAFETY: the kernel just returned this new descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, IntoRawFd};

    #[test]
    fn options_builders_set_each_field() {
        assert_eq!(Options::new(), Options::default());
        let o = Options::new()
            .priority(42)
            .oneshot(true)
            .level(true)
            .dispatch(true)
            .disabled(true)
            .onstack(true)
            .noboost(true)
            .cookie(7);
        let attr = attr_base(o);
        assert_eq!((attr.priority, attr.cookie), (42, 7));
        let all = uapi::AEM_EV_ONESHOT
            | uapi::AEM_EV_LEVEL
            | uapi::AEM_EV_DISPATCH
            | uapi::AEM_EV_DISABLED
            | uapi::AEM_EV_ONSTACK
            | uapi::AEM_EV_NOBOOST;
        assert_eq!(attr.flags, all);
        assert_eq!(
            attr_base(o.oneshot(false)).flags,
            all & !uapi::AEM_EV_ONESHOT
        );
        assert_eq!(attr_base(Options::new()).flags, 0);
    }

    #[test]
    fn timer_shorthands_are_monotonic_timers() {
        let ms = Duration::from_millis(5);
        // SAFETY: reading the union member attr_for just wrote.
        let timer =
            |s: Source<'_>| unsafe { attr_for(s, Options::new()).unwrap().__bindgen_anon_1.timer };
        let t = timer(Source::periodic(ms));
        assert_eq!(t.clockid, libc::CLOCK_MONOTONIC as u32);
        assert_eq!(
            (t.flags, t.value_ns, t.interval_ns),
            (0, 5_000_000, 5_000_000)
        );
        let t = timer(Source::after(ms));
        assert_eq!((t.value_ns, t.interval_ns), (5_000_000, 0));
        let t = timer(Source::timer(Clock::Boottime, Expiry::At(ms), None));
        assert_eq!(t.clockid, libc::CLOCK_BOOTTIME as u32);
        assert_eq!(t.flags, uapi::AEM_TIMER_ABSTIME);
    }

    #[test]
    fn fd_events_keep_unknown_bits() {
        let raw = libc::EPOLLIN as u32 | 1 << 30;
        let ev = FdEvents::from_bits_retain(raw);
        assert!(ev.contains(FdEvents::IN));
        assert_eq!(ev.bits(), raw);
        assert_eq!(FdEvents::default(), FdEvents::empty());
    }

    #[test]
    fn topic_and_module_sources_fill_their_arguments() {
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2");
        let attr = attr_for(Source::topic(r.as_fd()), Options::new().priority(3)).unwrap();
        assert_eq!(attr.source, uapi::aem_source_kind::AEM_SOURCE_TOPIC);
        // SAFETY: reading the union member attr_for just wrote.
        let topic = unsafe { attr.__bindgen_anon_1.topic };
        assert_eq!((topic.fd, topic.flags), (r.as_raw_fd(), 0));
        // SAFETY: the raw view of the same union: the rest stays 0.
        assert!(unsafe { attr.__bindgen_anon_1.raw }[1..]
            .iter()
            .all(|&w| w == 0));
        let attr = attr_for(Source::module(ModuleType::from_raw(9)), Options::new()).unwrap();
        assert_eq!(attr.source, uapi::aem_source_kind::AEM_SOURCE_MODULE);
        // SAFETY: reading the union member attr_for just wrote.
        let module = unsafe { attr.__bindgen_anon_1.module };
        assert_eq!((module.type_, module.flags), (9, 0));
    }

    #[test]
    fn overload_and_memory_watch_sources_fill_their_arguments() {
        let ms = Duration::from_millis;
        let cpu = Pressure::new(crate::Resource::Cpu, ms(50), ms(500));
        let attr = attr_for(Source::overload(cpu), Options::new().cookie(2)).unwrap();
        assert_eq!(attr.source, uapi::aem_source_kind::AEM_SOURCE_OVERLOAD);
        assert_eq!(attr.cookie, 2);
        // SAFETY: reading the union member attr_for just wrote.
        let o = unsafe { attr.__bindgen_anon_1.overload };
        assert_eq!(
            (
                o.resource,
                o.flags,
                o.threshold_us,
                o.window_us,
                o.cgroup_fd
            ),
            (uapi::AEM_OVERLOAD_CPU, 0, 50_000, 500_000, -1)
        );
        // SAFETY: the raw view of the same union: the rest stays 0.
        assert!(unsafe { attr.__bindgen_anon_1.raw }[3..]
            .iter()
            .all(|&w| w == 0));
        // A time the ABI cannot carry is refused, in every mode.
        let long = Pressure::new(crate::Resource::Io, ms(50), Duration::from_secs(1 << 40));
        let einval = Error::Os(Errno(libc::EINVAL));
        assert!(matches!(
            attr_for(Source::overload(long), Options::new()),
            Err(e) if e == einval
        ));
        assert_eq!(
            register(Source::overload(long), Options::new()).unwrap_err(),
            einval
        );

        let word = AtomicU32::new(3);
        for (sharing, flags) in [
            (Sharing::Private, 0),
            (Sharing::Shared, uapi::AEM_WATCH_SHARED),
        ] {
            let attr = attr_for(Source::memory_watch(&word, sharing), Options::new()).unwrap();
            assert_eq!(attr.source, uapi::aem_source_kind::AEM_SOURCE_MEMORY_WATCH);
            // SAFETY: reading the union member attr_for just wrote.
            let m = unsafe { attr.__bindgen_anon_1.memory };
            assert_eq!(
                (m.addr, m.flags, m.reserved),
                (word.as_ptr() as u64, flags, 0)
            );
            // SAFETY: the raw view of the same union: the rest stays 0.
            assert!(unsafe { attr.__bindgen_anon_1.raw }[2..]
                .iter()
                .all(|&w| w == 0));
        }
    }

    fn decode(source: u32, count: u64, data: [u64; 2]) -> Record {
        let raw = uapi::aem_record {
            id: 4,
            source,
            cookie: 5,
            count,
            data,
        };
        // SAFETY: not an accept record: it carries no descriptor.
        unsafe { Record::from_raw(&raw) }
    }

    #[test]
    fn topic_and_module_records_decode() {
        use uapi::aem_source_kind as k;
        let rec = decode(k::AEM_SOURCE_TOPIC, 7, [u64::MAX, 40]);
        assert_eq!(
            (rec.count, rec.data),
            (
                7,
                EventData::Topic {
                    payload: u64::MAX,
                    seq: 40
                }
            )
        );
        let rec = decode(k::AEM_SOURCE_MODULE, 2, [8, 3]);
        assert_eq!(
            rec.data,
            EventData::Module {
                data: 8,
                type_: ModuleType::from_raw(3)
            }
        );
        let rec = decode(k::AEM_SOURCE_MODULE, 3, [8, 0]);
        assert_eq!(
            (rec.count, rec.data),
            (3, EventData::ModuleGone { data: 8 })
        );
        assert_ne!(
            EventData::Module {
                data: 8,
                type_: ModuleType::from_raw(3)
            },
            EventData::ModuleGone { data: 8 }
        );
        assert_ne!(
            EventData::Topic { payload: 1, seq: 2 },
            EventData::Topic { payload: 1, seq: 3 }
        );
    }

    #[test]
    fn overload_records_decode() {
        use uapi::aem_source_kind as k;
        let rec = decode(k::AEM_SOURCE_OVERLOAD, 1, [1, 3]);
        assert_eq!(
            (rec.count, rec.data),
            (
                1,
                EventData::Overload {
                    overloaded: true,
                    firings: 3
                }
            )
        );
        let rec = decode(k::AEM_SOURCE_OVERLOAD, 2, [0, 0]);
        assert_eq!(
            rec.data,
            EventData::Overload {
                overloaded: false,
                firings: 0
            }
        );
        assert_ne!(
            EventData::Overload {
                overloaded: true,
                firings: 1
            },
            EventData::Overload {
                overloaded: false,
                firings: 1
            }
        );
    }

    #[test]
    fn memory_watch_records_decode_values_and_efault() {
        use uapi::aem_source_kind as k;
        let rec = decode(k::AEM_SOURCE_MEMORY_WATCH, 3, [13, 10]);
        assert_eq!(
            (rec.count, rec.data),
            (
                3,
                EventData::MemoryWatch {
                    value: Ok(13),
                    previous: 10
                }
            )
        );
        // The whole u32 range, zero-extended by the kernel.
        let rec = decode(k::AEM_SOURCE_MEMORY_WATCH, 1, [u64::from(u32::MAX), 0]);
        assert_eq!(
            rec.data,
            EventData::MemoryWatch {
                value: Ok(u32::MAX),
                previous: 0
            }
        );
        let efault = -(libc::EFAULT as i64) as u64;
        let rec = decode(k::AEM_SOURCE_MEMORY_WATCH, 1, [efault, 7]);
        assert_eq!(
            rec.data,
            EventData::MemoryWatch {
                value: Err(Errno(libc::EFAULT)),
                previous: 7
            }
        );
        assert_ne!(
            EventData::MemoryWatch {
                value: Ok(1),
                previous: 2
            },
            EventData::MemoryWatch {
                value: Ok(1),
                previous: 3
            }
        );
    }

    fn accept_record(d0: u64) -> uapi::aem_record {
        uapi::aem_record {
            id: 1,
            source: SourceKind::Accept.raw(),
            cookie: 0,
            count: 1,
            data: [d0, 3],
        }
    }

    /// A pipe whose write end is handed to `f`; whether its read end then
    /// sees end of file (every write end closed).  Blocks while a write end
    /// is open: a leak hangs the test rather than passing it.
    fn write_end_closed_by(f: impl FnOnce(OwnedFd)) -> bool {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2");
        f(w);
        nix::unistd::read(&r, &mut [0u8]) == Ok(0)
    }

    #[test]
    fn an_accept_record_owns_and_closes_its_descriptor() {
        assert!(write_end_closed_by(|w| {
            let raw = accept_record(w.into_raw_fd() as u64);
            // SAFETY: the descriptor is ours, handed over to the record.
            let rec = unsafe { Record::from_raw(&raw) };
            assert!(matches!(
                rec.data,
                EventData::Accept {
                    listener: 3,
                    conn: Ok(_)
                }
            ));
            drop(rec);
        }));
        // Taken out, it is the taker's: the record no longer closes it.
        assert!(write_end_closed_by(|w| {
            let fd = w.into_raw_fd();
            // SAFETY: as above.
            let mut rec = unsafe { Record::from_raw(&accept_record(fd as u64)) };
            let conn = rec.take_accepted().expect("a connection");
            assert_eq!(conn.as_raw_fd(), fd);
            assert!(rec.take_accepted().is_none());
            assert!(matches!(
                rec.data,
                EventData::Accept {
                    conn: Err(TAKEN),
                    ..
                }
            ));
            drop(rec);
            // SAFETY: F_GETFD on the descriptor `conn` owns.
            assert_ne!(unsafe { libc::fcntl(conn.as_raw_fd(), libc::F_GETFD) }, -1);
            drop(conn);
        }));
    }

    #[test]
    fn accept_errors_and_impossible_descriptors_decode_as_errors() {
        // SAFETY: no descriptor is carried.
        let rec = unsafe { Record::from_raw(&accept_record(-(libc::EMFILE as i64) as u64)) };
        assert!(rec.into_accepted().is_none());
        // SAFETY: as above: not a descriptor number.
        let rec = unsafe { Record::from_raw(&accept_record(1 << 40)) };
        assert!(matches!(
            rec.data,
            EventData::Accept {
                conn: Err(Errno(libc::EBADF)),
                ..
            }
        ));
    }
}
