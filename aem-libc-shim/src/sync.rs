//! Locks that handlers and the main flow can share.
//!
//! With an ordinary lock, a handler that interrupts its own thread while
//! the main flow holds the lock waits for ever: the holder cannot run
//! until the handler returns.  The locks of this module open a critical
//! section ([`crate::critical_section`]) before they take the lock and
//! close it after the release, so while a thread holds one, that thread's
//! events wait instead: a handler never finds its own thread holding the
//! lock.  Against other threads they are ordinary locks, and a handler may
//! wait for another thread's holder like any code.
//!
//! They are [`lock_api`] locks, with its whole API: [`Mutex`] (with
//! [`MutexGuard::map`] and the timed [`Mutex::try_lock_for`] and
//! [`Mutex::try_lock_until`]), [`RwLock`] (with
//! [`RwLockWriteGuard::downgrade`] and timed variants), and the mapped
//! guards.  There is no poisoning: a handler that panics aborts the
//! program, and a main flow that panics while holding a lock leaves the
//! data as it was, as with `parking_lot`.
//!
//! ```
//! static HITS: aem::sync::Mutex<Vec<u32>> = aem::sync::Mutex::new(Vec::new());
//!
//! HITS.lock().push(7);
//! // While a guard lives, this thread's inline handlers wait.
//! let first = aem::sync::MutexGuard::map(HITS.lock(), |v| &mut v[0]);
//! assert_eq!(*first, 7);
//! ```
//!
//! # The raw locks
//!
//! Under the critical section, [`RawMutex`] and [`RawRwLock`] are futex
//! locks of their own (the design of `std`'s on Linux: an atomic word,
//! a short spin, then `FUTEX_WAIT`), not `parking_lot`'s: a lock that a
//! handler may take must have no per-thread state and no global table.
//! `parking_lot_core` parks threads through a thread-local record and a
//! global hash table of queues guarded by its own word locks; a handler
//! that waited for a contended lock while the code it interrupted was
//! parking on any `parking_lot` lock (the program's own, or a library's)
//! would reuse the thread's record that is already queued, or spin for a
//! bucket lock its own thread holds; and the record's first use allocates
//! and registers a thread-local destructor, which calls the C library's
//! `malloc`.  These locks touch nothing but their own words, and make no
//! system call unless they wait or wake; they keep `errno`.
//!
//! Waiting is done inside the critical section: a thread that waits for a
//! lock another thread holds runs its handlers only once it has taken and
//! released the lock.
//!
//! # Sections and guards
//!
//! Critical sections nest and are counted per thread, so each guard
//! closes, on its thread, exactly the section its lock opened: the guards
//! are not `Send` (`lock_api::GuardNoSend`).  A failed `try_lock` closes
//! the section it opened before it returns.  Leaking a guard
//! ([`core::mem::forget`], [`MutexGuard::leak`]) leaves the lock held and
//! the section open, so the thread's events wait for good (in debug
//! builds, a handler that returns with a section open aborts the program
//! with a message); the `unsafe` `force_unlock` functions must be called
//! on the thread that took the lock.

use core::sync::atomic::AtomicU32;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use crate::critical::{enter, exit};

/// A mutual-exclusion lock whose holder defers its thread's events (see
/// [the module](self)).  `const`-constructible, so it can be a `static`.
pub type Mutex<T> = lock_api::Mutex<RawMutex, T>;

/// The guard of a locked [`Mutex`]: the lock is released, and then the
/// thread's waiting events run, when it is dropped.
pub type MutexGuard<'a, T> = lock_api::MutexGuard<'a, RawMutex, T>;

/// A [`MutexGuard`] narrowed to a part of the data ([`MutexGuard::map`]).
pub type MappedMutexGuard<'a, T> = lock_api::MappedMutexGuard<'a, RawMutex, T>;

/// A reader-writer lock whose holders, readers and writers alike, defer
/// their thread's events (see [the module](self)).  Writers have
/// priority: once one waits, new readers wait behind it.
pub type RwLock<T> = lock_api::RwLock<RawRwLock, T>;

/// The guard of a read-locked [`RwLock`].
pub type RwLockReadGuard<'a, T> = lock_api::RwLockReadGuard<'a, RawRwLock, T>;

/// The guard of a write-locked [`RwLock`].
pub type RwLockWriteGuard<'a, T> = lock_api::RwLockWriteGuard<'a, RawRwLock, T>;

/// A [`RwLockReadGuard`] narrowed to a part of the data.
pub type MappedRwLockReadGuard<'a, T> = lock_api::MappedRwLockReadGuard<'a, RawRwLock, T>;

/// A [`RwLockWriteGuard`] narrowed to a part of the data.
pub type MappedRwLockWriteGuard<'a, T> = lock_api::MappedRwLockWriteGuard<'a, RawRwLock, T>;

/// How long to spin on a held lock before sleeping (`std`'s figure).
const SPIN: u32 = 100;

/// The raw lock under [`Mutex`]: a critical section around a futex lock.
/// Use it through [`Mutex`]; it is public because the alias names it.
#[derive(Debug)]
pub struct RawMutex {
    /// 0 unlocked, 1 locked, 2 locked with (maybe) sleepers.
    futex: AtomicU32,
}

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

impl RawMutex {
    fn acquire(&self) -> bool {
        self.futex
            .compare_exchange(UNLOCKED, LOCKED, Acquire, Relaxed)
            .is_ok()
    }

    /// Take the contended lock, waiting at most until `deadline`; whether
    /// it was taken.
    #[cold]
    fn acquire_slow(&self, deadline: Option<Instant>) -> bool {
        let mut state = self.spin();
        if state == UNLOCKED {
            match self
                .futex
                .compare_exchange(UNLOCKED, LOCKED, Acquire, Relaxed)
            {
                Ok(_) => return true,
                Err(s) => state = s,
            }
        }
        loop {
            // Mark it contended (our unlock will then wake a sleeper); if
            // it was free meanwhile, it is ours.
            if state != CONTENDED && self.futex.swap(CONTENDED, Acquire) == UNLOCKED {
                return true;
            }
            if !futex_wait(&self.futex, CONTENDED, deadline) {
                // Timed out.  The word may stay CONTENDED with nobody
                // asleep: the next unlock then makes one needless wake.
                return false;
            }
            state = self.spin();
        }
    }

    fn spin(&self) -> u32 {
        let mut spin = SPIN;
        loop {
            let state = self.futex.load(Relaxed);
            if state != LOCKED || spin == 0 {
                return state;
            }
            core::hint::spin_loop();
            spin -= 1;
        }
    }

    /// Lock, in the section the caller opened.
    fn lock_until(&self, deadline: Option<Instant>) -> bool {
        self.acquire() || self.acquire_slow(deadline)
    }
}

// SAFETY: the futex word admits one holder: it is taken only by a
// compare-exchange or swap from UNLOCKED, and released by the holder.
// Every successful lock opens exactly one critical section on the locking
// thread and its unlock closes it there (guards are not Send); a failed
// attempt closes the section it opened.
unsafe impl lock_api::RawMutex for RawMutex {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: RawMutex = RawMutex {
        futex: AtomicU32::new(UNLOCKED),
    };

    type GuardMarker = lock_api::GuardNoSend;

    #[inline]
    fn lock(&self) {
        enter();
        if !self.acquire() {
            self.acquire_slow(None);
        }
    }

    #[inline]
    fn try_lock(&self) -> bool {
        enter();
        let locked = self.acquire();
        if !locked {
            exit();
        }
        locked
    }

    #[inline]
    unsafe fn unlock(&self) {
        if self.futex.swap(UNLOCKED, Release) == CONTENDED {
            futex_wake(&self.futex, 1);
        }
        // After the release: the events that waited run with the lock
        // free.
        exit();
    }

    #[inline]
    fn is_locked(&self) -> bool {
        self.futex.load(Relaxed) != UNLOCKED
    }
}

// SAFETY: as for RawMutex; a timed attempt that fails closes its section.
unsafe impl lock_api::RawMutexTimed for RawMutex {
    type Duration = Duration;
    type Instant = Instant;

    fn try_lock_for(&self, timeout: Duration) -> bool {
        // A timeout too far to represent waits for ever.
        self.try_lock_until_opt(Instant::now().checked_add(timeout))
    }

    fn try_lock_until(&self, timeout: Instant) -> bool {
        self.try_lock_until_opt(Some(timeout))
    }
}

impl RawMutex {
    fn try_lock_until_opt(&self, deadline: Option<Instant>) -> bool {
        enter();
        let locked = self.lock_until(deadline);
        if !locked {
            exit();
        }
        locked
    }
}

/// The raw lock under [`RwLock`]: a critical section around a futex
/// reader-writer lock (a port of `std`'s, which prefers writers).  Use it
/// through [`RwLock`]; it is public because the alias names it.
#[derive(Debug)]
pub struct RawRwLock {
    /// Bits 0..30: 0 unlocked, N readers, or [`WRITE_LOCKED`]; bit 30:
    /// readers wait on this word; bit 31: writers wait on `writer_notify`.
    state: AtomicU32,
    /// Bumped on every wake-up of a writer, which sleeps on it.
    writer_notify: AtomicU32,
}

const READ_LOCKED: u32 = 1;
const MASK: u32 = (1 << 30) - 1;
const WRITE_LOCKED: u32 = MASK;
const DOWNGRADE: u32 = READ_LOCKED.wrapping_sub(WRITE_LOCKED);
const MAX_READERS: u32 = MASK - 1;
const READERS_WAITING: u32 = 1 << 30;
const WRITERS_WAITING: u32 = 1 << 31;

fn is_unlocked(state: u32) -> bool {
    state & MASK == 0
}

fn is_write_locked(state: u32) -> bool {
    state & MASK == WRITE_LOCKED
}

fn has_readers_waiting(state: u32) -> bool {
    state & READERS_WAITING != 0
}

fn has_writers_waiting(state: u32) -> bool {
    state & WRITERS_WAITING != 0
}

/// A reader may take it: not write-locked, room for one more reader, and
/// nobody waiting (writers first).
fn is_read_lockable(state: u32) -> bool {
    state & MASK < MAX_READERS && !has_readers_waiting(state) && !has_writers_waiting(state)
}

/// A reader woken by a downgrade may join the downgraded holder even if
/// writers wait (or the downgrade would serve nobody).
fn is_read_lockable_after_wakeup(state: u32) -> bool {
    state & MASK < MAX_READERS
        && !has_readers_waiting(state)
        && !is_write_locked(state)
        && !is_unlocked(state)
}

impl RawRwLock {
    fn try_read(&self) -> bool {
        self.state
            .fetch_update(Acquire, Relaxed, |s| {
                is_read_lockable(s).then_some(s + READ_LOCKED)
            })
            .is_ok()
    }

    fn read_until(&self, deadline: Option<Instant>) -> bool {
        let state = self.state.load(Relaxed);
        (is_read_lockable(state)
            && self
                .state
                .compare_exchange_weak(state, state + READ_LOCKED, Acquire, Relaxed)
                .is_ok())
            || self.read_contended(deadline)
    }

    #[cold]
    fn read_contended(&self, deadline: Option<Instant>) -> bool {
        let mut has_slept = false;
        let mut state = self.spin_read();
        loop {
            if (has_slept && is_read_lockable_after_wakeup(state)) || is_read_lockable(state) {
                match self
                    .state
                    .compare_exchange_weak(state, state + READ_LOCKED, Acquire, Relaxed)
                {
                    Ok(_) => return true,
                    Err(s) => {
                        state = s;
                        continue;
                    }
                }
            }
            if state & MASK == MAX_READERS {
                // 2^30 - 2 readers: a leak, not a workload.
                overflow_abort();
            }
            // The waiting bit must be set before sleeping: the unlocker
            // clears it and wakes the readers.  (A reader that times out
            // leaves it set; the holder's unlock clears it.)
            if !has_readers_waiting(state) {
                if let Err(s) =
                    self.state
                        .compare_exchange(state, state | READERS_WAITING, Relaxed, Relaxed)
                {
                    state = s;
                    continue;
                }
            }
            if !futex_wait(&self.state, state | READERS_WAITING, deadline) {
                return false;
            }
            has_slept = true;
            state = self.spin_read();
        }
    }

    unsafe fn read_unlock(&self) {
        let state = self.state.fetch_sub(READ_LOCKED, Release) - READ_LOCKED;
        // The last reader wakes a waiting writer (readers only wait when
        // writers do).
        if is_unlocked(state) && has_writers_waiting(state) {
            self.wake_writer_or_readers(state);
        }
    }

    fn try_write(&self) -> bool {
        self.state
            .fetch_update(Acquire, Relaxed, |s| {
                is_unlocked(s).then_some(s + WRITE_LOCKED)
            })
            .is_ok()
    }

    fn write_until(&self, deadline: Option<Instant>) -> bool {
        self.state
            .compare_exchange_weak(0, WRITE_LOCKED, Acquire, Relaxed)
            .is_ok()
            || self.write_contended(deadline)
    }

    #[cold]
    fn write_contended(&self, deadline: Option<Instant>) -> bool {
        let mut state = self.spin_write();
        let mut other_writers_waiting = 0;
        loop {
            if is_unlocked(state) {
                match self.state.compare_exchange_weak(
                    state,
                    state | WRITE_LOCKED | other_writers_waiting,
                    Acquire,
                    Relaxed,
                ) {
                    Ok(_) => return true,
                    Err(s) => {
                        state = s;
                        continue;
                    }
                }
            }
            if !has_writers_waiting(state) {
                if let Err(s) =
                    self.state
                        .compare_exchange(state, state | WRITERS_WAITING, Relaxed, Relaxed)
                {
                    state = s;
                    continue;
                }
            }
            // Others may wait too: keep the bit when this one locks.
            other_writers_waiting = WRITERS_WAITING;
            // Read the counter before re-checking the state, so that no
            // wake-up is missed.
            let seq = self.writer_notify.load(Acquire);
            state = self.state.load(Relaxed);
            if is_unlocked(state) || !has_writers_waiting(state) {
                continue;
            }
            if !futex_wait(&self.writer_notify, seq, deadline) {
                // The bit stays set, as for readers: the holder's unlock
                // clears it.
                return false;
            }
            state = self.spin_write();
        }
    }

    unsafe fn write_unlock(&self) {
        let state = self.state.fetch_sub(WRITE_LOCKED, Release) - WRITE_LOCKED;
        if has_writers_waiting(state) || has_readers_waiting(state) {
            self.wake_writer_or_readers(state);
        }
    }

    /// After an unlock: wake one writer if one waits, else every reader.
    #[cold]
    fn wake_writer_or_readers(&self, mut state: u32) {
        if state == WRITERS_WAITING {
            match self.state.compare_exchange(state, 0, Relaxed, Relaxed) {
                Ok(_) => {
                    self.wake_writer();
                    return;
                }
                Err(s) => state = s,
            }
        }
        if state == READERS_WAITING + WRITERS_WAITING {
            if self
                .state
                .compare_exchange(state, READERS_WAITING, Relaxed, Relaxed)
                .is_err()
            {
                // Locked again: its unlock wakes the waiters.
                return;
            }
            if self.wake_writer() {
                return;
            }
            // No writer was asleep (it may have timed out): the readers.
            state = READERS_WAITING;
        }
        if state == READERS_WAITING
            && self
                .state
                .compare_exchange(state, 0, Relaxed, Relaxed)
                .is_ok()
        {
            futex_wake(&self.state, i32::MAX);
        }
    }

    fn wake_writer(&self) -> bool {
        self.writer_notify.fetch_add(1, Release);
        futex_wake(&self.writer_notify, 1)
    }

    fn spin_until(&self, f: impl Fn(u32) -> bool) -> u32 {
        let mut spin = SPIN;
        loop {
            let state = self.state.load(Relaxed);
            if f(state) || spin == 0 {
                return state;
            }
            core::hint::spin_loop();
            spin -= 1;
        }
    }

    fn spin_write(&self) -> u32 {
        self.spin_until(|s| is_unlocked(s) || has_writers_waiting(s))
    }

    fn spin_read(&self) -> u32 {
        self.spin_until(|s| !is_write_locked(s) || has_readers_waiting(s) || has_writers_waiting(s))
    }

    /// Open a section, run `lock`, close the section if it failed.
    fn in_section(lock: impl FnOnce() -> bool) -> bool {
        enter();
        let locked = lock();
        if !locked {
            exit();
        }
        locked
    }
}

// SAFETY: the state admits either one writer (WRITE_LOCKED, set only from
// an unlocked state) or readers (counted, never while write-locked), and
// is released only by holders.  Every successful lock, shared or
// exclusive, opens exactly one critical section on the locking thread and
// its unlock closes it there (guards are not Send); a failed attempt
// closes the section it opened.
unsafe impl lock_api::RawRwLock for RawRwLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: RawRwLock = RawRwLock {
        state: AtomicU32::new(0),
        writer_notify: AtomicU32::new(0),
    };

    type GuardMarker = lock_api::GuardNoSend;

    #[inline]
    fn lock_shared(&self) {
        enter();
        self.read_until(None);
    }

    #[inline]
    fn try_lock_shared(&self) -> bool {
        Self::in_section(|| self.try_read())
    }

    #[inline]
    unsafe fn unlock_shared(&self) {
        // SAFETY: our caller holds a shared lock.
        unsafe { self.read_unlock() };
        exit();
    }

    #[inline]
    fn lock_exclusive(&self) {
        enter();
        self.write_until(None);
    }

    #[inline]
    fn try_lock_exclusive(&self) -> bool {
        Self::in_section(|| self.try_write())
    }

    #[inline]
    unsafe fn unlock_exclusive(&self) {
        // SAFETY: our caller holds the exclusive lock.
        unsafe { self.write_unlock() };
        exit();
    }

    #[inline]
    fn is_locked(&self) -> bool {
        !is_unlocked(self.state.load(Relaxed))
    }

    #[inline]
    fn is_locked_exclusive(&self) -> bool {
        is_write_locked(self.state.load(Relaxed))
    }
}

// SAFETY: a downgrade turns the one writer into one reader atomically,
// and keeps the section, which the read unlock closes.
unsafe impl lock_api::RawRwLockDowngrade for RawRwLock {
    unsafe fn downgrade(&self) {
        let state = self.state.fetch_add(DOWNGRADE, Release);
        if has_readers_waiting(state) {
            // Only the exclusive holder could clear it.
            self.state.fetch_sub(READERS_WAITING, Relaxed);
            futex_wake(&self.state, i32::MAX);
        }
    }
}

// SAFETY: as for RawRwLock; a timed attempt that fails closes its section.
unsafe impl lock_api::RawRwLockTimed for RawRwLock {
    type Duration = Duration;
    type Instant = Instant;

    fn try_lock_shared_for(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        Self::in_section(|| self.read_until(deadline))
    }

    fn try_lock_shared_until(&self, timeout: Instant) -> bool {
        Self::in_section(|| self.read_until(Some(timeout)))
    }

    fn try_lock_exclusive_for(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        Self::in_section(|| self.write_until(deadline))
    }

    fn try_lock_exclusive_until(&self, timeout: Instant) -> bool {
        Self::in_section(|| self.write_until(Some(timeout)))
    }
}

#[cold]
fn overflow_abort() -> ! {
    // No panic: the caller may be a handler, and its section is open.
    const MSG: &[u8] = b"aem: too many readers of an aem::sync::RwLock; aborting\n";
    // SAFETY: writes a static buffer of its length.
    unsafe { libc::write(2, MSG.as_ptr().cast(), MSG.len()) };
    std::process::abort();
}

/// Sleep while `*futex == expected`, until woken or `deadline`; false
/// only if the deadline passed.  Keeps `errno`.
fn futex_wait(futex: &AtomicU32, expected: u32, deadline: Option<Instant>) -> bool {
    let timeout = match deadline {
        None => None,
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(libc::timespec {
                tv_sec: left.as_secs().try_into().unwrap_or(libc::time_t::MAX),
                tv_nsec: left.subsec_nanos().into(),
            }),
            _ => return false,
        },
    };
    let ts = timeout
        .as_ref()
        .map_or(core::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: errno is this thread's.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    // SAFETY: `futex` is a live, aligned u32 for the call; `ts` is null or
    // a live timespec (a relative timeout, as FUTEX_WAIT takes).
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            futex.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts,
        )
    };
    // SAFETY: as above.
    let timed_out = r < 0 && unsafe { *errno } == libc::ETIMEDOUT;
    // SAFETY: as above.
    unsafe { *errno = saved };
    // EAGAIN (the word changed), EINTR, a wake-up: the caller looks again.
    !timed_out
}

/// Wake up to `n` sleepers on `futex`; whether any was woken.  Keeps
/// `errno`.
fn futex_wake(futex: &AtomicU32, n: i32) -> bool {
    // SAFETY: errno is this thread's.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    // SAFETY: `futex` is a live, aligned u32; FUTEX_WAKE only reads its
    // address.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            futex.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        )
    };
    // SAFETY: as above.
    unsafe { *errno = saved };
    r > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::critical::critical_depth;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Barrier};

    #[test]
    fn holding_the_lock_is_a_critical_section() {
        let m = Mutex::new(5);
        {
            let mut g = m.lock();
            *g += 1;
            assert_eq!(critical_depth(), 1);
            assert!(m.try_lock().is_none());
            // try_lock's failed attempt closed its section again.
            assert_eq!(critical_depth(), 1);
            assert!(m.is_locked());
        }
        assert_eq!(critical_depth(), 0);
        assert!(!m.is_locked());
        assert_eq!(m.into_inner(), 6);
    }

    #[test]
    fn the_workspace_api_is_kept() {
        static M: Mutex<Vec<u64>> = Mutex::new(Vec::new());
        M.lock().push(1);
        assert_eq!(M.try_lock().map(|g| g.len()), Some(1));
        let mut d: Mutex<u8> = Mutex::default();
        *d.get_mut() = 3;
        assert_eq!(format!("{d:?}"), "Mutex { data: 3 }");
        let g = d.lock();
        assert_eq!(format!("{d:?}"), "Mutex { data: <locked> }");
        assert_eq!(critical_depth(), 1);
        drop(g);
        assert_eq!(critical_depth(), 0);
    }

    #[test]
    fn threads_exclude_each_other() {
        let m = Arc::new(Mutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        *m.lock() += 1;
                    }
                    assert_eq!(critical_depth(), 0);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*m.lock(), 40_000);
    }

    #[test]
    fn a_mapped_guard_keeps_the_lock_and_the_section() {
        let m = Mutex::new((1u32, String::from("a")));
        {
            let mut s = MutexGuard::map(m.lock(), |p| &mut p.1);
            s.push('b');
            assert_eq!(critical_depth(), 1);
            assert!(m.try_lock().is_none());
            let t = MappedMutexGuard::map(s, |s| &mut s[..1]);
            assert_eq!(&*t, "a");
            assert_eq!(critical_depth(), 1);
        }
        assert_eq!(critical_depth(), 0);
        let failed = MutexGuard::try_map(m.lock(), |_| None::<&mut u32>);
        assert!(failed.is_err());
        drop(failed);
        assert_eq!(critical_depth(), 0);
        assert_eq!(m.lock().1, "ab");
    }

    #[test]
    fn unlocked_closes_and_reopens_the_section() {
        let m = Mutex::new(0);
        let mut g = m.lock();
        MutexGuard::unlocked(&mut g, || {
            assert_eq!(critical_depth(), 0);
            assert!(!m.is_locked());
        });
        assert_eq!(critical_depth(), 1);
        drop(g);
        assert_eq!(critical_depth(), 0);
    }

    #[test]
    fn try_lock_for_times_out_and_closes_its_section() {
        let m = Arc::new(Mutex::new(0));
        let held = Arc::new(Barrier::new(2));
        let release = Arc::new(Barrier::new(2));
        let holder = {
            let (m, held, release) = (m.clone(), held.clone(), release.clone());
            std::thread::spawn(move || {
                let g = m.lock();
                held.wait();
                release.wait();
                drop(g);
            })
        };
        held.wait();
        let start = Instant::now();
        assert!(m.try_lock_for(Duration::from_millis(50)).is_none());
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert_eq!(critical_depth(), 0);
        assert!(m.try_lock_until(Instant::now()).is_none());
        assert_eq!(critical_depth(), 0);
        // Released while this thread waits: taken before the deadline.
        let r = release.clone();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            r.wait();
        });
        let g = m.try_lock_for(Duration::from_secs(10)).expect("taken");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(critical_depth(), 1);
        drop(g);
        assert_eq!(critical_depth(), 0);
        holder.join().unwrap();
        releaser.join().unwrap();
        // Uncontended: at once, and for ever is fine.
        assert!(m.try_lock_for(Duration::MAX).is_some());
        assert_eq!(critical_depth(), 0);
    }

    #[test]
    fn rwlock_readers_share_and_writers_exclude() {
        let l = RwLock::new(1);
        {
            let a = l.read();
            let b = l.read();
            assert_eq!(*a + *b, 2);
            assert_eq!(critical_depth(), 2);
            assert!(l.try_write().is_none());
            assert_eq!(critical_depth(), 2);
            assert!(l.is_locked() && !l.is_locked_exclusive());
        }
        assert_eq!(critical_depth(), 0);
        {
            let mut w = l.write();
            *w = 5;
            assert_eq!(critical_depth(), 1);
            assert!(l.try_read().is_none());
            assert!(l.try_write().is_none());
            assert_eq!(critical_depth(), 1);
            assert!(l.is_locked_exclusive());
            let r = RwLockWriteGuard::downgrade(w);
            assert_eq!(*r, 5);
            assert_eq!(critical_depth(), 1);
            assert!(l.try_read().is_some());
            assert!(l.try_write().is_none());
        }
        assert_eq!(critical_depth(), 0);
        let part = RwLockReadGuard::map(l.read(), |v| v);
        assert_eq!(*part, 5);
        drop(part);
        assert_eq!(critical_depth(), 0);
        assert_eq!(l.into_inner(), 5);
    }

    #[test]
    fn rwlock_timeouts_close_their_sections() {
        let l = Arc::new(RwLock::new(()));
        let w = l.write();
        let l2 = l.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            assert!(l2.try_read_for(Duration::from_millis(30)).is_none());
            assert!(l2.try_write_for(Duration::from_millis(30)).is_none());
            assert!(start.elapsed() >= Duration::from_millis(60));
            assert_eq!(critical_depth(), 0);
        })
        .join()
        .unwrap();
        drop(w);
        // The waiting bits the timed-out waiters left do not block anyone.
        assert!(l.try_read_for(Duration::from_millis(1)).is_some());
        assert!(l.try_write_for(Duration::from_millis(1)).is_some());
        assert_eq!(critical_depth(), 0);
    }

    #[test]
    fn rwlock_under_contention_counts_exactly() {
        let l = Arc::new(RwLock::new((0u64, 0u64)));
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (l, stop) = (l.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut seen = 0;
                    while !stop.load(Relaxed) {
                        let g = l.read();
                        // A writer updates both halves together.
                        assert_eq!(g.0, g.1);
                        seen += 1;
                    }
                    seen
                })
            })
            .collect();
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for _ in 0..5_000 {
                        let mut g = l.write();
                        g.0 += 1;
                        g.1 += 1;
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(*l.read(), (10_000, 10_000));
    }

    #[test]
    fn errno_is_kept_through_a_timed_out_wait() {
        let m = Arc::new(Mutex::new(()));
        let g = m.lock();
        let m2 = m.clone();
        let t = std::thread::spawn(move || {
            // SAFETY: this thread's errno.
            unsafe { *libc::__errno_location() = 1234 };
            // FUTEX_WAIT fails with ETIMEDOUT here.
            assert!(m2.try_lock_for(Duration::from_millis(10)).is_none());
            // SAFETY: as above.
            unsafe { *libc::__errno_location() }
        });
        assert_eq!(t.join().unwrap(), 1234);
        drop(g);
    }
}
