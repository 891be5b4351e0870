//! The process's AEM context as a descriptor, and a reusable buffer of
//! records: polled delivery for event loops (poll, epoll, mio, tokio).
//!
//! A [`Context`] owns a descriptor that `poll(2)`, `select(2)` and `epoll`
//! see readable while records are pending; [`Context::try_wait`] takes
//! them without ever blocking, into an [`Events`] buffer that is reused
//! from call to call and allocates nothing once made.
//!
//! ```no_run
//! use std::time::Duration;
//! use aem::{Context, Events, Options, Source};
//!
//! let ctx = Context::new()?;
//! let mut events = Events::with_capacity(64);
//! let _tick = aem::register(Source::after(Duration::from_millis(10)), Options::new())?;
//! // Sit in poll(2), epoll or a runtime on `ctx` (it is `AsFd`); here we
//! // simply block.
//! ctx.wait(&mut events, None)?;
//! for record in &events {
//!     println!("event {} fired {} times", record.id, record.count);
//! }
//! # Ok::<(), aem::Error>(())
//! ```

use core::time::Duration;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use aem_syscalls::uapi;

use crate::event::{context_fd, Record};
use crate::{Errno, Error};

/// What [`Context::try_wait`] returns when no record is pending: `EAGAIN`,
/// which [`std::io::Error`] maps to [`WouldBlock`](std::io::ErrorKind).
pub(crate) const WOULD_BLOCK: Error = Error::Os(Errno(libc::EAGAIN));

/// A reusable buffer of records, filled by [`Context::try_wait`] and
/// [`Context::wait`].
///
/// It holds room for its capacity's worth of raw records, which the kernel
/// writes, and of the [`Record`]s made from them; taking records reuses
/// both, so a loop allocates nothing after the first [`Events::with_capacity`].
/// Each take replaces what the buffer held (the previous records are
/// dropped).  Iterate by reference (`for r in &events`, [`Events::iter`]),
/// or take the records out by value with [`Events::drain`].
pub struct Events {
    /// What the kernel writes: `raw.len()` is the capacity.
    raw: Vec<uapi::aem_record>,
    /// The records of the last take, made from `raw` right after it.
    records: Vec<Record>,
}

impl Events {
    /// A buffer for up to `capacity` records a take: at least 1, at most
    /// 1024 (`AEM_WAIT_MAX_RECORDS`, the most one system call takes), a
    /// capacity outside that range is clamped into it.
    pub fn with_capacity(capacity: usize) -> Events {
        let capacity = capacity.clamp(1, uapi::AEM_WAIT_MAX_RECORDS as usize);
        Events {
            raw: vec![uapi::aem_record::default(); capacity],
            records: Vec::with_capacity(capacity),
        }
    }

    /// The most records one take fills in.
    pub fn capacity(&self) -> usize {
        self.raw.len()
    }

    /// The number of records the buffer holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the buffer holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Drop the records the buffer holds, keeping its room.
    pub fn clear(&mut self) {
        self.records.clear();
    }

    /// The records, in the order the kernel delivered them: highest
    /// priority first, then in activation order.
    pub fn iter(&self) -> core::slice::Iter<'_, Record> {
        self.records.iter()
    }

    /// Take the records out by value, in order, leaving the buffer empty
    /// (and its room allocated).  Records not iterated are dropped.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Record> {
        self.records.drain(..)
    }

    /// One `aem_wait()` into the buffer; returns the number of records.
    /// `None` waits for ever.
    fn fill(&mut self, timeout: Option<&libc::timespec>) -> Result<usize, Error> {
        self.records.clear();
        let max = u32::try_from(self.raw.len()).unwrap_or(uapi::AEM_WAIT_MAX_RECORDS);
        let timeout = timeout.map_or(core::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `raw` holds `max` records, writable; `timeout` is null or
        // points at a live timespec.
        let n = unsafe { aem_syscalls::aem_wait(self.raw.as_mut_ptr(), max, timeout, 0) }?;
        let n = (n as usize).min(self.raw.len());
        let raw = &self.raw[..n];
        crate::event::end_oneshots(raw);
        // No allocation: `records` has room for `raw.len()` records.
        self.records.extend(
            raw.iter()
                // SAFETY: the kernel installed the descriptor of each accept
                // record among these for this call alone; nothing else owns it.
                .map(|r| unsafe { Record::from_raw(r) }),
        );
        Ok(n)
    }
}

impl core::fmt::Debug for Events {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Events")
            .field("capacity", &self.capacity())
            .field("records", &self.records)
            .finish()
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = &'a Record;
    type IntoIter = core::slice::Iter<'a, Record>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The process's AEM context, as a descriptor that `poll(2)`, `select(2)`
/// and `epoll` see readable while records are pending, and the calls that
/// take those records.
///
/// A `Context` is `Send` and `Sync`; threads may share one.  With the
/// feature `mio` it is a `mio::event::Source`; with the feature `tokio`,
/// `AsyncContext` wraps it for tokio.
///
/// # Whose records
///
/// Records are taken per process, not per descriptor or per thread: every
/// [`Context`], [`crate::wait`] and [`crate::dispatch`] of a process takes
/// from the same queue, on any thread, and a record goes to whichever call
/// takes it first.  A program that mixes them decides who takes what.
///
/// # Readiness
///
/// The descriptor is readable exactly while at least one record is
/// pending (level: `poll(2)` says so again until they are taken).  Every
/// event that becomes pending -- queued, not coalesced into a record
/// already pending -- also wakes the descriptor's waiters, so an
/// edge-triggered `epoll` (`EPOLLET`, as mio and tokio register) reports it
/// as a new edge even if other records were pending already.  An
/// activation of an event already pending is counted into its record
/// ([`Record::count`]) and is no new edge.  Edge-triggered users therefore
/// take records until [`Context::try_wait`] says
/// [`WouldBlock`](std::io::ErrorKind::WouldBlock), then wait for the next
/// edge, which is what mio and tokio do.  (An accept or read event is
/// pending until taken, when the kernel acts: if it then finds nothing to
/// do -- another process took the connection -- there is no record, and
/// `try_wait` may say `WouldBlock` although the descriptor polled
/// readable.)
///
/// After `fork()`, an inherited [`Context`] still polls its parent's
/// queue, while [`Context::try_wait`] takes the child's: a child makes its
/// own with [`Context::new`].
#[derive(Debug)]
pub struct Context {
    fd: OwnedFd,
}

impl Context {
    /// A new descriptor for the calling process's context
    /// (`AEM_CTL_CONTEXT_FD`), close-on-exec.
    pub fn new() -> Result<Context, Error> {
        Ok(Context { fd: context_fd()? })
    }

    /// Take the pending records, up to `events`' capacity, without
    /// blocking; returns how many (at least 1).  What `events` held before
    /// is dropped.
    ///
    /// When no record is pending, fails with `Error::Os(EAGAIN)`, which
    /// converts to an [`io::Error`](std::io::Error) of kind
    /// [`WouldBlock`](std::io::ErrorKind::WouldBlock), as a nonblocking
    /// read does: with an edge-triggered poller, wait for readiness again
    /// only after that.
    ///
    /// It polls the descriptor, then, if it is readable, takes the records
    /// with `aem_wait()` and a zero timeout: a zero-timeout `aem_wait()`
    /// that finds nothing still sleeps on a timer in the kernel (some
    /// 150 µs in our guests, against 2 µs for the poll), and a signal that
    /// arrives meanwhile would end it with `EINTR`, which `try_wait` never
    /// returns (it takes again).  Accept and read events act here: the
    /// connection is accepted, the bytes are read, in this call, into this
    /// process.  It never blocks, so an inline handler may call it.
    pub fn try_wait(&self, events: &mut Events) -> Result<usize, Error> {
        events.records.clear();
        if !self.readable()? {
            return Err(WOULD_BLOCK);
        }
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            match events.fill(Some(&zero)) {
                // A queued accept or read that found nothing to do.
                Ok(0) => return Err(WOULD_BLOCK),
                Ok(n) => return Ok(n),
                Err(Error::Os(Errno(libc::EINTR))) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the descriptor polls readable now: records are pending.
    fn readable(&self) -> Result<bool, Error> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: `p` is one valid pollfd, for a descriptor we own.
            let n = unsafe { libc::poll(&mut p, 1, 0) };
            if n >= 0 {
                return Ok(n == 1 && p.revents & libc::POLLIN != 0);
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                e => return Err(Error::Os(Errno(e.unwrap_or(libc::EIO)))),
            }
        }
    }

    /// Wait until records are pending, or `timeout` passes (`None`: for
    /// ever), and take them, up to `events`' capacity; returns how many,
    /// 0 when the timeout passed.  What `events` held before is dropped.
    ///
    /// A signal handler that runs ends the wait with `Error::Os(EINTR)`
    /// (never restarted, like `epoll_wait(2)`).
    ///
    /// Not handler-safe, as [`crate::wait`]: an inline handler that waits
    /// holds back every other event of its thread.
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> Result<usize, Error> {
        crate::not_handler_safe("aem::Context::wait");
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        events.fill(ts.as_ref())
    }
}

impl AsFd for Context {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Context {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<Context> for OwnedFd {
    fn from(ctx: Context) -> OwnedFd {
        ctx.fd
    }
}

/// With the feature `mio`: register the context's descriptor with a
/// `mio::Poll`.  It is only ever readable; mio registers edge-triggered,
/// so take records with [`Context::try_wait`] until it fails with
/// `WouldBlock` after each readable event.
///
/// ```no_run
/// # #[cfg(feature = "mio")] {
/// use mio::{Events as MioEvents, Interest, Poll, Token};
///
/// let mut poll = Poll::new()?;
/// let mut ctx = aem::Context::new()?;
/// poll.registry().register(&mut ctx, Token(0), Interest::READABLE)?;
/// let (mut mio_events, mut records) = (MioEvents::with_capacity(8), aem::Events::with_capacity(64));
/// loop {
///     poll.poll(&mut mio_events, None)?;
///     for ev in mio_events.iter() {
///         if ev.token() == Token(0) {
///             // Edge-triggered: take until WouldBlock.
///             loop {
///                 match ctx.try_wait(&mut records) {
///                     Ok(_) => records.iter().for_each(|r| println!("{r:?}")),
///                     Err(e) => match std::io::Error::from(e) {
///                         e if e.kind() == std::io::ErrorKind::WouldBlock => break,
///                         e => return Err(e),
///                     },
///                 }
///             }
///         }
///     }
/// }
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[cfg(feature = "mio")]
impl mio::event::Source for Context {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> std::io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> std::io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> std::io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_clamped_to_what_one_call_takes() {
        assert_eq!(Events::with_capacity(0).capacity(), 1);
        assert_eq!(Events::with_capacity(64).capacity(), 64);
        assert_eq!(Events::with_capacity(usize::MAX).capacity(), 1024);
        let e = Events::with_capacity(8);
        assert!(e.is_empty());
        assert_eq!(e.len(), 0);
        assert_eq!(e.iter().count(), 0);
    }

    #[test]
    fn would_block_is_an_io_would_block() {
        let e = std::io::Error::from(WOULD_BLOCK);
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }

    #[test]
    fn records_are_made_from_raw_ones_without_allocating() {
        let mut e = Events::with_capacity(4);
        let room = e.records.capacity();
        // What a fill does after the kernel wrote two timer records.
        e.raw[0] = uapi::aem_record {
            id: 3,
            source: crate::SourceKind::Timer.raw(),
            cookie: 7,
            count: 2,
            data: [2, 0],
        };
        e.raw[1] = uapi::aem_record {
            id: 4,
            source: crate::SourceKind::Timer.raw(),
            cookie: 8,
            count: 1,
            data: [1, 0],
        };
        // SAFETY: timer records carry no descriptor.
        e.records
            .extend(e.raw[..2].iter().map(|r| unsafe { Record::from_raw(r) }));
        assert_eq!(e.len(), 2);
        let ids: Vec<u32> = e.iter().map(|r| r.id).collect();
        assert_eq!(ids, [3, 4]);
        assert_eq!((&e).into_iter().map(|r| r.count).sum::<u64>(), 3);
        let drained: Vec<Record> = e.drain().collect();
        assert_eq!(drained.len(), 2);
        assert!(e.is_empty());
        assert_eq!(e.records.capacity(), room, "drain gave the room back");
    }

    #[test]
    fn without_aem_a_take_fails_cleanly() {
        // On a kernel without AEM (the build host) every call says so; on
        // an AEM kernel nothing is pending in this test process.
        let mut e = Events::with_capacity(4);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match e.fill(Some(&zero)) {
            Err(Error::NotAvailable) | Ok(0) => {}
            other => panic!("{other:?}"),
        }
        assert!(e.is_empty());
    }
}
