//! Topics: named publish/subscribe channels between processes, and from
//! the kernel to processes (`AEM_CTL_TOPIC_OPEN`, `AEM_SOURCE_TOPIC`).
//!
//! A [`Topic`] is an open descriptor of a topic, made by
//! [`TopicOptions::open`].  Publishing writes 8-byte payloads to it
//! ([`Topic::publish`], [`Topic::publish_all`]); subscribing registers an
//! event on it ([`Source::topic`], [`Topic::source`]), polled or inline,
//! whose records are [`EventData::Topic`](crate::EventData::Topic): one
//! publication each, its payload and its sequence number in the topic.
//! A subscriber that falls more than `AEM_TOPIC_QUEUE` (16) publications
//! behind gets the further ones summed up in its newest record, whose
//! `count` says how many it stands for.
//!
//! Permissions are a file's: a topic belongs to the effective user and
//! group that created it, with the creation mode less the umask; read
//! permission lets a user subscribe, write permission publish.
//!
//! ```no_run
//! use aem::{Options, TopicOptions};
//!
//! // Anyone may listen, only this user may publish.
//! let topic = TopicOptions::new()
//!     .subscribe(true)
//!     .publish(true)
//!     .create(0o644)
//!     .open("jobs.done")
//!     .unwrap();
//! let _sub = aem::register(topic.source(), Options::new()).unwrap();
//! topic.publish(42).unwrap();
//! for rec in aem::wait(16, None).unwrap() {
//!     if let aem::EventData::Topic { payload, seq } = rec.data {
//!         println!("publication {seq}: {payload} ({} in this record)", rec.count);
//!     }
//! }
//! ```

use core::mem::size_of;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use aem_syscalls::uapi;

use crate::event::Source;
use crate::{Errno, Error};

/// How to open a topic, in the style of `std::fs::OpenOptions`: made with
/// [`TopicOptions::new`] (or `Default`) and chainable setters, then
/// [`open`](TopicOptions::open)ed.  The descriptor is always
/// close-on-exec.
///
/// ```
/// use aem::TopicOptions;
///
/// let o = TopicOptions::new().publish(true).create(0o600).exclusive(true);
/// assert_eq!((o.subscribe, o.publish, o.create, o.exclusive), (false, true, Some(0o600), true));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct TopicOptions {
    /// Open the topic readable, to subscribe to it (needs read
    /// permission).
    pub subscribe: bool,
    /// Open it writable, to publish (needs write permission).
    pub publish: bool,
    /// Create the topic if it does not exist, with these permission bits
    /// (0o777 at most; the umask is taken off) (`O_CREAT`).
    pub create: Option<u32>,
    /// With [`create`](TopicOptions#structfield.create): fail with
    /// `EEXIST` if the topic exists (`O_EXCL`).
    pub exclusive: bool,
}

impl TopicOptions {
    /// Nothing set: choose [`subscribe`](TopicOptions::subscribe),
    /// [`publish`](TopicOptions::publish) or both before opening.
    pub const fn new() -> TopicOptions {
        TopicOptions {
            subscribe: false,
            publish: false,
            create: None,
            exclusive: false,
        }
    }

    /// Sets [`subscribe`](TopicOptions#structfield.subscribe): open
    /// readable.
    pub const fn subscribe(mut self, subscribe: bool) -> TopicOptions {
        self.subscribe = subscribe;
        self
    }

    /// Sets [`publish`](TopicOptions#structfield.publish): open writable.
    pub const fn publish(mut self, publish: bool) -> TopicOptions {
        self.publish = publish;
        self
    }

    /// Sets [`create`](TopicOptions#structfield.create): create a missing
    /// topic with the permission bits `mode`, less the umask.  The creator
    /// gets the access it asked for whatever the mode.
    pub const fn create(mut self, mode: u32) -> TopicOptions {
        self.create = Some(mode);
        self
    }

    /// Sets [`exclusive`](TopicOptions#structfield.exclusive): with
    /// [`create`](TopicOptions::create), the topic must be new.
    pub const fn exclusive(mut self, exclusive: bool) -> TopicOptions {
        self.exclusive = exclusive;
        self
    }

    /// The `O_*` flags and the mode of `struct aem_topic_open`, or
    /// `EINVAL` when neither access is asked for (no `O_*` access mode
    /// says "neither").
    fn flags_and_mode(self) -> Result<(u32, u32), Error> {
        let access = match (self.subscribe, self.publish) {
            (true, false) => libc::O_RDONLY,
            (false, true) => libc::O_WRONLY,
            (true, true) => libc::O_RDWR,
            (false, false) => return Err(Error::Os(Errno(libc::EINVAL))),
        };
        let mut flags = access | libc::O_CLOEXEC;
        if self.create.is_some() {
            flags |= libc::O_CREAT;
        }
        if self.exclusive {
            flags |= libc::O_EXCL;
        }
        Ok((flags as u32, self.create.unwrap_or(0)))
    }

    /// Open (or create) the topic `name`.
    ///
    /// The kernel checks the name -- 1 to 255 bytes, no `/` (`EINVAL`,
    /// `ENAMETOOLONG`); names beginning with `kernel.` are the kernel's
    /// (`EPERM` to create) -- and reports `ENOENT` (no such topic, without
    /// `create`), `EEXIST`, `EACCES`, `ENOSPC` (the user owns
    /// `user.max_aem_topics` topics), `EMFILE`.  A name with a NUL byte in
    /// it cannot be passed and is `EINVAL`.
    pub fn open(self, name: impl AsRef<OsStr>) -> Result<Topic, Error> {
        let (flags, mode) = self.flags_and_mode()?;
        let name = topic_name(name.as_ref())?;
        let args = uapi::aem_topic_open {
            size: size_of::<uapi::aem_topic_open>() as u32,
            flags,
            mode,
            reserved: 0,
            name: name.as_ptr() as u64,
        };
        let fd = aem_syscalls::aem_topic_open(&args)?;
        Ok(Topic { fd })
    }
}

/// `name` as the C string the kernel reads; `EINVAL` for an interior NUL
/// (the kernel would read a shorter name).
fn topic_name(name: &OsStr) -> Result<CString, Error> {
    CString::new(name.as_bytes()).map_err(|_| Error::Os(Errno(libc::EINVAL)))
}

/// An open topic; dropping it closes the descriptor.
///
/// The topic lives while a descriptor or a subscription refers to it, in
/// any process: a subscription made through this descriptor holds the
/// topic, not the descriptor, and outlives it.
#[derive(Debug)]
pub struct Topic {
    fd: OwnedFd,
}

impl Topic {
    /// Shorthand for [`TopicOptions::new`], as `File::options` is.
    pub const fn options() -> TopicOptions {
        TopicOptions::new()
    }

    /// Publish `payload` to every subscriber, as the topic's next
    /// publication.  `EBADF` when the topic was not opened for
    /// publishing.
    ///
    /// Handler-safe: one write(2), no allocation.
    pub fn publish(&self, payload: u64) -> Result<(), Error> {
        let n = self.write(core::slice::from_ref(&payload))?;
        debug_assert_eq!(n, 1);
        Ok(())
    }

    /// Publish each of `payloads`, in order, and return how many were
    /// published: all of them, unless a write failed after some went
    /// (the error is then that of the next call).  An empty slice
    /// publishes nothing and makes no system call.  The kernel takes up
    /// to a page of payloads (512) a call: a longer slice takes several,
    /// between which other publishers' publications may come.
    ///
    /// Handler-safe: write(2) calls, no allocation.
    pub fn publish_all(&self, payloads: &[u64]) -> Result<usize, Error> {
        let mut done = 0;
        while done < payloads.len() {
            // The kernel takes up to a page a call.
            match self.write(&payloads[done..]) {
                Ok(n) => done += n,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    /// One write(2) of `payloads`; the publications it made.
    fn write(&self, payloads: &[u64]) -> Result<usize, Error> {
        // SAFETY: the bytes of `payloads` are live and readable for the
        // length passed; write(2) only reads them.
        let r = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                payloads.as_ptr().cast(),
                core::mem::size_of_val(payloads),
            )
        };
        if r < 0 {
            return Err(Error::Os(last_errno()));
        }
        Ok(r as usize / size_of::<u64>())
    }

    /// The source of a subscription to this topic, for [`crate::register`]
    /// and the other registration functions: [`Source::topic`] of this
    /// descriptor.  Needs a topic opened for subscribing (`EBADF`).
    pub fn source(&self) -> Source<'_> {
        Source::topic(self.fd.as_fd())
    }

    /// What `/proc/self/fdinfo` says of the topic: its name, owner, mode,
    /// publications and subscribers.
    pub fn info(&self) -> Result<TopicInfo, Error> {
        let path = format!("/proc/self/fdinfo/{}", self.fd.as_raw_fd());
        let text = std::fs::read(path)
            .map_err(|e| Error::Os(Errno(e.raw_os_error().unwrap_or(libc::EIO))))?;
        TopicInfo::parse(&text).ok_or(Error::Os(Errno(libc::EINVAL)))
    }
}

fn last_errno() -> Errno {
    Errno(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

impl AsFd for Topic {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Topic {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<Topic> for OwnedFd {
    fn from(topic: Topic) -> OwnedFd {
        topic.fd
    }
}

/// A topic as its descriptor's `/proc/<pid>/fdinfo` shows it
/// ([`Topic::info`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct TopicInfo {
    /// The topic's name.
    pub name: OsString,
    /// The user that owns it (root for a kernel topic).
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Its permission bits, the umask taken off.
    pub mode: u32,
    /// Publications so far: the sequence number of the last one.
    pub published: u64,
    /// Subscriptions to it, from all processes.
    pub subscribers: u32,
}

impl TopicInfo {
    /// Parse a topic descriptor's fdinfo: the generic lines, then
    /// `aem-topic:\t<name>`, `owner:\t<uid> <gid>`, `mode:\t<octal>`,
    /// `published:\t<n>`, `subscribers:\t<n>`.  The name may hold any
    /// byte but NUL and `/`, a newline included: it is what lies between
    /// `aem-topic:\t` and the last `owner:` line.
    fn parse(text: &[u8]) -> Option<TopicInfo> {
        const NAME: &[u8] = b"aem-topic:\t";
        let start = text.windows(NAME.len()).position(|w| w == NAME)? + NAME.len();
        let rest = &text[start..];
        // The four lines after the name.
        let mut lines = rest.strip_suffix(b"\n")?.rsplitn(5, |&b| b == b'\n');
        let subscribers = field(lines.next()?, "subscribers")?;
        let published = field(lines.next()?, "published")?;
        let mode = field(lines.next()?, "mode")?;
        let owner = field(lines.next()?, "owner")?;
        let name = lines.next()?;
        let (uid, gid) = owner.split_once(' ')?;
        Some(TopicInfo {
            name: OsString::from_vec(name.to_vec()),
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
            mode: u32::from_str_radix(mode, 8).ok()?,
            published: published.parse().ok()?,
            subscribers: subscribers.parse().ok()?,
        })
    }
}

/// The value of the fdinfo line `key:\tvalue`.
fn field<'a>(line: &'a [u8], key: &str) -> Option<&'a str> {
    let value = line.strip_prefix(key.as_bytes())?.strip_prefix(b":\t")?;
    core::str::from_utf8(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_maps_to_open_flags() {
        let flags = |o: TopicOptions| o.flags_and_mode().map(|(f, _)| f as i32);
        let cloexec = libc::O_CLOEXEC;
        let o = TopicOptions::new();
        assert_eq!(flags(o.subscribe(true)), Ok(libc::O_RDONLY | cloexec));
        assert_eq!(flags(o.publish(true)), Ok(libc::O_WRONLY | cloexec));
        assert_eq!(
            flags(o.subscribe(true).publish(true)),
            Ok(libc::O_RDWR | cloexec)
        );
        assert_eq!(flags(o), Err(Error::Os(Errno(libc::EINVAL))));
        let created = o.publish(true).create(0o640).exclusive(true);
        assert_eq!(
            created.flags_and_mode(),
            Ok((
                (libc::O_WRONLY | cloexec | libc::O_CREAT | libc::O_EXCL) as u32,
                0o640
            ))
        );
        // O_EXCL without O_CREAT goes to the kernel, which refuses it.
        assert_eq!(
            flags(o.subscribe(true).exclusive(true)),
            Ok(libc::O_RDONLY | cloexec | libc::O_EXCL)
        );
        assert_eq!(TopicOptions::default(), TopicOptions::new());
        assert_eq!(Topic::options(), TopicOptions::new());
    }

    #[test]
    fn a_name_with_a_nul_is_einval_not_a_panic() {
        let einval = Err(Error::Os(Errno(libc::EINVAL)));
        assert_eq!(topic_name(OsStr::new("a\0b")), einval);
        assert_eq!(
            TopicOptions::new()
                .subscribe(true)
                .open("a\0b")
                .unwrap_err(),
            Error::Os(Errno(libc::EINVAL))
        );
        assert_eq!(
            topic_name(OsStr::new("jobs.done")).unwrap().as_bytes(),
            b"jobs.done"
        );
        // The kernel judges the rest: an empty name is its EINVAL.
        assert!(topic_name(OsStr::new("")).is_ok());
    }

    /// On a kernel without AEM the call itself says so.
    #[test]
    fn open_answers_a_typed_result_on_the_host() {
        match TopicOptions::new().subscribe(true).open("host.test") {
            Err(Error::NotAvailable) | Err(Error::Os(Errno(libc::ENOENT))) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fdinfo_is_parsed() {
        let text = b"pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
                     aem-topic:\tjobs.done\nowner:\t1000 2000\nmode:\t0620\n\
                     published:\t42\nsubscribers:\t3\n";
        let info = TopicInfo::parse(text).unwrap();
        assert_eq!(
            info,
            TopicInfo {
                name: "jobs.done".into(),
                uid: 1000,
                gid: 2000,
                mode: 0o620,
                published: 42,
                subscribers: 3,
            }
        );
    }

    #[test]
    fn a_name_with_newlines_does_not_forge_fields() {
        let text = b"pos:\t0\naem-topic:\tx\nowner:\t0 0\nmode:\t0777\n\
                     owner:\t5 6\nmode:\t0600\npublished:\t0\nsubscribers:\t0\n";
        let info = TopicInfo::parse(text).unwrap();
        assert_eq!(info.name, "x\nowner:\t0 0\nmode:\t0777");
        assert_eq!((info.uid, info.gid, info.mode), (5, 6, 0o600));
    }

    #[test]
    fn other_fdinfo_is_not_a_topic() {
        assert_eq!(TopicInfo::parse(b"pos:\t0\nflags:\t02\n"), None);
        assert_eq!(
            TopicInfo::parse(
                b"aem-topic:\tx\nowner:\t0\nmode:\t0644\npublished:\t1\nsubscribers:\t0\n"
            ),
            None,
            "owner without a group"
        );
        assert_eq!(
            TopicInfo::parse(b"aem-topic:\tx\nowner:\t0 0\nmode:\t0644\npublished:\t1\n"),
            None,
            "a line missing"
        );
    }
}
