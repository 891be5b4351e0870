//! The few socket, rlimit, signal and epoll calls std does not offer:
//! through `nix`, except the thin epoll wrapper, whose raw events the
//! binaries share.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage,
};

/// Binds a TCP listener to `addr` (`host:port`; port 0 picks a free one)
/// with `SO_REUSEADDR`, so a restarted server need not wait out TIME_WAIT,
/// and with the given accept backlog, which std's `TcpListener::bind` does
/// not let one choose. The kernel caps the backlog at `net.core.somaxconn`;
/// a backlog beyond `SOMAXCONN` (4096) or negative asks for that cap.
/// The listener is blocking, as from `TcpListener::bind`.
pub fn listen(addr: &str, backlog: i32) -> io::Result<TcpListener> {
    let addr = resolve(addr)?;
    let fd = socket(&addr, SockFlag::empty())?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    let backlog = Backlog::new(backlog).unwrap_or(Backlog::MAXALLOWABLE);
    socket::listen(&fd, backlog)?;
    Ok(TcpListener::from(fd))
}

/// Starts connecting a non-blocking TCP socket to `addr`. The connection is
/// usually still in progress on return: wait until the socket is writable,
/// then check `TcpStream::take_error`.
pub fn connect_nonblocking(addr: &SocketAddr) -> io::Result<TcpStream> {
    let fd = socket(addr, SockFlag::SOCK_NONBLOCK)?;
    match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(*addr)) {
        Ok(()) | Err(Errno::EINPROGRESS) => Ok(TcpStream::from(fd)),
        Err(e) => Err(e.into()),
    }
}

/// Raises `RLIMIT_NOFILE` to at least `n`, soft and hard limit, so that a
/// process can hold tens of thousands of connections. Never lowers a limit.
///
/// Raising the hard limit takes `CAP_SYS_RESOURCE` (the guest runs as
/// root). Without it, the soft limit is still raised to the hard one, and
/// the error returned; see [`nofile_limit`] for what was achieved.
pub fn raise_nofile(n: u64) -> io::Result<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= n {
        return Ok(());
    }
    let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, n, hard.max(n)) else {
        return Ok(());
    };
    if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    Err(e.into())
}

/// The current soft `RLIMIT_NOFILE`: how many descriptors the process may
/// have open.
pub fn nofile_limit() -> io::Result<u64> {
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// A level-triggered epoll instance; each registration carries a `u64`
/// token that comes back with its events.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// Creates the epoll instance.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    /// Watches `fd` for `events` (`libc::EPOLLIN` etc.).
    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Changes the events and token `fd` is watched for.
    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Stops watching `fd`. Closing a descriptor does this too.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) for events and returns those
    /// that arrived, as `(events, token)`; none if a signal interrupted.
    pub fn wait<'a>(
        &self,
        buf: &'a mut [libc::epoll_event],
        timeout_ms: i32,
    ) -> io::Result<impl Iterator<Item = (u32, u64)> + 'a> {
        let max = buf.len().min(i32::MAX as usize) as i32;
        // SAFETY: the kernel writes at most `max` events into `buf`.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), buf.as_mut_ptr(), max, timeout_ms) };
        let n = match cvt(n) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        // Copy the fields out: epoll_event is packed on x86-64.
        Ok(buf[..n].iter().map(|ev| (ev.events, ev.u64)))
    }
}

/// Resolves `host:port` to its first address.
fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: no address")))
}

/// A new close-on-exec TCP socket for `addr`'s family.
fn socket(addr: &SocketAddr, flags: SockFlag) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    Ok(socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | flags,
        None,
    )?)
}

/// Turns a -1 return into the `errno` error.
fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Blocks SIGTERM and SIGINT and returns a signalfd that reports them, so
/// that the event loop sees a shutdown request as one more event.
pub fn shutdown_signals() -> io::Result<OwnedFd> {
    let set = SigSet::from_iter([Signal::SIGTERM, Signal::SIGINT]);
    // The process is single-threaded, so sigprocmask covers every thread.
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    Ok(fd.into())
}
