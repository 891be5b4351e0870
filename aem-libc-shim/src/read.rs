//! Reads the kernel completes, taken as polled records.
//!
//! [`register_read`] has the kernel read a descriptor into a buffer that
//! the registration owns, whenever the descriptor is readable; the count
//! comes as a [`Record`] ([`EventData::Read`]) through [`crate::wait`],
//! [`Context::try_wait`](crate::Context::try_wait) or
//! [`Context::wait`](crate::Context::wait), and
//! [`ReadRegistration::take`] copies the bytes out.  The kernel reads
//! once per record, and the next read waits for [`ReadRegistration::rearm`]:
//! a connection that is not rearmed is not read, and TCP flow control
//! pushes back on its peer.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::TcpStream;
//! use std::os::fd::AsFd;
//! use aem::{Context, Events, Options, ReadEvent};
//!
//! let stream = TcpStream::connect("127.0.0.1:7007")?;
//! let reader = aem::register_read(stream.as_fd(), 16 * 1024, Options::default())?;
//! let (ctx, mut events, mut bytes) = (Context::new()?, Events::with_capacity(16), Vec::new());
//! loop {
//!     ctx.wait(&mut events, None)?;
//!     for record in &events {
//!         bytes.clear();
//!         match reader.take(record, &mut bytes) {
//!             Some(ReadEvent::Data(new)) => {
//!                 println!("{} bytes", new.len());
//!                 reader.rearm()?;
//!             }
//!             Some(_) => return Ok(()), // end of stream, or an error
//!             None => {}                // another event's record
//!         }
//!     }
//! }
//! # }
//! ```
//!
//! # Why the bytes are copied
//!
//! The kernel writes the buffer when a record is taken, by whichever thread
//! of the process takes it.  A registration is disarmed by the delivery of
//! each record (`AEM_EV_DISPATCH`), so between a record and
//! [`ReadRegistration::rearm`] nothing writes the buffer; but a slice of it
//! handed out could outlive the rearm, or be asked for with a record that
//! is stale or made up, while another thread takes the next record.  So
//! [`ReadRegistration::take`] copies the bytes out, reading the buffer with
//! atomic loads that no concurrent write of the kernel makes undefined:
//! a record of the wrong time gives wrong bytes, never undefined behaviour.

use core::sync::atomic::{AtomicU64, Ordering};
use std::os::fd::{AsRawFd, BorrowedFd};

use aem_syscalls::uapi;

use crate::event::{attr_base, register_attr, EventData, Options, Record, Registration};
use crate::socket::ReadEvent;
use crate::{Errno, Error, SourceKind};

/// Memory the kernel reads into: words, so that it is copied out with
/// atomic loads of eight bytes.
struct Buffer {
    words: Box<[AtomicU64]>,
    len: usize,
}

impl Buffer {
    fn new(len: usize) -> Buffer {
        let words = (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect();
        Buffer { words, len }
    }

    fn addr(&self) -> u64 {
        self.words.as_ptr() as u64
    }

    /// Append the first `n` bytes (at most the buffer's) to `dst`.
    fn copy_to(&self, n: usize, dst: &mut Vec<u8>) {
        let n = n.min(self.len);
        dst.reserve(n);
        let mut left = n;
        for word in self.words.iter() {
            if left == 0 {
                break;
            }
            // The kernel wrote the bytes before the system call that took
            // the record returned; memory order is the machine's.
            let bytes = word.load(Ordering::Relaxed).to_ne_bytes();
            let k = left.min(8);
            dst.extend_from_slice(&bytes[..k]);
            left -= k;
        }
    }
}

impl core::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Buffer")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .finish()
    }
}

/// A read the kernel completes for polled delivery; dropping it
/// unregisters the event, then frees its buffer.  Made by
/// [`register_read`].
#[derive(Debug)]
pub struct ReadRegistration {
    /// `Some` until dropped.
    reg: Option<Registration>,
    buffer: Buffer,
}

/// Have the kernel read `fd` into a buffer of `buffer_len` bytes (1 to
/// 2^30) owned by the registration, when it is readable and the
/// registration armed, and deliver the count as a polled record
/// ([`EventData::Read`], with `id` [`ReadRegistration::id`] and
/// [`Options::cookie`]).
///
/// A registration starts armed (unless `options.disabled`), and each
/// record disarms it: [`ReadRegistration::rearm`] after consuming the bytes
/// with [`ReadRegistration::take`] lets the kernel read again, at once if
/// bytes are waiting.  The stream so arrives complete and in order.  End of
/// file and errors are delivered once, and the registration stays
/// disarmed.  `options.dispatch` is implied; `options.level` means
/// nothing here (a read is level-triggered by nature).
///
/// The registration holds the file, as `aem_register(2)` says: closing
/// `fd` does not end a connection while the registration lives.  Drop the
/// registration first.
///
/// Safe: the kernel writes only memory the registration owns, freed after
/// the event is unregistered.
pub fn register_read(
    fd: BorrowedFd<'_>,
    buffer_len: usize,
    options: Options,
) -> Result<ReadRegistration, Error> {
    let len = u32::try_from(buffer_len)
        .ok()
        .filter(|&l| l != 0 && l <= uapi::AEM_READ_MAX_LEN)
        .ok_or(Error::Os(Errno(libc::EINVAL)))?;
    let buffer = Buffer::new(buffer_len);
    let mut attr = attr_base(Options {
        dispatch: true,
        ..options
    });
    attr.source = SourceKind::Read.raw();
    attr.__bindgen_anon_1.read = uapi::aem_read_source {
        fd: fd.as_raw_fd(),
        len,
        buf: buffer.addr(),
    };
    let reg = register_attr(&attr)?;
    Ok(ReadRegistration {
        reg: Some(reg),
        buffer,
    })
}

impl ReadRegistration {
    fn reg(&self) -> &Registration {
        self.reg
            .as_ref()
            .expect("a ReadRegistration is live until dropped")
    }

    /// The registration's id, as in its records and `/proc/<pid>/aem`.
    pub fn id(&self) -> u32 {
        self.reg().id()
    }

    /// The buffer's size: the most one record delivers.
    pub fn buffer_len(&self) -> usize {
        self.buffer.len
    }

    /// What `record` delivered, if it is one of this registration's
    /// (`None` otherwise): the bytes read, appended to `dst` and returned
    /// as [`ReadEvent::Data`] (a slice of `dst`), or the end of the stream,
    /// or the error.
    ///
    /// Call it once per record, before [`ReadRegistration::rearm`]: the
    /// buffer holds the bytes of the last record until then.
    pub fn take<'d>(&self, record: &Record, dst: &'d mut Vec<u8>) -> Option<ReadEvent<'d>> {
        if record.id != self.id() {
            return None;
        }
        match &record.data {
            EventData::Read { result: Ok(0) } => Some(ReadEvent::Eof),
            EventData::Read { result: Ok(n) } => {
                let start = dst.len();
                self.buffer.copy_to(*n, dst);
                Some(ReadEvent::Data(&dst[start..]))
            }
            EventData::Read { result: Err(e) } => Some(ReadEvent::Error(*e)),
            _ => None,
        }
    }

    /// Let the kernel read again (`AEM_CTL_ENABLE`): a record comes as soon
    /// as bytes are there, at once if some are waiting.  After the end of
    /// the stream or an error, do not: it reports them again.
    pub fn rearm(&self) -> Result<(), Error> {
        self.reg().enable()
    }

    /// Stop reading until [`ReadRegistration::rearm`].
    pub fn disarm(&self) -> Result<(), Error> {
        self.reg().disable()
    }

    /// Unregister now, reporting failure (dropping ignores it).
    pub fn unregister(mut self) -> Result<(), Error> {
        let reg = self
            .reg
            .take()
            .expect("a ReadRegistration is live until dropped");
        let r = reg.unregister();
        if !frees_buffer(r) {
            core::mem::forget(core::mem::replace(&mut self.buffer, Buffer::new(0)));
        }
        r
    }
}

/// Whether the kernel can no longer write the buffer after an unregister
/// that returned `r`: it unregistered the event, or had none by that id
/// for this handle (a one-shot already gone, or a handle inherited over
/// `fork()`, whose process never registered it).  Otherwise (a fatal
/// signal interrupted the call) the buffer is leaked, not freed.
fn frees_buffer(r: Result<(), Error>) -> bool {
    matches!(r, Ok(()) | Err(Error::Os(Errno(libc::ENOENT))))
}

impl Drop for ReadRegistration {
    fn drop(&mut self) {
        if let Some(reg) = self.reg.take() {
            if !frees_buffer(reg.unregister()) {
                core::mem::forget(core::mem::replace(&mut self.buffer, Buffer::new(0)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_what_the_kernel_wrote_and_no_more() {
        let b = Buffer::new(13);
        assert_eq!(b.words.len(), 2);
        // What the kernel does: write bytes at the buffer's address.
        let src: Vec<u8> = (1..=13).collect();
        // SAFETY: the buffer has room for 16 bytes; nothing else uses it.
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), b.addr() as *mut u8, 13);
        }
        let mut dst = vec![0xaa];
        b.copy_to(11, &mut dst);
        assert_eq!(dst[0], 0xaa);
        assert_eq!(&dst[1..], &src[..11]);
        dst.clear();
        b.copy_to(100, &mut dst);
        assert_eq!(dst, src, "at most the buffer's length");
    }

    #[test]
    fn bad_lengths_are_refused_before_any_system_call() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        for len in [0, (uapi::AEM_READ_MAX_LEN as usize) + 1] {
            let e = register_read(f.as_fd(), len, Options::default()).unwrap_err();
            assert_eq!(e, Error::Os(Errno(libc::EINVAL)));
        }
    }

    #[test]
    fn only_a_gone_event_frees_the_buffer() {
        assert!(frees_buffer(Ok(())));
        assert!(frees_buffer(Err(Error::Os(Errno(libc::ENOENT)))));
        assert!(!frees_buffer(Err(Error::Os(Errno(libc::EINTR)))));
    }
}
