//! DELIV-4: blocking delivery through the per-thread area shared with the
//! kernel (`aem_thread_area(2)`), at the system-call level: the protocol,
//! its bad inputs, and its behaviour across threads, fork and exec.
//!
//! Each test drives the area by hand on a thread of its own (a new thread
//! starts without an area); the `aem` crate's critical sections, built on
//! it, are tested in `shim.rs`.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aem::{Action, FdEvents, Options, Source};
use aem_conformance::{eventfd, eventfd_add, in_child, page_size, proc_row, Mapping};
use aem_syscalls::{uapi, Errno, Error};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// A thread area where the kernel wants it: 8-byte aligned.
#[repr(C, align(8))]
#[derive(Default)]
struct Area {
    block: u32,
    pending: u32,
}

const SIZE: u32 = size_of::<uapi::aem_thread_area>() as u32;

fn register(area: *mut Area, size: u32) -> Result<(), Error> {
    // SAFETY: the tests pass areas that stay valid until they unregister
    // them or the thread ends, or bad pointers the kernel must refuse.
    unsafe { aem_syscalls::aem_thread_area(area.cast(), size, 0) }
}

fn unregister(area: *mut Area, size: u32) -> Result<(), Error> {
    // SAFETY: unregistering only makes the kernel forget the pointer.
    unsafe { aem_syscalls::aem_thread_area(area.cast(), size, uapi::AEM_THREAD_AREA_UNREGISTER) }
}

fn os(e: i32) -> Result<(), Error> {
    Err(Error::Os(Errno(e)))
}

/// The kernel's view of the area's words, read through a volatile load:
/// the kernel writes `pending` behind the compiler's back.
fn pending(area: &Area) -> u32 {
    // SAFETY: a live, aligned u32.
    unsafe { std::ptr::read_volatile(&area.pending) }
}

fn set_block(area: &mut Area, v: u32) {
    // SAFETY: a live, aligned u32.
    unsafe { std::ptr::write_volatile(&mut area.block, v) }
}

fn deliver() -> Result<i32, Error> {
    aem_syscalls::aem_ctl(0, uapi::AEM_CTL_DELIVER, 0)
}

/// An inline handler on `efd`'s readability that counts its runs and the
/// activations they carried.
struct Counted {
    runs: Arc<AtomicU64>,
    activations: Arc<AtomicU64>,
    reg: aem::InlineRegistration,
}

fn counted(efd: &OwnedFd) -> Counted {
    let runs = Arc::new(AtomicU64::new(0));
    let activations = Arc::new(AtomicU64::new(0));
    let (r, a) = (runs.clone(), activations.clone());
    // SAFETY: the handler only touches atomics.
    let reg = unsafe {
        aem::register_inline(
            Source::fd(efd.as_fd(), FdEvents::IN),
            Options::default(),
            move |rec| {
                r.fetch_add(1, SeqCst);
                a.fetch_add(rec.count, SeqCst);
                Action::Rearm
            },
        )
    }
    .expect("register an inline handler");
    Counted {
        runs,
        activations,
        reg,
    }
}

/// Run `f` on a new thread (which has no area yet) and return its result.
fn on_new_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::spawn(f).join().expect("test thread panicked")
}

/// Run `f` on a new thread with an area registered (unregistered after).
fn with_area(f: impl FnOnce(&mut Area) + Send + 'static) {
    on_new_thread(|| {
        let mut area = Box::new(Area::default());
        register(&mut *area, SIZE).unwrap();
        f(&mut area);
        unregister(&mut *area, SIZE).unwrap();
    });
}

#[test]
fn deliv_4_block_word_defers_and_deliver_runs_the_event_once() {
    with_area(|area| {
        let efd = eventfd();
        let h = counted(&efd);

        set_block(area, 1);
        eventfd_add(&efd, 1);
        eventfd_add(&efd, 1);
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(h.runs.load(SeqCst), 0, "delivered while blocked");
        assert_eq!(pending(area), 1, "the kernel says an event waits");
        let row = proc_row(h.reg.id()).unwrap();
        assert_eq!((row.pending, row.deliveries), (2, 0));

        set_block(area, 0);
        deliver().unwrap();
        assert_eq!(h.runs.load(SeqCst), 1, "ran on the way back from the call");
        assert_eq!(h.activations.load(SeqCst), 2);
        assert_eq!(pending(area), 0, "AEM_CTL_DELIVER cleared the word");
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(h.runs.load(SeqCst), 1, "exactly once");

        // Unblocked, events run at once again, without the call.
        eventfd_add(&efd, 1);
        assert_eq!(h.runs.load(SeqCst), 2);
        drop(h);
    });
}

#[test]
fn deliv_4_block_word_lets_one_event_at_most_interrupt_a_blocking_call() {
    // Twenty events queued one after another, each a kick of this thread.
    // The first finds the block word set, and the kernel sets `pending`;
    // after that the thread is bound to call AEM_CTL_DELIVER, so the
    // others do not cut its epoll_wait() short.
    const EVENTS: usize = 20;
    with_area(|area| {
        let efds: Vec<Arc<OwnedFd>> = (0..EVENTS).map(|_| Arc::new(eventfd())).collect();
        let handlers: Vec<Counted> = efds.iter().map(|e| counted(e)).collect();
        // SAFETY: epoll_create1 has no memory-safety preconditions.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0);

        set_block(area, 1);
        let writer = {
            let efds = efds.clone();
            std::thread::spawn(move || {
                for e in &efds {
                    std::thread::sleep(Duration::from_millis(5));
                    eventfd_add(&**e, 1);
                }
            })
        };
        let (mut eintr, mut timeouts) = (0, 0);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(EVENTS as u64 * 5 + 200) {
            let mut ev = libc::epoll_event { events: 0, u64: 0 };
            // SAFETY: `ev` has room for the one event asked for.
            match unsafe { libc::epoll_wait(ep, &mut ev, 1, 50) } {
                0 => timeouts += 1,
                -1 if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {
                    eintr += 1
                }
                r => panic!("epoll_wait: {r} {}", std::io::Error::last_os_error()),
            }
        }
        writer.join().unwrap();
        let runs: u64 = handlers.iter().map(|h| h.runs.load(SeqCst)).sum();
        assert_eq!(runs, 0, "delivered while blocked");
        assert!(
            eintr <= 1,
            "{eintr} EINTRs from {EVENTS} deferred events ({timeouts} timeouts)"
        );
        assert_eq!(pending(area), 1);

        set_block(area, 0);
        deliver().unwrap();
        let runs: u64 = handlers.iter().map(|h| h.runs.load(SeqCst)).sum();
        assert_eq!(runs, EVENTS as u64, "each deferred event ran once");
        // Delivered, the thread is interrupted by new events again.
        let h0 = &handlers[0];
        eventfd_add(&*efds[0], 1);
        assert_eq!(h0.runs.load(SeqCst), 2);
        // SAFETY: closing our own epoll fd.
        unsafe { libc::close(ep) };
        drop(handlers);
    });
}

#[test]
fn deliv_4_block_word_combines_with_aem_ctl_block() {
    with_area(|area| {
        let efd = eventfd();
        let h = counted(&efd);

        // Word, then call: released by the call last.
        set_block(area, 1);
        aem::block().unwrap();
        eventfd_add(&efd, 1);
        set_block(area, 0);
        deliver().unwrap();
        assert_eq!(h.runs.load(SeqCst), 0, "AEM_CTL_BLOCK still blocks");
        aem::unblock().unwrap();
        assert_eq!(h.runs.load(SeqCst), 1);

        // Call, then word: released by the word last.
        aem::block().unwrap();
        set_block(area, 1);
        eventfd_add(&efd, 1);
        aem::unblock().unwrap();
        assert_eq!(h.runs.load(SeqCst), 1, "the word still blocks");
        assert_eq!(pending(area), 1);
        set_block(area, 0);
        deliver().unwrap();
        assert_eq!(h.runs.load(SeqCst), 2);
        drop(h);
    });
}

#[test]
fn deliv_4_thread_area_bad_inputs_get_clear_errors() {
    on_new_thread(|| {
        let page = page_size() as u32;
        let rw = Mapping::new(1, libc::PROT_READ | libc::PROT_WRITE).unwrap();
        let area = rw.addr().cast::<Area>();
        // SAFETY: the mapping is a writable page; the kernel must clear it.
        unsafe { (*area).pending = 7 };

        assert_eq!(register(area.wrapping_byte_add(4), SIZE), os(libc::EINVAL));
        assert_eq!(register(area, SIZE - 1), os(libc::EINVAL));
        assert_eq!(register(area, page + 1), os(libc::EINVAL));
        // SAFETY: a bad flag; the kernel must refuse it.
        let bad_flags = unsafe { aem_syscalls::aem_thread_area(area.cast(), SIZE, 1 << 7) };
        assert_eq!(bad_flags, os(libc::EINVAL));
        assert_eq!(register(std::ptr::null_mut(), SIZE), os(libc::EFAULT));
        let ro = Mapping::new(1, libc::PROT_READ).unwrap();
        assert_eq!(register(ro.addr().cast(), SIZE), os(libc::EFAULT));
        let gone = Mapping::new(1, libc::PROT_READ | libc::PROT_WRITE).unwrap();
        let gone_addr = gone.addr().cast::<Area>();
        drop(gone);
        assert_eq!(register(gone_addr, SIZE), os(libc::EFAULT));
        assert_eq!(unregister(area, SIZE), os(libc::EINVAL), "none registered");

        // A larger area (a later ABI's) is accepted; the kernel uses the
        // words it knows.
        register(area, 64).unwrap();
        // SAFETY: still the live mapping.
        assert_eq!(unsafe { (*area).pending }, 0, "registration clears pending");
        assert_eq!(register(area, 64), os(libc::EBUSY));
        let other = area.wrapping_byte_add(64);
        assert_eq!(register(other, SIZE), os(libc::EBUSY));
        assert_eq!(unregister(other, 64), os(libc::EINVAL), "not the area");
        assert_eq!(unregister(area, SIZE), os(libc::EINVAL), "not its size");
        unregister(area, 64).unwrap();
        assert_eq!(unregister(area, 64), os(libc::EINVAL));
        register(other, SIZE).unwrap();
        unregister(other, SIZE).unwrap();
    });
}

/// `si_code` of a SIGSEGV for an address with no mapping (asm-generic/siginfo.h).
const SEGV_MAPERR: i32 = 1;

static SEGV_ADDR: AtomicUsize = AtomicUsize::new(0);
static SEGV_CODE: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_segv(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let info = unsafe { &*info };
    // SAFETY: a SIGSEGV's siginfo carries si_addr.
    SEGV_ADDR.store(unsafe { info.si_addr() } as usize, SeqCst);
    SEGV_CODE.store(info.si_code, SeqCst);
}

#[test]
fn deliv_4_unmapped_area_is_dropped_with_sigsegv_and_its_events_still_run() {
    let code = in_child(|| {
        on_new_thread(|| {
            let sa = SigAction::new(
                SigHandler::SigAction(on_segv),
                SaFlags::SA_SIGINFO,
                SigSet::empty(),
            );
            // SAFETY: a plain SA_SIGINFO handler that stores to atomics.
            unsafe { sigaction(Signal::SIGSEGV, &sa) }.expect("sigaction");
            let page = Mapping::new(1, libc::PROT_READ | libc::PROT_WRITE).unwrap();
            let area = page.addr().cast::<Area>();
            register(area, SIZE).unwrap();
            // SAFETY: the live mapping.
            unsafe { std::ptr::write_volatile(&mut (*area).block, 1) };
            let efd = eventfd();
            let h = counted(&efd);
            drop(page);
            // The kernel finds the area gone as it delivers on the way back.
            eventfd_add(&efd, 1);
            let mut fails = 0;
            if SEGV_ADDR.load(SeqCst) != area as usize {
                fails |= 1;
            }
            if SEGV_CODE.load(SeqCst) != SEGV_MAPERR {
                fails |= 2;
            }
            if h.runs.load(SeqCst) != 1 {
                fails |= 4;
            }
            // The faulty area was unregistered: a new one is accepted.
            let mut fresh = Box::new(Area::default());
            if register(&mut *fresh, SIZE).is_err() {
                fails |= 8;
            }
            fails
        })
    });
    assert_eq!(
        code, 0,
        "failure bits: 1 si_addr, 2 si_code, 4 event, 8 area"
    );
}

#[test]
fn deliv_4_word_left_set_keeps_events_pending_and_visible() {
    with_area(|area| {
        set_block(area, 1);
        let efd = eventfd();
        let h = counted(&efd);
        for _ in 0..3 {
            eventfd_add(&efd, 1);
        }
        // Other system calls and sleeps do not deliver either.
        let _ = deliver();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(h.runs.load(SeqCst), 0);
        let row = proc_row(h.reg.id()).unwrap();
        assert_eq!((row.activations, row.deliveries, row.pending), (3, 0, 3));
        set_block(area, 0);
        deliver().unwrap();
        assert_eq!(h.activations.load(SeqCst), 3);
        drop(h);
    });
}

#[test]
fn deliv_4_fork_child_keeps_the_area_and_its_block_word() {
    with_area(|area| {
        set_block(area, 1);
        let ptr: *mut Area = area;
        let code = in_child(move || {
            // SAFETY: the child's copy of the parent's area.
            let area = unsafe { &mut *ptr };
            let mut fails = 0;
            let mut other = Area::default();
            if register(&mut other, SIZE) != os(libc::EBUSY) {
                fails |= 1;
            }
            let efd = eventfd();
            let h = counted(&efd);
            eventfd_add(&efd, 1);
            if h.runs.load(SeqCst) != 0 || pending(area) != 1 {
                fails |= 2;
            }
            set_block(area, 0);
            if deliver().is_err() || h.runs.load(SeqCst) != 1 {
                fails |= 4;
            }
            fails
        });
        assert_eq!(
            code, 0,
            "failure bits: 1 registration, 2 blocked, 4 delivered"
        );
        set_block(area, 0);
    });
}

#[test]
fn deliv_4_new_thread_starts_without_an_area() {
    with_area(|area| {
        set_block(area, 1);
        on_new_thread(|| {
            // Free to register its own area (first: the shim registers
            // one for the thread's first critical section, such as its
            // warning about the allocator, printed once per process), and
            // not blocked by the parent thread's word.
            let mut own = Box::new(Area::default());
            register(&mut *own, SIZE).expect("a new thread has no area");
            let efd = eventfd();
            let h = counted(&efd);
            eventfd_add(&efd, 1);
            assert_eq!(h.runs.load(SeqCst), 1, "the new thread is not blocked");
            drop(h);
            unregister(&mut *own, SIZE).unwrap();
        });
        set_block(area, 0);
    });
}

#[test]
fn deliv_5_thread_created_in_a_handler_starts_outside_it() {
    on_new_thread(|| {
        let efd = eventfd();
        let result = Arc::new(AtomicU64::new(u64::MAX));
        let r = result.clone();
        // SAFETY: outside the letter of the contract: the handler spawns
        // and joins a thread (pthread_create and the system allocator,
        // neither async-signal-safe; this binary does not install
        // aem::HandlerSafeAlloc).  Sound here because it runs only on the
        // way back from this thread's own eventfd write below, where the
        // thread holds no lock and is not inside the allocator.
        let _reg = unsafe {
            aem::register_inline(
                Source::fd(efd.as_fd(), FdEvents::IN),
                Options::default(),
                move |_| {
                    // The new thread's own events must run on it, although
                    // its creator is inside a handler.
                    let runs = std::thread::spawn(|| {
                        let efd = eventfd();
                        let h = counted(&efd);
                        eventfd_add(&efd, 1);
                        let start = Instant::now();
                        while h.runs.load(SeqCst) == 0 && start.elapsed() < Duration::from_secs(2) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        h.runs.load(SeqCst)
                    })
                    .join()
                    .unwrap_or(u64::MAX);
                    r.store(runs, SeqCst);
                    Action::Rearm
                },
            )
        }
        .unwrap();
        eventfd_add(&efd, 1);
        assert_eq!(result.load(SeqCst), 1);
    });
}

/// Runs before `main` in every process of this test binary: with
/// `AEM_EXEC_PROBE` set (by the exec test), it tries to register an area
/// on the main thread and exits with 0 or the errno.
extern "C" fn exec_probe() {
    // SAFETY: getenv with a NUL-terminated name, before any other thread.
    if unsafe { libc::getenv(c"AEM_EXEC_PROBE".as_ptr()) }.is_null() {
        return;
    }
    let mut area = Area::default();
    let code = match register(&mut area, SIZE) {
        Ok(()) => 0,
        Err(e) => e.errno().raw(),
    };
    // SAFETY: leave at once, as the probe it is.
    unsafe { libc::_exit(code) };
}

#[used]
#[link_section = ".init_array"]
static EXEC_PROBE: extern "C" fn() = exec_probe;

#[test]
fn deliv_4_exec_unregisters_the_area() {
    let code = in_child(|| {
        // The area stays registered in this process, blocked, into the
        // exec; the new image's main thread must find none.
        let area = Box::leak(Box::new(Area::default()));
        if register(area, SIZE).is_err() {
            return 100;
        }
        set_block(area, 1);
        let exe = std::ffi::CString::new("/proc/self/exe").unwrap();
        let argv = [exe.as_ptr(), std::ptr::null()];
        let env = [c"AEM_EXEC_PROBE=1".as_ptr(), std::ptr::null()];
        // SAFETY: NUL-terminated argument and environment arrays.
        unsafe { libc::execve(exe.as_ptr(), argv.as_ptr(), env.as_ptr()) };
        101
    });
    assert_eq!(
        code, 0,
        "100/101: setup failed; else the errno the new image got"
    );
}

#[test]
fn deliv_4_handler_registered_inside_a_section_beside_another_area_waits_for_its_end() {
    with_area(|_area| {
        // The shim finds the area taken while two sections are open: they
        // must block from then on, with a system call.
        let efd = eventfd();
        let outer = aem::critical_section();
        let h = aem::critical(|| counted(&efd));
        eventfd_add(&efd, 1);
        assert_eq!(aem::critical_depth(), 1);
        assert_eq!(h.runs.load(SeqCst), 0, "ran inside a section");
        drop(outer);
        assert_eq!(
            h.runs.load(SeqCst),
            1,
            "did not run when the section closed"
        );
        assert_eq!(aem::critical_depth(), 0);
        aem::critical(|| eventfd_add(&efd, 1));
        assert_eq!(h.runs.load(SeqCst), 2, "a later section did not block");
        drop(h);
    });
}

#[test]
fn deliv_4_shim_sections_fall_back_to_aem_ctl_block_beside_another_area() {
    with_area(|_area| {
        // Other code owns this thread's area: the shim's sections must
        // still block, with system calls.
        let efd = eventfd();
        let h = counted(&efd);
        {
            let _outer = aem::critical_section();
            aem::critical(|| eventfd_add(&efd, 1));
            assert_eq!(aem::critical_depth(), 1);
            assert_eq!(h.runs.load(SeqCst), 0, "ran inside a section");
        }
        assert_eq!(
            h.runs.load(SeqCst),
            1,
            "did not run when the section closed"
        );
        assert_eq!(aem::critical_depth(), 0);
        eventfd_add(&efd, 1);
        assert_eq!(h.runs.load(SeqCst), 2, "still blocked after the sections");
        drop(h);
    });
}
