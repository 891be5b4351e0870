//! The socket sources, typed: connections the kernel accepts, bytes it
//! reads, and TCP state changes, each handed to a closure that runs inline
//! (see the `# Safety` section of [`crate::register_inline`] for what a
//! handler may do).
//!
//! ```no_run
//! use std::net::TcpListener;
//! use std::os::fd::AsFd;
//!
//! let listener = TcpListener::bind("127.0.0.1:8080").unwrap();
//! // SAFETY: the handler only closes the descriptor it owns (close(2) is
//! // async-signal-safe).
//! let _accepting = unsafe {
//!     aem::on_accept(
//!         listener.as_fd(),
//!         aem::AcceptFlags::default(),
//!         aem::Options::new(),
//!         |conn| {
//!             if let Ok(fd) = conn {
//!                 drop(fd); // serve it, or register an `on_read` for it
//!             }
//!             aem::Action::Rearm
//!         },
//!     )
//! }
//! .unwrap();
//! ```

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use aem_syscalls::uapi;

use crate::event::{attr_base, attr_for, EventData, Options, Record, Source};
use crate::inline::{register_inline_attr, Action, InlineRegistration};
use crate::{Errno, Error, SourceKind};

bitflags::bitflags! {
    /// Flags for the descriptors of accepted connections, a [`bitflags`]
    /// set.  The default is [`CLOEXEC`](AcceptFlags::CLOEXEC) alone:
    /// close-on-exec and blocking, as `std`, mio and rustix accept, so that
    /// a descriptor leaks into an exec'd program only when asked to.  Add
    /// to the default rather than start from a bare flag:
    ///
    /// ```
    /// use aem::AcceptFlags;
    ///
    /// let nonblocking = AcceptFlags::default() | AcceptFlags::NONBLOCK;
    /// assert!(nonblocking.contains(AcceptFlags::CLOEXEC));
    /// let inherited = AcceptFlags::empty(); // kept open across exec
    /// # let _ = inherited;
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct AcceptFlags: u32 {
        /// `O_NONBLOCK` on each new descriptor.
        const NONBLOCK = uapi::AEM_ACCEPT_NONBLOCK;
        /// `FD_CLOEXEC` on each new descriptor.
        const CLOEXEC = uapi::AEM_ACCEPT_CLOEXEC;
    }
}

/// [`AcceptFlags::CLOEXEC`].
impl Default for AcceptFlags {
    fn default() -> Self {
        AcceptFlags::CLOEXEC
    }
}

/// A TCP state (`TCP_*` of `<netinet/tcp.h>`).  `#[non_exhaustive]`:
/// states this crate does not name yet arrive as [`TcpState::Other`], and
/// may get their own variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TcpState {
    /// `TCP_ESTABLISHED`
    Established,
    /// `TCP_SYN_SENT`
    SynSent,
    /// `TCP_SYN_RECV`
    SynRecv,
    /// `TCP_FIN_WAIT1`
    FinWait1,
    /// `TCP_FIN_WAIT2`
    FinWait2,
    /// `TCP_TIME_WAIT`
    TimeWait,
    /// `TCP_CLOSE`
    Close,
    /// `TCP_CLOSE_WAIT`: the peer closed its side (FIN received).
    CloseWait,
    /// `TCP_LAST_ACK`
    LastAck,
    /// `TCP_LISTEN`
    Listen,
    /// `TCP_CLOSING`
    Closing,
    /// A state this crate does not know.
    Other(u8),
}

impl From<u8> for TcpState {
    fn from(raw: u8) -> TcpState {
        match raw {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            other => TcpState::Other(other),
        }
    }
}

/// One TCP state change of a watched socket.  `#[non_exhaustive]`: made
/// by this crate only, and may grow fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct StateChange {
    /// The state before.
    pub old: TcpState,
    /// The state after.
    pub new: TcpState,
    /// The socket's pending error at that moment: `ECONNRESET` after the
    /// peer reset the connection.
    pub error: Option<Errno>,
    /// Changes this record sums up: 1, unless more than 16 piled up
    /// undelivered (then `old` is the first one's, `new` the last one's).
    pub count: u64,
}

impl StateChange {
    pub(crate) fn from_record(data: [u64; 2], count: u64) -> StateChange {
        StateChange {
            old: TcpState::from((data[0] & 0xff) as u8),
            new: TcpState::from(((data[0] >> 8) & 0xff) as u8),
            error: (data[1] != 0).then_some(Errno(data[1] as i32)),
            count,
        }
    }
}

/// What an asynchronous read delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadEvent<'a> {
    /// Bytes the kernel read, in stream order.
    Data(&'a [u8]),
    /// End of file: the event is now disabled.
    Eof,
    /// The read failed: the event is now disabled.
    Error(Errno),
}

/// Run `handler` inline for every connection the kernel accepts on
/// `listener`; it owns each new connection.  On `EMFILE` and the like the
/// connection waits in the backlog and the event is disabled until
/// [`InlineRegistration::enable`].
///
/// # Safety
///
/// `handler` runs inline, interrupting the calling thread between any two
/// instructions: it must keep the contract of
/// [`register_inline`](crate::register_inline#safety).
pub unsafe fn on_accept<F>(
    listener: BorrowedFd<'_>,
    flags: AcceptFlags,
    options: Options,
    mut handler: F,
) -> Result<InlineRegistration, Error>
where
    F: FnMut(Result<OwnedFd, Errno>) -> Action + Send + 'static,
{
    let attr = attr_for(Source::accept(listener, flags), options)?;
    // The record owns the connection: taken out of it, it is the
    // handler's to keep or drop.
    let on_record = move |rec: &mut Record| match rec.take_accept_result() {
        Some(conn) => handler(conn),
        None => Action::Rearm,
    };
    // SAFETY: our caller keeps the contract for `handler`; around it the
    // closure only moves the descriptor out of the record, which is
    // handler-safe.
    unsafe { register_inline_attr(attr, on_record) }
}

/// The buffer the kernel reads into: allocated here, handed to the kernel
/// by address, freed only after the event is unregistered (it lives in the
/// handler, which `InlineRegistration` drops after unregistering); or the
/// thread's shared buffer, never freed.
struct ReadBuffer {
    ptr: *mut u8,
    len: usize,
    /// Freed on drop; false for a thread's shared buffer, which never is.
    owned: bool,
}

// SAFETY: the buffer is plain memory owned by this value, or a thread's
// shared buffer that is never freed; it is touched only by the kernel at
// delivery and by the handler right after, on the registering thread.
unsafe impl Send for ReadBuffer {}

impl ReadBuffer {
    fn new(len: usize) -> ReadBuffer {
        let ptr = Box::into_raw(vec![0u8; len].into_boxed_slice()) as *mut u8;
        ReadBuffer {
            ptr,
            len,
            owned: true,
        }
    }

    /// The calling thread's shared buffer (see [`on_read_shared`]).
    fn shared() -> ReadBuffer {
        ReadBuffer {
            ptr: shared_read_buffer(),
            len: SHARED_READ_BUFFER,
            owned: false,
        }
    }

    /// The first `n` bytes, which the kernel just read.
    ///
    /// # Safety
    /// Only while the kernel does not write the buffer: from the handler
    /// of the delivery that filled it.
    unsafe fn filled(&self, n: usize) -> &[u8] {
        // SAFETY: `ptr` points at `len` initialized bytes (zeroed at
        // allocation, then written by the kernel); the caller guarantees
        // no concurrent write.
        unsafe { core::slice::from_raw_parts(self.ptr, n.min(self.len)) }
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: `ptr` and `len` come from the boxed slice made in
            // `new`.
            drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
        }
    }
}

/// Have the kernel read `fd` into a buffer of `buffer_len` bytes (1 to
/// 2^30) whenever it is readable, and run `handler` inline with the bytes.
/// The stream arrives complete and in order; end of file and errors are
/// reported once, then the event is disabled.
///
/// # Safety
///
/// `handler` runs inline, interrupting the calling thread between any two
/// instructions: it must keep the contract of
/// [`register_inline`](crate::register_inline#safety).
pub unsafe fn on_read<F>(
    fd: BorrowedFd<'_>,
    buffer_len: usize,
    options: Options,
    handler: F,
) -> Result<InlineRegistration, Error>
where
    F: FnMut(ReadEvent<'_>) -> Action + Send + 'static,
{
    let len = u32::try_from(buffer_len)
        .ok()
        .filter(|&l| l != 0 && l <= uapi::AEM_READ_MAX_LEN)
        .ok_or(Error::Os(Errno(libc::EINVAL)))?;
    // SAFETY: our caller keeps the contract for `handler`.  The buffer
    // lives in the handler's closure, which the registration drops only
    // after unregistering.
    unsafe { register_inline_read(fd, ReadBuffer::new(buffer_len), len, options, handler) }
}

/// Bytes of a thread's shared read buffer ([`on_read_shared`]).
pub const SHARED_READ_BUFFER: usize = 16 * 1024;

thread_local! {
    // A constant initialiser and no destructor: the buffer outlives every
    // delivery to this thread (see `shared_read_buffer`).
    static SHARED_READ: core::cell::Cell<*mut u8> = const { core::cell::Cell::new(core::ptr::null_mut()) };
}

/// The calling thread's shared read buffer, allocated on first use and
/// never freed: the kernel may write it at any delivery to this thread,
/// and a thread's inline events end only when the thread itself does.
fn shared_read_buffer() -> *mut u8 {
    SHARED_READ.with(|buf| {
        if buf.get().is_null() {
            let leaked: &'static mut [u8] =
                Box::leak(vec![0u8; SHARED_READ_BUFFER].into_boxed_slice());
            buf.set(leaked.as_mut_ptr());
        }
        buf.get()
    })
}

/// Like [`on_read`], but the kernel reads into one buffer of
/// [`SHARED_READ_BUFFER`] bytes that every such registration of the
/// calling thread shares, as io_uring's provided buffers serve many
/// sockets: an idle connection holds no buffer at all.
///
/// Sound because the kernel reads at delivery, on the registering thread,
/// and handlers of one thread never nest: the bytes a handler sees stay
/// as they are until it returns, and the next delivery reads after that.
/// The buffer is allocated on the thread's first shared read and lives as
/// long as the process (16 KiB per thread that ever uses it).
///
/// # Safety
///
/// `handler` runs inline, interrupting the calling thread between any two
/// instructions: it must keep the contract of
/// [`register_inline`](crate::register_inline#safety).
pub unsafe fn on_read_shared<F>(
    fd: BorrowedFd<'_>,
    options: Options,
    handler: F,
) -> Result<InlineRegistration, Error>
where
    F: FnMut(ReadEvent<'_>) -> Action + Send + 'static,
{
    // SAFETY: our caller keeps the contract for `handler`; the shared
    // buffer is never freed.
    unsafe {
        register_inline_read(
            fd,
            ReadBuffer::shared(),
            SHARED_READ_BUFFER as u32,
            options,
            handler,
        )
    }
}

/// A read registration into `buffer`, of which the kernel fills at most
/// `len` bytes.
///
/// # Safety
///
/// `handler` keeps the contract of `register_inline`.
unsafe fn register_inline_read<F>(
    fd: BorrowedFd<'_>,
    buffer: ReadBuffer,
    len: u32,
    options: Options,
    mut handler: F,
) -> Result<InlineRegistration, Error>
where
    F: FnMut(ReadEvent<'_>) -> Action + Send + 'static,
{
    let mut attr = attr_base(options);
    attr.source = SourceKind::Read.raw();
    attr.__bindgen_anon_1.read = uapi::aem_read_source {
        fd: fd.as_raw_fd(),
        len,
        buf: buffer.ptr as u64,
    };
    let on_record = move |rec: &mut Record| {
        let event = match rec.data {
            EventData::Read { result: Ok(0) } => ReadEvent::Eof,
            EventData::Read { result: Ok(n) } => {
                // SAFETY: the kernel wrote `n` <= `len` bytes into the
                // buffer before running this handler, and writes it again
                // only at a later delivery on this thread, after the
                // handler returned (handlers of a thread never nest).
                ReadEvent::Data(unsafe { buffer.filled(n) })
            }
            EventData::Read { result: Err(e) } => ReadEvent::Error(e),
            _ => return Action::Rearm,
        };
        handler(event)
    };
    // SAFETY: our caller keeps the contract for `handler`; around it the
    // closure only reads the buffer, which is handler-safe.
    unsafe { register_inline_attr(attr, on_record) }
}

/// Run `handler` inline for each TCP state change of the socket `fd`, in
/// order, closing states included.
///
/// # Safety
///
/// `handler` runs inline, interrupting the calling thread between any two
/// instructions: it must keep the contract of
/// [`register_inline`](crate::register_inline#safety).
pub unsafe fn on_socket_state<F>(
    fd: BorrowedFd<'_>,
    options: Options,
    mut handler: F,
) -> Result<InlineRegistration, Error>
where
    F: FnMut(StateChange) -> Action + Send + 'static,
{
    let attr = attr_for(Source::socket_state(fd), options)?;
    let on_record = move |rec: &mut Record| match rec.data {
        EventData::SocketState(change) => handler(change),
        _ => Action::Rearm,
    };
    // SAFETY: our caller keeps the contract for `handler`; around it the
    // closure touches nothing but the record.
    unsafe { register_inline_attr(attr, on_record) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::errno_or;

    #[test]
    fn state_changes_decode() {
        let c = StateChange::from_record([1 | (8 << 8), 0], 1);
        assert_eq!(
            (c.old, c.new, c.error),
            (TcpState::Established, TcpState::CloseWait, None)
        );
        let c = StateChange::from_record([1 | (7 << 8), libc::ECONNRESET as u64], 3);
        assert_eq!(c.error, Some(Errno(libc::ECONNRESET)));
        assert_eq!(c.count, 3);
        assert_eq!(TcpState::from(42), TcpState::Other(42));
    }

    #[test]
    fn errno_words_decode() {
        assert_eq!(errno_or(5), Ok(5));
        assert_eq!(errno_or(-24i64 as u64), Err(Errno(24)));
    }

    #[test]
    fn accept_flags_map_to_the_abi() {
        let f = AcceptFlags::default() | AcceptFlags::NONBLOCK;
        assert_eq!(
            f.bits(),
            uapi::AEM_ACCEPT_NONBLOCK | uapi::AEM_ACCEPT_CLOEXEC
        );
        assert_eq!(AcceptFlags::default().bits(), uapi::AEM_ACCEPT_CLOEXEC);
        assert_eq!(AcceptFlags::empty().bits(), 0);
    }
}
