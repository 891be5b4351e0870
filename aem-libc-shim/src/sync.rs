//! A mutex that handlers and the main flow can share.
//!
//! With an ordinary lock, a handler that interrupts its own thread while
//! the main flow holds the lock waits for ever: the holder cannot run
//! until the handler returns.  [`Mutex`] opens a critical section before it
//! takes the lock and closes it after the release, so while a thread holds
//! it, that thread's events wait instead: a handler never finds its own
//! thread holding the lock.  Against other threads it is an ordinary lock.

use core::fmt;
use core::ops::{Deref, DerefMut};

use crate::critical::{critical_section, CriticalSection};

/// A mutual-exclusion lock whose holder defers its thread's events.
///
/// Poisoning is ignored: a handler that panics aborts the program, and a
/// main flow that panics while holding the lock leaves the data as it was,
/// as with `parking_lot`.
pub struct Mutex<T: ?Sized> {
    inner: std::sync::Mutex<T>,
}

/// The guard of a locked [`Mutex`]; the lock is released, and then the
/// thread's waiting events run, when it is dropped.
#[must_use = "the lock is released when the guard is dropped"]
pub struct MutexGuard<'a, T: ?Sized> {
    // Dropped in this order: the lock first, then the section, so that
    // the events that waited run with the lock free.
    guard: std::sync::MutexGuard<'a, T>,
    _section: CriticalSection,
}

impl<T> Mutex<T> {
    /// A new unlocked mutex holding `value`.
    pub const fn new(value: T) -> Mutex<T> {
        Mutex {
            inner: std::sync::Mutex::new(value),
        }
    }

    /// The value, consuming the mutex.
    pub fn into_inner(self) -> T {
        self.inner
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Lock, waiting for other threads; the calling thread's events wait
    /// until the guard is dropped.  Handler-safe.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        let section = critical_section();
        let guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        MutexGuard {
            guard,
            _section: section,
        }
    }

    /// Lock if no other thread holds the lock.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let section = critical_section();
        let guard = match self.inner.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(MutexGuard {
            guard,
            _section: section,
        })
    }

    /// The value, through a unique reference (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.inner
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Mutex<T> {
        Mutex::new(T::default())
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.try_lock() {
            Some(g) => f.debug_struct("Mutex").field("data", &&*g).finish(),
            None => f.debug_struct("Mutex").field("data", &"<locked>").finish(),
        }
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::critical::critical_depth;

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
        }
        assert_eq!(critical_depth(), 0);
        assert_eq!(m.into_inner(), 6);
    }

    #[test]
    fn threads_exclude_each_other() {
        let m = std::sync::Arc::new(Mutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        *m.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*m.lock(), 40_000);
    }
}
