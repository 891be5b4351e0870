//! What the running kernel implements: `aem_query(2)`.

use core::fmt;
use core::mem::size_of;

use aem_syscalls::uapi;

use crate::Error;

/// The AEM ABI version this crate speaks.
pub const ABI_VERSION: u32 = uapi::AEM_ABI_VERSION;

/// A set of `AEM_FEATURE_*` bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FeatureSet(u64);

impl FeatureSet {
    /// `aem_query()` itself.
    pub const QUERY: FeatureSet = FeatureSet(uapi::AEM_FEATURE_QUERY as u64);
    /// `aem_register()` and `aem_ctl()`.
    pub const REGISTER: FeatureSet = FeatureSet(uapi::AEM_FEATURE_REGISTER as u64);
    /// `aem_wait()` and the context fd.
    pub const WAIT: FeatureSet = FeatureSet(uapi::AEM_FEATURE_WAIT as u64);
    /// Inline handlers, `aem_return()`, blocking and keep-alive.
    pub const INLINE: FeatureSet = FeatureSet(uapi::AEM_FEATURE_INLINE as u64);
    /// `aem_thread_area()`: blocking delivery without a system call.
    pub const THREAD_AREA: FeatureSet = FeatureSet(uapi::AEM_FEATURE_THREAD_AREA as u64);
    /// Handler pools: `AEM_EV_POOL` and `aem_wait(AEM_WAIT_SERVE)`
    /// ([`crate::Pool`]).
    pub const POOL: FeatureSet = FeatureSet(uapi::AEM_FEATURE_POOL as u64);
    /// A process per event: `AEM_EV_FORK`, `AEM_EV_NOCLDWAIT`
    /// ([`crate::spawn_on_event`]).
    pub const FORK: FeatureSet = FeatureSet(uapi::AEM_FEATURE_FORK as u64);

    const NAMED: [(FeatureSet, &'static str); 7] = [
        (FeatureSet::QUERY, "QUERY"),
        (FeatureSet::REGISTER, "REGISTER"),
        (FeatureSet::WAIT, "WAIT"),
        (FeatureSet::INLINE, "INLINE"),
        (FeatureSet::THREAD_AREA, "THREAD_AREA"),
        (FeatureSet::POOL, "POOL"),
        (FeatureSet::FORK, "FORK"),
    ];

    /// The raw bits, as the kernel reported them (unknown bits included).
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether every feature in `other` is in `self`.
    pub const fn contains(self, other: FeatureSet) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Debug for FeatureSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut set = f.debug_set();
        let mut known = 0;
        for (bit, name) in FeatureSet::NAMED {
            known |= bit.0;
            if self.contains(bit) {
                set.entry(&format_args!("{name}"));
            }
        }
        let unknown = self.0 & !known;
        if unknown != 0 {
            set.entry(&format_args!("{unknown:#x}"));
        }
        set.finish()
    }
}

/// An event source kind (`enum aem_source_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SourceKind {
    /// Readiness of a pollable file descriptor.
    Fd,
    /// Asynchronous accept.
    Accept,
    /// Asynchronous read.
    Read,
    /// Socket close, hang-up and TCP state changes.
    SocketState,
    /// One-shot and periodic timers.
    Timer,
    /// Exit of a child or of a pidfd's process.
    ProcessExit,
    /// User events and topics.
    Topic,
    /// CPU or memory overload.
    Overload,
    /// A watched user memory word changed.
    MemoryWatch,
    /// An event type added by a kernel module.
    Module,
}

impl SourceKind {
    /// Every kind, in ABI order.
    pub const ALL: [SourceKind; 10] = [
        SourceKind::Fd,
        SourceKind::Accept,
        SourceKind::Read,
        SourceKind::SocketState,
        SourceKind::Timer,
        SourceKind::ProcessExit,
        SourceKind::Topic,
        SourceKind::Overload,
        SourceKind::MemoryWatch,
        SourceKind::Module,
    ];

    /// The kind's ABI number.
    pub const fn raw(self) -> u32 {
        use uapi::aem_source_kind as k;
        match self {
            SourceKind::Fd => k::AEM_SOURCE_FD,
            SourceKind::Accept => k::AEM_SOURCE_ACCEPT,
            SourceKind::Read => k::AEM_SOURCE_READ,
            SourceKind::SocketState => k::AEM_SOURCE_SOCKET_STATE,
            SourceKind::Timer => k::AEM_SOURCE_TIMER,
            SourceKind::ProcessExit => k::AEM_SOURCE_PROCESS_EXIT,
            SourceKind::Topic => k::AEM_SOURCE_TOPIC,
            SourceKind::Overload => k::AEM_SOURCE_OVERLOAD,
            SourceKind::MemoryWatch => k::AEM_SOURCE_MEMORY_WATCH,
            SourceKind::Module => k::AEM_SOURCE_MODULE,
        }
    }
}

/// A set of source kinds, as in `aem_features.sources`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SourceSet(u64);

impl SourceSet {
    /// The raw bits, as the kernel reported them (unknown bits included).
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether the kernel implements `kind`.
    pub const fn contains(self, kind: SourceKind) -> bool {
        self.0 & (1u64 << kind.raw()) != 0
    }
}

impl fmt::Debug for SourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(SourceKind::ALL.iter().filter(|k| self.contains(**k)))
            .finish()
    }
}

/// What the running kernel implements, from `aem_query(2)`.
/// `#[non_exhaustive]`: made by [`features`] only, and grows with the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Features {
    /// The kernel's `AEM_ABI_VERSION`.
    pub abi_version: u32,
    /// The parts of the ABI the kernel implements.
    pub features: FeatureSet,
    /// The event source kinds the kernel implements.
    pub sources: SourceSet,
}

/// Ask the running kernel what it implements.
///
/// Fails with [`Error::NotAvailable`] on a kernel without AEM, and with
/// [`Error::AbiMismatch`] when the kernel speaks another ABI version.
pub fn features() -> Result<Features, Error> {
    let mut raw = uapi::aem_features::default();
    // SAFETY: `raw` is a live, writable `aem_features` of exactly the size
    // passed.
    unsafe { aem_syscalls::aem_query(&mut raw, size_of::<uapi::aem_features>(), 0) }?;
    if raw.abi_version != ABI_VERSION {
        return Err(Error::AbiMismatch {
            kernel: raw.abi_version,
            supported: ABI_VERSION,
        });
    }
    Ok(Features {
        abi_version: raw.abi_version,
        features: FeatureSet(raw.features),
        sources: SourceSet(raw.sources),
    })
}

/// Whether the kernel has AEM at all; no allocation, for the allocator's
/// critical sections.
pub(crate) fn kernel_has_aem() -> bool {
    let mut raw = uapi::aem_features::default();
    // SAFETY: as in `features`.
    unsafe { aem_syscalls::aem_query(&mut raw, size_of::<uapi::aem_features>(), 0) }.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_bits_follow_abi_numbers() {
        let set = SourceSet(1 << uapi::aem_source_kind::AEM_SOURCE_TIMER);
        assert!(set.contains(SourceKind::Timer));
        assert!(!set.contains(SourceKind::Fd));
        assert_eq!(format!("{set:?}"), "{Timer}");
    }

    #[test]
    fn unknown_feature_bits_are_kept_and_shown() {
        let f = FeatureSet(FeatureSet::QUERY.bits() | 1 << 40);
        assert!(f.contains(FeatureSet::QUERY));
        assert_eq!(format!("{f:?}"), "{QUERY, 0x10000000000}");
    }

    /// On a kernel without AEM (such as a build host) the query must say
    /// so with the typed error; on an AEM kernel it must succeed.
    #[test]
    fn host_kernel_answers_typed_result() {
        match features() {
            Ok(f) => assert!(f.features.contains(FeatureSet::QUERY)),
            Err(e) => assert_eq!(e, Error::NotAvailable),
        }
    }
}
