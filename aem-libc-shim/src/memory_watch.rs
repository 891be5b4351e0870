//! Memory watches: an event when a watched 32-bit word changes
//! (`AEM_SOURCE_MEMORY_WATCH`).
//!
//! The watch is cooperative, as futexes are: a writer **stores** to the
//! word, **then wakes** it ([`wake_watchers`], a `FUTEX_WAKE`); the
//! watch sees the wake, and the record, when it is delivered, reads the
//! word: [`EventData::MemoryWatch`](crate::EventData::MemoryWatch) with
//! the value then and the one the previous record (or the registration)
//! saw.  A store without a wake is not seen; a wake that left the word as
//! it was delivers nothing; changes between two deliveries coalesce, the
//! record's `count` telling the wakes.
//!
//! [`Sharing`] says who may wake the watch: the process's own threads
//! ([`Sharing::Private`]), or any process that maps the same memory
//! ([`Sharing::Shared`], for a word in a `MAP_SHARED` mapping).  Writer
//! and watch must say the same.
//!
//! ```no_run
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use aem::{EventData, Options, Sharing, Source};
//!
//! static WORD: AtomicU32 = AtomicU32::new(0);
//!
//! let _reg = aem::register(Source::memory_watch(&WORD, Sharing::Private), Options::new())?;
//! // The writer, in any thread of the process: store, then wake.
//! WORD.store(7, Ordering::Release);
//! aem::wake_watchers(&WORD, Sharing::Private)?;
//! for rec in aem::wait(16, None)? {
//!     if let EventData::MemoryWatch { value, previous } = rec.data {
//!         println!("{previous} -> {value:?}");
//!     }
//! }
//! # Ok::<(), aem::Error>(())
//! ```

use core::sync::atomic::AtomicU32;

use aem_syscalls::uapi;

use crate::{Errno, Error};

/// Who may wake a watched word: the futex key of its watch
/// ([`Source::memory_watch`](crate::Source::memory_watch)) and the wake
/// of [`wake_watchers`], which must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Sharing {
    /// The process's own threads, waking with `FUTEX_WAKE_PRIVATE`.
    #[default]
    Private,
    /// Any process mapping the same memory (a `MAP_SHARED` mapping, a
    /// shared file), waking with a shared `FUTEX_WAKE`
    /// (`AEM_WATCH_SHARED`).
    Shared,
}

impl Sharing {
    /// `aem_memory_watch_source.flags`.
    pub(crate) fn watch_flags(self) -> u32 {
        match self {
            Sharing::Private => 0,
            Sharing::Shared => uapi::AEM_WATCH_SHARED,
        }
    }

    /// The `futex(2)` operation that wakes such a watch.
    fn wake_op(self) -> libc::c_int {
        match self {
            Sharing::Private => libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            Sharing::Shared => libc::FUTEX_WAKE,
        }
    }
}

/// Wake the watches of `word` after a store to it: `FUTEX_WAKE` (with
/// `FUTEX_PRIVATE_FLAG` for [`Sharing::Private`]) of every waiter.
///
/// Store, then wake: the watch reads the word when its record is
/// delivered, after this call, so a store made before it is seen, and a
/// store without a wake is not.  Several stores may share one wake; the
/// record tells the last value.  `sharing` must be that of the watches
/// ([`Source::memory_watch`](crate::Source::memory_watch)): a private
/// wake does not reach a shared watch, nor the reverse.
///
/// Wakes every thread waiting on the word as a futex too (a watch is not
/// a waiter, and is woken whatever the waiters), and returns how many
/// waiters it woke: 0 when only watches were there.
///
/// Handler-safe: one system call, no allocation.
pub fn wake_watchers(word: &AtomicU32, sharing: Sharing) -> Result<usize, Error> {
    // SAFETY: FUTEX_WAKE reads no memory: it only takes the key of the
    // address, which is that of a live, aligned 32-bit word; the other
    // arguments are unused by this operation.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            sharing.wake_op(),
            i32::MAX,
            core::ptr::null::<libc::timespec>(),
            core::ptr::null::<u32>(),
            0u32,
        )
    };
    if r < 0 {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return Err(Error::Os(Errno(errno)));
    }
    Ok(r as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn sharing_maps_to_the_watch_flag_and_the_wake() {
        assert_eq!(Sharing::Private.watch_flags(), 0);
        assert_eq!(Sharing::Shared.watch_flags(), uapi::AEM_WATCH_SHARED);
        assert_eq!(
            Sharing::Private.wake_op(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG
        );
        assert_eq!(Sharing::Shared.wake_op(), libc::FUTEX_WAKE);
        assert_eq!(Sharing::default(), Sharing::Private);
    }

    #[test]
    fn a_wake_without_waiters_wakes_none() {
        let word = AtomicU32::new(1);
        assert_eq!(wake_watchers(&word, Sharing::Private), Ok(0));
        assert_eq!(wake_watchers(&word, Sharing::Shared), Ok(0));
    }

    /// The wake is a real FUTEX_WAKE: a thread waiting on the word with
    /// the same sharing is woken.
    #[test]
    fn a_wake_wakes_a_futex_waiter_of_the_same_sharing() {
        for sharing in [Sharing::Private, Sharing::Shared] {
            let word = Arc::new(AtomicU32::new(0));
            let waiter = {
                let word = word.clone();
                std::thread::spawn(move || {
                    let op = match sharing {
                        Sharing::Private => libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                        Sharing::Shared => libc::FUTEX_WAIT,
                    };
                    while word.load(Ordering::Acquire) == 0 {
                        // SAFETY: FUTEX_WAIT on a live word, no timeout.
                        unsafe {
                            libc::syscall(
                                libc::SYS_futex,
                                word.as_ptr(),
                                op,
                                0u32,
                                core::ptr::null::<libc::timespec>(),
                            )
                        };
                    }
                })
            };
            // Wake without storing until the wake finds the waiter asleep
            // (it then checks the word, still 0, and sleeps again).
            let end = std::time::Instant::now() + Duration::from_secs(10);
            while wake_watchers(&word, sharing).unwrap() == 0 {
                assert!(std::time::Instant::now() < end, "{sharing:?}: never woken");
                std::thread::sleep(Duration::from_millis(1));
            }
            // Store, then wake: it ends.
            word.store(1, Ordering::Release);
            wake_watchers(&word, sharing).unwrap();
            waiter.join().unwrap();
        }
    }
}
