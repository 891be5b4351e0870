//! The error type of every AEM call.

use core::fmt;

pub use aem_syscalls::Errno;

/// Why an AEM operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The running kernel has no AEM (its system calls answer `ENOSYS`).
    NotAvailable,
    /// The kernel speaks an AEM ABI version this crate does not.
    AbiMismatch {
        /// The version the kernel reported.
        kernel: u32,
        /// The version this crate was built for.
        supported: u32,
    },
    /// A system call failed with this errno.
    Os(Errno),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotAvailable => fmt::Display::fmt(&aem_syscalls::Error::NotAvailable, f),
            Error::AbiMismatch { kernel, supported } => write!(
                f,
                "AEM ABI mismatch: the kernel speaks version {kernel}, \
                 this program was built for version {supported}"
            ),
            Error::Os(e) => write!(f, "AEM system call failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// For `?` in functions returning [`std::io::Result`]: an errno stays that
/// errno; no AEM in the kernel, or another ABI, is [`Unsupported`].
///
/// [`Unsupported`]: std::io::ErrorKind::Unsupported
impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Os(errno) => std::io::Error::from_raw_os_error(errno.0),
            other => std::io::Error::new(std::io::ErrorKind::Unsupported, other),
        }
    }
}

impl From<aem_syscalls::Error> for Error {
    fn from(e: aem_syscalls::Error) -> Self {
        match e {
            aem_syscalls::Error::NotAvailable => Error::NotAvailable,
            aem_syscalls::Error::Os(errno) => Error::Os(errno),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_errors_convert() {
        assert_eq!(
            Error::from(aem_syscalls::Error::NotAvailable),
            Error::NotAvailable
        );
        assert_eq!(
            Error::from(aem_syscalls::Error::Os(Errno::EFAULT)),
            Error::Os(Errno::EFAULT)
        );
    }

    #[test]
    fn errors_convert_to_io_errors() {
        let e = std::io::Error::from(Error::Os(Errno(libc::EMFILE)));
        assert_eq!(e.raw_os_error(), Some(libc::EMFILE));
        let e = std::io::Error::from(Error::NotAvailable);
        assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("ENOSYS"), "{e}");
    }

    #[test]
    fn messages_name_the_problem() {
        assert!(Error::NotAvailable.to_string().contains("ENOSYS"));
        let m = Error::AbiMismatch {
            kernel: 7,
            supported: 1,
        }
        .to_string();
        assert!(m.contains("version 7") && m.contains("version 1"), "{m}");
    }
}
