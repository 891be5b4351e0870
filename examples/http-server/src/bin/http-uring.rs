//! `http-uring`: the same single-threaded HTTP/1.1 server as `http-epoll`,
//! on io_uring alone, written the way a Linux server has been since 6.0:
//!
//! * one thread, one ring, set up with `IORING_SETUP_SINGLE_ISSUER |
//!   IORING_SETUP_DEFER_TASKRUN` (completion work runs only when the loop
//!   asks for completions, never as an interruption), falling back to
//!   `COOP_TASKRUN`, then to a plain ring, on a kernel that refuses them;
//! * one multishot accept on the listener, one multishot recv per
//!   connection, both re-armed whenever a completion comes without
//!   `IORING_CQE_F_MORE`;
//! * received bytes land in a provided buffer ring shared by all
//!   connections, so an idle connection holds no read buffer: a buffer is
//!   taken by the kernel when bytes arrive and goes back to the ring as soon
//!   as [`Conn`] has copied them;
//! * replies go out with `IORING_OP_SEND` of the connection's pending
//!   output, the rest re-sent after a short send;
//! * SIGTERM and SIGINT arrive through a signalfd watched by a poll SQE;
//! * the loop makes one `io_uring_enter` per turn: it submits everything
//!   the last batch of completions asked for and waits for the next batch.
//!
//! Back-pressure mirrors `http-epoll`, which stops reading while output is
//! pending: bytes that arrive while a send is in flight wait in a
//! per-connection `held` buffer, and are given to `Conn` only once the
//! output has been sent and `Conn` has nothing left to answer. The
//! multishot recv stays armed while `held` is small (a pipelining client
//! costs no cancel and re-arm per reply); past [`HELD_CAP`] it is cancelled
//! and re-armed once `held` has been consumed, so a client that sends
//! without reading fills its own socket buffers, not the server's memory.
//!
//! Connections live in a table indexed by descriptor. Every SQE's
//! `user_data` names the operation, the descriptor and the generation of
//! the connection in that slot, so a late completion for a connection that
//! has since been closed (and whose descriptor may already serve another)
//! is recognised and dropped.

use std::io::{self, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use aem_http::{shutdown_signals, Conn, ServerArgs};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

const USAGE: &str = "usage: http-uring [--addr HOST:PORT] [--max-conns N]";

/// Submission queue entries; the completion queue gets twice as many.
/// Enough that the SQ fills only when thousands of connections arrive in
/// one batch, which [`Server::flush`] handles by submitting early.
const RING_ENTRIES: u32 = 4096;

/// The provided buffer group all receives draw from.
const BGID: u16 = 0;

/// Buffers in the provided buffer ring (a power of two, as the kernel
/// requires). A buffer is out of the ring only between the receive that
/// fills it and the end of the same loop turn, when `Conn` has copied it,
/// so the ring needs about as many buffers as connections that receive in
/// one turn: 1,024 covers the benchmark's 100 busy clients ten times over
/// and the 200-connection storm of the conformance test. A bigger burst
/// only runs the ring dry for a moment: the receives that find it empty
/// end with `ENOBUFS` and are re-armed once this turn's buffers are back.
/// 1,024 x 4 KiB is 4 MiB for the whole server, however many connections
/// are idle.
const BUF_COUNT: u16 = 1024;

/// Bytes per provided buffer: a typical request head fits in one. Longer
/// input just arrives in several completions, which `Conn` reassembles.
const BUF_SIZE: usize = 4096;

/// Received bytes a connection may hold back while its output is being
/// sent before its multishot recv is cancelled; the same as the most
/// `http-epoll` reads at once.
const HELD_CAP: usize = 64 * 1024;

/// `user_data` layout: operation in bits 56..64, generation in bits 32..56,
/// descriptor in bits 0..32.
const GEN_MASK: u32 = (1 << 24) - 1;

/// What an SQE does, as recorded in its `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// The multishot accept on the listener.
    Accept = 1,
    /// The poll on the signalfd.
    Signal,
    /// A connection's multishot recv.
    Recv,
    /// A send of a connection's pending output.
    Send,
    /// An `AsyncCancel`; completes only on failure, which is ignored.
    Cancel,
    /// An `IORING_OP_CLOSE`; completes only on failure, which is ignored.
    Close,
}

impl Op {
    fn from_bits(bits: u64) -> Option<Op> {
        [
            Op::Accept,
            Op::Signal,
            Op::Recv,
            Op::Send,
            Op::Cancel,
            Op::Close,
        ]
        .into_iter()
        .find(|&op| op as u64 == bits)
    }
}

/// The `user_data` of `op` on descriptor `fd` for the connection of
/// generation `gen`.
fn token(op: Op, fd: RawFd, gen: u32) -> u64 {
    (op as u64) << 56 | u64::from(gen & GEN_MASK) << 32 | u64::from(fd as u32)
}

/// Splits a `user_data` made by [`token`].
fn untoken(user_data: u64) -> (Option<Op>, RawFd, u32) {
    let op = Op::from_bits(user_data >> 56);
    let gen = (user_data >> 32) as u32 & GEN_MASK;
    (op, user_data as u32 as RawFd, gen)
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` zeroed, page-aligned bytes.
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping aliases nothing; the result is
        // checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned 0"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly what mmap returned and took,
        // and the owner guarantees (see `Server`'s field order) that the
        // kernel no longer uses the memory.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The provided buffer ring: [`BUF_COUNT`] buffers of [`BUF_SIZE`] bytes
/// that multishot receives fill, in whatever order connections receive.
///
/// Ownership of each buffer alternates: while its id is in the ring
/// (between the tail we publish and the kernel's head), the kernel may
/// write it at any time and we do not touch it; once a completion names it,
/// it is ours until [`put`](Self::put) hands it back.
struct BufRing {
    /// `BUF_COUNT` `io_uring_buf` entries; the ring's tail is the `resv`
    /// field of entry 0, as the kernel defines it.
    ring: Mapping,
    /// The buffers themselves, `BUF_SIZE` bytes each, by buffer id.
    bufs: Mapping,
    /// Our tail: entries before it are the kernel's once published.
    tail: u16,
}

impl BufRing {
    /// Maps the ring and the buffers and fills the ring with every buffer.
    /// The kernel sees none of it until [`register`](Self::register).
    fn new() -> io::Result<Self> {
        let entries = usize::from(BUF_COUNT);
        let ring = Mapping::new(entries * std::mem::size_of::<types::BufRingEntry>())?;
        let bufs = Mapping::new(entries * BUF_SIZE)?;
        let mut me = BufRing {
            ring,
            bufs,
            tail: 0,
        };
        for bid in 0..BUF_COUNT {
            me.put(bid);
        }
        me.publish();
        Ok(me)
    }

    /// Registers the ring as buffer group [`BGID`] of `ring`.
    fn register(&self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: the ring memory is a page-aligned mapping of BUF_COUNT
        // entries, and `Server` drops its `IoUring` (which unregisters the
        // group) before this `BufRing`, so the memory outlives the
        // registration.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.ring.ptr.as_ptr() as u64,
                BUF_COUNT,
                BGID,
                0,
            )
        }
    }

    /// Appends buffer `bid` to the ring; the kernel sees it after the next
    /// [`publish`](Self::publish).
    fn put(&mut self, bid: u16) {
        let entries = self.ring.ptr.as_ptr().cast::<types::BufRingEntry>();
        let slot = usize::from(self.tail & (BUF_COUNT - 1));
        // SAFETY: `slot` < BUF_COUNT, inside the mapping. There are only
        // BUF_COUNT buffers, each in the ring at most once, so the entry at
        // our tail is not one the kernel still has to read (head <= tail
        // <= head + BUF_COUNT). The setters leave `resv`, the tail of the
        // ring when this is entry 0, alone.
        let entry = unsafe { &mut *entries.add(slot) };
        let addr = self.bufs.ptr.as_ptr() as u64 + u64::from(bid) * BUF_SIZE as u64;
        entry.set_addr(addr);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every buffer [`put`](Self::put) so far available to the kernel.
    fn publish(&self) {
        let entries = self.ring.ptr.as_ptr().cast::<types::BufRingEntry>();
        // SAFETY: the ring has at least one entry; `tail` points at its
        // `resv` field, a u16 inside the mapping, suitably aligned, that
        // the kernel only reads (with acquire ordering). The release store
        // orders the entries written by `put` before it.
        let tail = unsafe { &*types::BufRingEntry::tail(entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// # Safety
    ///
    /// `bid` must have come from a completion and not have been
    /// [`put`](Self::put) back since: only then is the kernel done with it.
    unsafe fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < BUF_COUNT && len <= BUF_SIZE, "bad buffer {bid}/{len}");
        // SAFETY: in bounds by the assertion; the caller guarantees the
        // kernel will not write the buffer while the slice lives (it
        // cannot be put back while borrowed from `self`).
        unsafe {
            std::slice::from_raw_parts(self.bufs.ptr.as_ptr().add(usize::from(bid) * BUF_SIZE), len)
        }
    }
}

/// One client connection.
struct Client {
    fd: OwnedFd,
    /// The generation of this slot's connection, in its `user_data`s.
    gen: u32,
    http: Conn,
    /// Responses not yet sent; `out[sent..]` is what is left. While
    /// `sending`, the kernel reads `out[sent..]`: it is not touched until
    /// the send completes.
    out: Vec<u8>,
    sent: usize,
    /// A send is in flight.
    sending: bool,
    /// Bytes received while sending, for `http` once the output is sent.
    held: Vec<u8>,
    /// A multishot recv is armed (its last completion has not come yet).
    recv_armed: bool,
    /// That recv is being cancelled because `held` reached [`HELD_CAP`].
    recv_cancelling: bool,
    /// The client shut down its side; close once the output is sent.
    eof: bool,
}

/// Whether a connection lives on after an event.
#[derive(PartialEq, Eq)]
enum Next {
    Keep,
    Close,
}

impl Client {
    fn new(fd: OwnedFd, gen: u32) -> Self {
        Client {
            fd,
            gen,
            http: Conn::new("http-uring"),
            out: Vec::new(),
            sent: 0,
            sending: false,
            held: Vec::new(),
            recv_armed: false,
            recv_cancelling: false,
            eof: false,
        }
    }

    fn token(&self, op: Op) -> u64 {
        token(op, self.fd.as_raw_fd(), self.gen)
    }

    /// Whether the connection should have a recv armed.
    fn wants_recv(&self) -> bool {
        !self.eof && !self.http.wants_close() && self.held.len() < HELD_CAP
    }

    /// Arms the multishot recv if it should be and is not.
    fn arm_recv(&mut self, sqes: &mut Vec<squeue::Entry>) {
        if !self.recv_armed && self.wants_recv() {
            let fd = types::Fd(self.fd.as_raw_fd());
            sqes.push(
                opcode::RecvMulti::new(fd, BGID)
                    .build()
                    .user_data(self.token(Op::Recv)),
            );
            self.recv_armed = true;
            self.recv_cancelling = false;
        }
    }

    /// Takes received bytes.
    fn on_data(&mut self, data: &[u8], sqes: &mut Vec<squeue::Entry>) {
        if self.http.wants_close() {
            // Closing once the output is out; `Conn` would ignore them.
            return;
        }
        if self.sending {
            self.held.extend_from_slice(data);
            if self.held.len() >= HELD_CAP && self.recv_armed && !self.recv_cancelling {
                sqes.push(cancel(self.token(Op::Recv), self.token(Op::Cancel)));
                self.recv_cancelling = true;
            }
            return;
        }
        // A malformed request gets its error response queued and
        // `wants_close` set, which ends the connection after the send;
        // there is nothing else to do about it.
        let _ = self.http.on_bytes(data, &mut self.out);
        if !self.out.is_empty() {
            self.send(sqes);
        }
    }

    /// After a recv completion: closes on EOF with nothing left to send,
    /// otherwise re-arms the recv if it ended.
    fn after_recv(&mut self, sqes: &mut Vec<squeue::Entry>) -> Next {
        if self.eof && !self.sending {
            return Next::Close;
        }
        self.arm_recv(sqes);
        Next::Keep
    }

    /// Sends `out[sent..]`.
    fn send(&mut self, sqes: &mut Vec<squeue::Entry>) {
        let rest = &self.out[self.sent..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        // The kernel reads `rest` after this returns: `sending` keeps
        // `out` unmodified until the send completes, and `Server::close`
        // keeps it alive past the connection if need be.
        let sqe = opcode::Send::new(types::Fd(self.fd.as_raw_fd()), rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(self.token(Op::Send));
        sqes.push(sqe);
        self.sending = true;
    }

    /// A send completed with `res`.
    fn on_send(&mut self, res: i32, sqes: &mut Vec<squeue::Entry>) -> Next {
        self.sending = false;
        let Ok(n) = usize::try_from(res) else {
            return Next::Close;
        };
        self.sent += n;
        if self.sent < self.out.len() {
            self.send(sqes);
            return Next::Keep;
        }
        self.out.clear();
        self.sent = 0;
        if self.http.wants_close() {
            return Next::Close;
        }
        // Everything is sent: answer requests `Conn` held back while the
        // output was large, and only then the bytes held back here.
        let _ = self.http.on_bytes(&[], &mut self.out);
        if self.out.is_empty() && !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            let _ = self.http.on_bytes(&held, &mut self.out);
        }
        if !self.out.is_empty() {
            self.send(sqes);
        } else if self.eof {
            return Next::Close;
        }
        self.arm_recv(sqes);
        Next::Keep
    }
}

/// An `AsyncCancel` of the request `target`, which posts no completion
/// when it succeeds.
fn cancel(target: u64, user_data: u64) -> squeue::Entry {
    opcode::AsyncCancel::new(target)
        .build()
        .flags(squeue::Flags::SKIP_SUCCESS)
        .user_data(user_data)
}

/// A table slot: the connection on this descriptor, if any, and the
/// generation of the latest one.
#[derive(Default)]
struct Slot {
    gen: u32,
    client: Option<Client>,
}

/// The server. Fields drop in declaration order, and that order is part of
/// its soundness: the ring goes first, and closing it cancels every
/// request, so the buffer ring and every `out` buffer a send may still read
/// outlive the kernel's use of them.
struct Server {
    ring: IoUring,
    bufs: BufRing,
    /// Connections, indexed by descriptor number, which the kernel keeps
    /// small and unique among open descriptors.
    slots: Vec<Slot>,
    /// The output buffers of connections closed while a send was in flight,
    /// by that send's `user_data`, kept until its completion.
    orphans: Vec<(u64, Vec<u8>)>,
    /// SQEs to submit on the next enter.
    sqes: Vec<squeue::Entry>,
    listener: TcpListener,
    signals: OwnedFd,
    open: usize,
    max_conns: usize,
}

/// Builds the ring with the flags a single-threaded server wants, falling
/// back to what an older or restricted kernel accepts.
fn new_ring() -> io::Result<IoUring> {
    let mut modern = IoUring::builder();
    modern
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all();
    let mut coop = IoUring::builder();
    coop.setup_coop_taskrun().setup_submit_all();
    for builder in [modern, coop] {
        match builder.build(RING_ENTRIES) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            ring => return ring,
        }
    }
    IoUring::new(RING_ENTRIES)
}

impl Server {
    /// Submits every queued SQE: pushes them into the SQ, submitting early
    /// whenever it is full.
    fn flush(&mut self) -> io::Result<()> {
        let mut queued = &self.sqes[..];
        while !queued.is_empty() {
            let mut sq = self.ring.submission();
            let room = sq.capacity() - sq.len();
            let (now, later) = queued.split_at(room.min(queued.len()));
            // SAFETY: every buffer an entry points at outlives its request:
            // recvs select from the registered buffer ring, which outlives
            // the ring (see `Server`); a send's `out[sent..]` is not
            // modified while `sending` and is kept in `orphans` if its
            // connection closes first; the rest carry no pointers.
            unsafe { sq.push_multiple(now) }.expect("room was checked");
            drop(sq);
            queued = later;
            if !queued.is_empty() {
                self.bufs.publish();
                self.ring.submit()?;
            }
        }
        self.sqes.clear();
        Ok(())
    }

    fn arm_accept(&mut self) {
        let fd = types::Fd(self.listener.as_raw_fd());
        self.sqes.push(
            opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(token(Op::Accept, fd.0, 0)),
        );
    }

    fn arm_signals(&mut self) {
        let fd = types::Fd(self.signals.as_raw_fd());
        self.sqes.push(
            opcode::PollAdd::new(fd, libc::POLLIN as u32)
                .build()
                .user_data(token(Op::Signal, fd.0, 0)),
        );
    }

    /// Ends the connection on `fd`: cancels its requests and closes the
    /// descriptor, through the ring, on the next enter. Its late
    /// completions carry a generation no live connection has.
    fn close(&mut self, fd: RawFd) {
        let Some(client) = self.slots[fd as usize].client.take() else {
            return;
        };
        self.open -= 1;
        // Closing the descriptor alone would not do: each request holds
        // the socket open, and the client would never see the end.
        if client.recv_armed {
            let c = cancel(client.token(Op::Recv), client.token(Op::Cancel));
            self.sqes.push(c);
        }
        if client.sending {
            let send = client.token(Op::Send);
            self.sqes.push(cancel(send, client.token(Op::Cancel)));
            self.orphans.push((send, client.out));
        }
        let close = opcode::Close::new(types::Fd(client.fd.into_raw_fd()))
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(token(Op::Close, fd, client.gen));
        self.sqes.push(close);
    }

    fn on_accept(&mut self, res: i32, flags: u32) -> io::Result<()> {
        if !cqueue::more(flags) {
            self.arm_accept();
        }
        if res < 0 {
            return match -res {
                libc::EINTR | libc::ECONNABORTED => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        // SAFETY: a successful accept returns a new descriptor nothing
        // else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        if self.open >= self.max_conns {
            // Shed the connection: dropping `fd` closes it.
            return Ok(());
        }
        let i = res as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, Slot::default);
        }
        let slot = &mut self.slots[i];
        slot.gen = slot.gen.wrapping_add(1) & GEN_MASK;
        let mut client = Client::new(fd, slot.gen);
        client.arm_recv(&mut self.sqes);
        slot.client = Some(client);
        self.open += 1;
        Ok(())
    }

    fn on_recv(&mut self, fd: RawFd, gen: u32, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let mut next = Next::Keep;
        if let Some(client) = self
            .slots
            .get_mut(fd as usize)
            .and_then(|s| s.client.as_mut())
            .filter(|c| c.gen == gen)
        {
            if !cqueue::more(flags) {
                client.recv_armed = false;
            }
            match (res, bid) {
                (1.., Some(bid)) => {
                    // SAFETY: the kernel handed `bid` back in this
                    // completion and it is put back only below.
                    let data = unsafe { self.bufs.get(bid, res as usize) };
                    client.on_data(data, &mut self.sqes);
                }
                (0, _) => client.eof = true,
                // The ring was empty (re-armed below, after this turn's
                // buffers are back), or our cancel.
                (e, _) if e == -libc::ENOBUFS || e == -libc::ECANCELED => {}
                // Mostly resets; they end just this connection.
                _ => next = Next::Close,
            }
            if next == Next::Keep {
                next = client.after_recv(&mut self.sqes);
            }
        }
        // The bytes were copied (or are unwanted): the buffer goes back,
        // whether or not the connection still exists.
        if let Some(bid) = bid {
            self.bufs.put(bid);
        }
        if next == Next::Close {
            self.close(fd);
        }
    }

    fn on_send(&mut self, fd: RawFd, gen: u32, res: i32, user_data: u64) {
        let client = self
            .slots
            .get_mut(fd as usize)
            .and_then(|s| s.client.as_mut());
        let Some(client) = client.filter(|c| c.gen == gen && c.sending) else {
            // The send of a closed connection: its buffer may go now.
            if let Some(i) = self.orphans.iter().position(|o| o.0 == user_data) {
                self.orphans.swap_remove(i);
            }
            return;
        };
        if client.on_send(res, &mut self.sqes) == Next::Close {
            self.close(fd);
        }
    }

    /// Serves until SIGTERM or SIGINT.
    fn run(&mut self) -> io::Result<()> {
        self.arm_accept();
        self.arm_signals();
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(2 * RING_ENTRIES as usize);
        loop {
            // One enter per turn: submit all the last turn asked for, with
            // the buffers it gave back, and wait for the next completion.
            self.flush()?;
            self.bufs.publish();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for (user_data, res, flags) in cqes.drain(..) {
                let (op, fd, gen) = untoken(user_data);
                match op {
                    Some(Op::Accept) => self.on_accept(res, flags)?,
                    Some(Op::Signal) if res < 0 => return Err(io::Error::from_raw_os_error(-res)),
                    Some(Op::Signal) => return Ok(()),
                    Some(Op::Recv) => self.on_recv(fd, gen, res, flags),
                    Some(Op::Send) => self.on_send(fd, gen, res, user_data),
                    // Failed cancels (the request had just ended) and
                    // closes: nothing to do.
                    Some(Op::Cancel | Op::Close) | None => {}
                }
            }
        }
    }
}

fn run(args: ServerArgs) -> io::Result<()> {
    let max_conns = args.fit_nofile("http-uring")?;
    let backlog = i32::try_from(args.max_conns).unwrap_or(i32::MAX);
    let listener = aem_http::listen(&args.addr, backlog)?;
    let signals = shutdown_signals()?;
    let ring = new_ring().map_err(|e| io::Error::new(e.kind(), format!("io_uring_setup: {e}")))?;
    // From here on the ring and its buffers live in `Server`, whose field
    // order closes the ring first, on every path out.
    let mut server = Server {
        ring,
        bufs: BufRing::new()?,
        slots: Vec::new(),
        orphans: Vec::new(),
        sqes: Vec::new(),
        listener,
        signals,
        open: 0,
        max_conns,
    };
    server
        .bufs
        .register(&server.ring)
        .map_err(|e| io::Error::new(e.kind(), format!("registering the buffer ring: {e}")))?;

    let mut out = io::stdout().lock();
    writeln!(
        out,
        "http-uring: listening on {}",
        server.listener.local_addr()?
    )?;
    out.flush()?;
    drop(out);

    server.run()
}

fn main() -> ExitCode {
    let args = match ServerArgs::parse() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("http-uring: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http-uring: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for op in [
            Op::Accept,
            Op::Signal,
            Op::Recv,
            Op::Send,
            Op::Cancel,
            Op::Close,
        ] {
            for (fd, gen) in [(0, 0), (3, 1), (65_535, GEN_MASK), (i32::MAX, 12_345)] {
                assert_eq!(untoken(token(op, fd, gen)), (Some(op), fd, gen));
            }
        }
        assert_eq!(untoken(0).0, None);
    }
}
