//! The few socket, rlimit and epoll calls std does not offer.

use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Binds a TCP listener to `addr` (`host:port`; port 0 picks a free one)
/// with `SO_REUSEADDR`, so a restarted server need not wait out TIME_WAIT,
/// and with the given accept backlog, which std's `TcpListener::bind` does
/// not let one choose. The kernel caps the backlog at `net.core.somaxconn`.
/// The listener is blocking, as from `TcpListener::bind`.
pub fn listen(addr: &str, backlog: i32) -> io::Result<TcpListener> {
    let addr = resolve(addr)?;
    let fd = socket(&addr, 0)?;
    let one: libc::c_int = 1;
    // SAFETY: passes a pointer to a c_int and its size, as SO_REUSEADDR takes.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let (storage, len) = sockaddr(&addr);
    // SAFETY: `storage` holds a socket address of `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    })?;
    // SAFETY: plain syscall on a socket we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(TcpListener::from(fd))
}

/// Starts connecting a non-blocking TCP socket to `addr`. The connection is
/// usually still in progress on return: wait until the socket is writable,
/// then check `TcpStream::take_error`.
pub fn connect_nonblocking(addr: &SocketAddr) -> io::Result<TcpStream> {
    let fd = socket(addr, libc::SOCK_NONBLOCK)?;
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a socket address of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(TcpStream::from(fd))
}

/// Raises `RLIMIT_NOFILE` to at least `n`, soft and hard limit, so that a
/// process can hold tens of thousands of connections. Never lowers a limit.
///
/// Raising the hard limit takes `CAP_SYS_RESOURCE` (the guest runs as
/// root). Without it, the soft limit is still raised to the hard one, and
/// the error returned; see [`nofile_limit`] for what was achieved.
pub fn raise_nofile(n: u64) -> io::Result<()> {
    let lim = getrlimit()?;
    if lim.rlim_cur >= n {
        return Ok(());
    }
    let want = libc::rlimit {
        rlim_cur: n,
        rlim_max: lim.rlim_max.max(n),
    };
    // SAFETY: passes a valid rlimit.
    let Err(e) = cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) }) else {
        return Ok(());
    };
    if lim.rlim_cur < lim.rlim_max {
        let most = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: passes a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &most) };
    }
    Err(e)
}

/// The current soft `RLIMIT_NOFILE`: how many descriptors the process may
/// have open.
pub fn nofile_limit() -> io::Result<u64> {
    Ok(getrlimit()?.rlim_cur)
}

fn getrlimit() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit to the pointer it is given.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    Ok(lim)
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
fn socket(addr: &SocketAddr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the result is checked before use.
    let fd =
        cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags, 0) })?;
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `addr` as the C socket address bind(2) and connect(2) take.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // socket address, and all-zero is a valid sockaddr_in.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
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
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid. The
    // process is single-threaded, so sigprocmask covers every thread.
    let fd = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
