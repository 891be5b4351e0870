//! Overload notification: an event when CPU, memory or I/O pressure
//! crosses a threshold (`AEM_SOURCE_OVERLOAD`).
//!
//! A [`Pressure`] is a PSI trigger (`Documentation/accounting/psi.rst`),
//! as written to `/proc/pressure/<resource>` or to a cgroup's
//! `<resource>.pressure`: a [`Resource`], a kind of [`Stall`], and the
//! stall time within a window that fires it, system-wide or for the tasks
//! of one cgroup v2 directory.  An event registered on it
//! ([`Source::overload`](crate::Source::overload)) fires at most once per
//! window while the threshold is crossed, and once more when two windows
//! pass without a firing: the pressure cleared.  Its records are
//! [`EventData::Overload`](crate::EventData::Overload): the state when
//! the record is delivered and the firings it sums up (none, for the
//! record of a clearing alone; the record's `count` counts the clearing
//! too).
//!
//! PSI's limits apply: a window of 500 ms to 10 s, a threshold of at
//! most the window, and, without `CAP_SYS_RESOURCE`, windows that are
//! multiples of 2 s (`EINVAL` otherwise, from the kernel).  Each
//! registration is a PSI trigger, and costs what one costs.
//!
//! ```no_run
//! use std::time::Duration;
//! use aem::{EventData, Options, Pressure, Resource, Source};
//!
//! // CPU stalls of 150 ms within a 2 s window, system-wide.
//! let cpu = Pressure::new(Resource::Cpu, Duration::from_millis(150), Duration::from_secs(2));
//! let _reg = aem::register(Source::overload(cpu), Options::new()).unwrap();
//! for rec in aem::wait(16, None).unwrap() {
//!     if let EventData::Overload { overloaded, firings } = rec.data {
//!         println!("overloaded={overloaded} ({firings} firings)");
//!     }
//! }
//! ```

use core::time::Duration;
use std::os::fd::{AsRawFd, BorrowedFd};

use aem_syscalls::uapi;

use crate::{Errno, Error};

/// A resource whose pressure [`Pressure`] watches: PSI's
/// `/proc/pressure/<resource>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Resource {
    /// Tasks waiting for a CPU (`cpu`).
    Cpu,
    /// Tasks stalled on memory: reclaim, refaults, throttling past a
    /// cgroup's `memory.high` (`memory`).
    Memory,
    /// Tasks waiting for block I/O (`io`).
    Io,
}

impl Resource {
    fn raw(self) -> u32 {
        match self {
            Resource::Cpu => uapi::AEM_OVERLOAD_CPU,
            Resource::Memory => uapi::AEM_OVERLOAD_MEMORY,
            Resource::Io => uapi::AEM_OVERLOAD_IO,
        }
    }
}

/// Which stall time a [`Pressure`] counts, as PSI's `some` and `full`
/// lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Stall {
    /// Time during which at least one task was stalled (`some`).
    #[default]
    Some,
    /// Time during which every non-idle task was stalled at once
    /// (`full`; `AEM_OVERLOAD_FULL`).  At the system level, CPU `full`
    /// is always 0 (`Documentation/accounting/psi.rst`).
    Full,
}

/// A PSI trigger for [`Source::overload`](crate::Source::overload): the
/// [`stall`](Pressure#structfield.stall) time of a
/// [`resource`](Pressure#structfield.resource) that, reaching
/// [`threshold`](Pressure#structfield.threshold) within a
/// [`window`](Pressure#structfield.window), fires the event;
/// system-wide, or for the tasks of a [`cgroup`](Pressure::cgroup).
///
/// Made with [`Pressure::new`] and chainable setters; the fields are
/// public to read.  The times go to the kernel in whole microseconds (a
/// fraction of one is dropped); a time of more than `u32::MAX`
/// microseconds (some 71 minutes), which the ABI cannot carry, makes
/// registering fail with `EINVAL` rather than be cut short.
///
/// ```
/// use std::time::Duration;
/// use aem::{Pressure, Resource, Stall};
///
/// let p = Pressure::new(Resource::Io, Duration::from_millis(100), Duration::from_secs(1))
///     .stall(Stall::Full);
/// assert_eq!((p.resource, p.stall, p.window), (Resource::Io, Stall::Full, Duration::from_secs(1)));
/// assert!(p.cgroup.is_none());
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Pressure<'fd> {
    /// The resource.
    pub resource: Resource,
    /// `some` or `full` stall time ([`Stall::Some`] unless set).
    pub stall: Stall,
    /// The stall time within a window that fires the event: at least 1
    /// us, at most the window.
    pub threshold: Duration,
    /// The window: 500 ms to 10 s, a multiple of 2 s without
    /// `CAP_SYS_RESOURCE`.
    pub window: Duration,
    /// A cgroup v2 directory, for the pressure of its tasks; `None` for
    /// the whole system.  The kernel holds the cgroup while the event is
    /// registered, not the descriptor.
    pub cgroup: Option<BorrowedFd<'fd>>,
}

impl<'fd> Pressure<'fd> {
    /// `some` stall time of `resource` reaching `threshold` within
    /// `window`, system-wide.
    pub const fn new(resource: Resource, threshold: Duration, window: Duration) -> Pressure<'fd> {
        Pressure {
            resource,
            stall: Stall::Some,
            threshold,
            window,
            cgroup: None,
        }
    }

    /// Sets [`stall`](Pressure#structfield.stall): count `some` or `full`
    /// stall time.
    pub const fn stall(mut self, stall: Stall) -> Pressure<'fd> {
        self.stall = stall;
        self
    }

    /// Sets [`cgroup`](Pressure#structfield.cgroup): watch the pressure of
    /// the tasks of the cgroup v2 directory `dir` (a directory under
    /// `/sys/fs/cgroup`, opened read-only); registering fails with `EBADF`
    /// when it is not one.
    pub const fn cgroup(mut self, dir: BorrowedFd<'fd>) -> Pressure<'fd> {
        self.cgroup = Some(dir);
        self
    }

    /// `struct aem_overload_source` for this trigger; `EINVAL` for a time
    /// that does not fit its microseconds.
    pub(crate) fn raw(&self) -> Result<uapi::aem_overload_source, Error> {
        Ok(uapi::aem_overload_source {
            resource: self.resource.raw(),
            flags: match self.stall {
                Stall::Some => 0,
                Stall::Full => uapi::AEM_OVERLOAD_FULL,
            },
            threshold_us: micros(self.threshold)?,
            window_us: micros(self.window)?,
            cgroup_fd: self.cgroup.map_or(-1, |fd| fd.as_raw_fd()),
            reserved: 0,
        })
    }
}

/// `d` in whole microseconds; `EINVAL` past `u32::MAX` of them.
fn micros(d: Duration) -> Result<u32, Error> {
    u32::try_from(d.as_micros()).map_err(|_| Error::Os(Errno(libc::EINVAL)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    const EINVAL: Error = Error::Os(Errno(libc::EINVAL));

    #[test]
    fn a_trigger_fills_the_overload_source() {
        let ms = Duration::from_millis;
        let raw = Pressure::new(Resource::Cpu, ms(50), ms(500)).raw().unwrap();
        assert_eq!(
            raw,
            uapi::aem_overload_source {
                resource: uapi::AEM_OVERLOAD_CPU,
                flags: 0,
                threshold_us: 50_000,
                window_us: 500_000,
                cgroup_fd: -1,
                reserved: 0,
            }
        );
        let raw = Pressure::new(Resource::Memory, ms(20), ms(2000))
            .stall(Stall::Full)
            .raw()
            .unwrap();
        assert_eq!(
            (raw.resource, raw.flags, raw.threshold_us, raw.window_us),
            (
                uapi::AEM_OVERLOAD_MEMORY,
                uapi::AEM_OVERLOAD_FULL,
                20_000,
                2_000_000
            )
        );
        let raw = Pressure::new(Resource::Io, ms(1), ms(1)).raw().unwrap();
        assert_eq!(raw.resource, uapi::AEM_OVERLOAD_IO);
        assert_eq!(Stall::default(), Stall::Some);
    }

    #[test]
    fn a_cgroup_is_passed_by_descriptor() {
        let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
        let p = Pressure::new(
            Resource::Memory,
            Duration::from_millis(10),
            Duration::from_secs(1),
        )
        .cgroup(dir.as_fd());
        assert_eq!(p.raw().unwrap().cgroup_fd, dir.as_raw_fd());
    }

    #[test]
    fn times_are_whole_microseconds_and_never_truncated_to_fit() {
        assert_eq!(micros(Duration::from_nanos(1_999)), Ok(1));
        assert_eq!(micros(Duration::ZERO), Ok(0));
        let max = Duration::from_micros(u64::from(u32::MAX));
        assert_eq!(micros(max), Ok(u32::MAX));
        assert_eq!(micros(max + Duration::from_nanos(999)), Ok(u32::MAX));
        assert_eq!(micros(max + Duration::from_micros(1)), Err(EINVAL));
        assert_eq!(micros(Duration::MAX), Err(EINVAL));
        let huge = Duration::from_secs(5_000);
        let sec = Duration::from_secs(1);
        assert_eq!(
            Pressure::new(Resource::Cpu, huge, sec).raw().unwrap_err(),
            EINVAL
        );
        assert_eq!(
            Pressure::new(Resource::Cpu, sec, huge).raw().unwrap_err(),
            EINVAL
        );
    }
}
