//! Event types that drivers and loadable modules add
//! (`AEM_SOURCE_MODULE`).
//!
//! A driver or module that embeds a `struct aem_source` and registers it
//! adds an event type, numbered by the kernel, which it notifies with
//! `aem_notify(src, data)`.  User space finds the number in
//! `/sys/kernel/aem/types/<name>/type` ([`ModuleType::by_name`]) and
//! registers events on it ([`Source::module`](crate::Source::module)),
//! whose records are [`EventData::Module`](crate::EventData::Module): the
//! notifications' data summed up, `count` of them.  While a registration
//! exists, the module stays loaded (`rmmod` fails, "in use").
//!
//! ```no_run
//! use aem::{ModuleType, Options, Source};
//!
//! let sample = ModuleType::by_name("sample").unwrap();
//! let _reg = aem::register(Source::module(sample), Options::new()).unwrap();
//! ```

use core::fmt;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::{Errno, Error};

/// Where the types are listed, one directory each.
const TYPES: &str = "/sys/kernel/aem/types";

/// The number of an event type a driver or module added.
///
/// Numbers are not reused until they wrap (2^31 types later): the type
/// of a module unloaded and loaded again has a new number, and the old
/// one is `ENOENT` to register on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleType(u32);

impl ModuleType {
    /// The type numbered `raw` (whether or not it exists: registering
    /// on a type that does not is `ENOENT`).
    pub const fn from_raw(raw: u32) -> ModuleType {
        ModuleType(raw)
    }

    /// The type's number, as in `aem_module_source.type` and in its
    /// records' `data[1]`.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// The type called `name`, from `/sys/kernel/aem/types/<name>/type`.
    ///
    /// `ENOENT` when there is none (no such module loaded, or a name
    /// that cannot be a type's: empty, with a `/` or a NUL, `.` or
    /// `..`); other errors are the file's.
    pub fn by_name(name: impl AsRef<OsStr>) -> Result<ModuleType, Error> {
        Self::by_name_in(Path::new(TYPES), name.as_ref())
    }

    fn by_name_in(types: &Path, name: &OsStr) -> Result<ModuleType, Error> {
        let bytes = name.as_bytes();
        if bytes.is_empty()
            || bytes == b"."
            || bytes == b".."
            || bytes.iter().any(|&b| b == b'/' || b == 0)
        {
            return Err(Error::Os(Errno(libc::ENOENT)));
        }
        let text = std::fs::read_to_string(types.join(name).join("type"))
            .map_err(|e| Error::Os(Errno(e.raw_os_error().unwrap_or(libc::EIO))))?;
        text.trim()
            .parse()
            .map(ModuleType)
            .map_err(|_| Error::Os(Errno(libc::EINVAL)))
    }
}

impl fmt::Display for ModuleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enoent() -> Result<ModuleType, Error> {
        Err(Error::Os(Errno(libc::ENOENT)))
    }

    #[test]
    fn raw_numbers_round_trip() {
        assert_eq!(ModuleType::from_raw(7).raw(), 7);
        assert_eq!(ModuleType::from_raw(7).to_string(), "7");
    }

    #[test]
    fn names_are_looked_up_in_the_types_directory() {
        let dir = std::env::temp_dir().join(format!("aem-types.{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sample")).unwrap();
        std::fs::create_dir_all(dir.join("garbled")).unwrap();
        std::fs::write(dir.join("sample/type"), "12\n").unwrap();
        std::fs::write(dir.join("garbled/type"), "twelve\n").unwrap();
        std::fs::write(dir.join("type"), "1\n").unwrap();
        let by_name = |n: &str| ModuleType::by_name_in(&dir, OsStr::new(n));
        assert_eq!(by_name("sample"), Ok(ModuleType::from_raw(12)));
        assert_eq!(by_name("missing"), enoent());
        assert_eq!(by_name("garbled"), Err(Error::Os(Errno(libc::EINVAL))));
        // Names no type has never leave the directory.
        for bad in ["", ".", "..", "sample/..", "../sample", "a\0b"] {
            assert_eq!(by_name(bad), enoent(), "{bad:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn on_the_host_no_type_is_found() {
        if !Path::new(TYPES).exists() {
            assert_eq!(ModuleType::by_name("sample"), enoent());
        }
    }
}
