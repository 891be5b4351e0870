//! Minimal reproducers of kernel bugs the fuzzer found, as fixed
//! sequences: `aem-fuzz --repro NAME`.

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use aem_syscalls::uapi;

use crate::sys::{self, aem, ctl};

/// The reproducers, by name.
pub const NAMES: &[&str] = &["ctx-epoll-add", "fork-cow-livelock"];

/// Run reproducer `name`; returns the process exit status.
pub fn run(name: &str) -> i32 {
    match name {
        "ctx-epoll-add" => ctx_epoll_add(),
        "fork-cow-livelock" => fork_cow_livelock(),
        _ => {
            eprintln!(
                "aem-fuzz: --repro: unknown {name}; known: {}",
                NAMES.join(" ")
            );
            2
        }
    }
}

/// An AEM context fd in an epoll set, a polled fd watch on that set, then
/// an epoll_ctl(ADD) of a ready fd: epoll wakes its poll queue, the watch
/// activates its event, the context wakes its queue, epoll's callback
/// wakes the set's poll queue again -- under the lock the first wake-up
/// holds (found with seed 7: "BUG: spinlock recursion" in
/// ep_poll_safewake, then a hard lockup).
fn ctx_epoll_add() -> i32 {
    let ctx = ctl(0, u64::from(uapi::AEM_CTL_CONTEXT_FD), 0);
    // SAFETY: plain descriptor calls with live arguments.
    unsafe {
        let ep = libc::epoll_create1(0);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 1,
        };
        println!("ctx fd {ctx}, epoll fd {ep}");
        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, ctx as i32, &mut ev);
        let mut a = [0u64; 11];
        a[0] = u64::from(uapi::aem_source_kind::AEM_SOURCE_FD);
        a[5] = u64::from(ep as u32) | ((libc::EPOLLIN as u64) << 32);
        let id = aem(sys::REGISTER, [a.as_ptr() as u64, 88, 0, 0, 0, 0]);
        println!("fd watch on the epoll set: id {id}");
        let efd = libc::eventfd(1, 0);
        println!("epoll_ctl(ADD) of a ready eventfd ...");
        let r = libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, efd, &mut ev);
        println!("... returned {r}; still alive");
    }
    0
}

/// The handler of [`fork_cow_livelock`]'s event: returns at once (in the
/// forked child, which then exits).
extern "C" fn nop_handler(_id: i64, _rec: *const uapi::aem_record, _uc: *mut u8) -> i64 {
    0
}

/// A private page the looping thread writes (copy-on-write after every
/// fork of its process).
static mut PRIVATE: [u64; 512] = [0; 512];

/// "One fork per way out to user mode" (0046) promises that a thread
/// whose fork event stays pending still runs its own code between two
/// forks.  It does not when that code writes to private memory: the fork
/// write-protects the page (copy-on-write), the write faults, the way out
/// of the fault forks again, which write-protects the page again -- the
/// write never completes, and the thread forks for ever without running
/// an instruction of its own.  Found with seed 4 (`aem-fuzz --seed 4
/// --calls 15000`): a worker hung in aem_fork_deliver() <- aem_deliver()
/// <- irqentry_exit_to_user_mode() <- asm_exc_page_fault(), its event a
/// level fd watch with AEM_EV_FORK on an fd that stays ready, 13,818
/// children started and counting.
///
/// A child registers such an event (AEM_EV_LEVEL | AEM_EV_FORK |
/// AEM_EV_NOCLDWAIT on a readable eventfd, a raw system call), then
/// counts in a shared page (which fork does not write-protect): first
/// writing nothing else, then also writing a private page.  Exit status 1
/// when the thread made no progress (the bug), 0 when it did.
fn fork_cow_livelock() -> i32 {
    // SAFETY: a new anonymous shared mapping.
    let shared = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(shared != libc::MAP_FAILED);
    // SAFETY: a zeroed, page-aligned shared page: three AtomicU64s
    // (counter, phase, ready), never unmapped.
    let (counter, phase, ready) = unsafe {
        let p = shared as *const AtomicU64;
        (&*p, &*p.add(1), &*p.add(2))
    };
    // SAFETY: the child only loops (or dies of SIGKILL).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: an eventfd with a count of 1: readable for ever.
        let efd = unsafe { libc::eventfd(1, libc::EFD_NONBLOCK) };
        let mut a = [0u64; 11];
        let flags = uapi::AEM_EV_LEVEL | uapi::AEM_EV_FORK | uapi::AEM_EV_NOCLDWAIT;
        a[0] = u64::from(uapi::aem_source_kind::AEM_SOURCE_FD) | (u64::from(flags) << 32);
        a[2] = nop_handler as *const () as u64;
        a[3] = crate::handler::restorer();
        a[5] = u64::from(efd as u32) | ((libc::EPOLLIN as u64) << 32);
        // SAFETY: `a` is 88 bytes, the size passed.  Raw: the counted
        // call would write a thread-local right after it.
        let id = unsafe { sys::raw(sys::NR[sys::REGISTER], [a.as_ptr() as u64, 88, 0, 0, 0, 0]) };
        ready.store(if id > 0 { 1 } else { 2 }, SeqCst);
        let mut i = 0usize;
        loop {
            if phase.load(SeqCst) != 0 {
                // SAFETY: only this thread touches PRIVATE.
                unsafe {
                    let p = core::ptr::addr_of_mut!(PRIVATE) as *mut u64;
                    core::ptr::write_volatile(p.add(i % 512), i as u64);
                }
                i = i.wrapping_add(1);
            }
            counter.fetch_add(1, SeqCst);
        }
    }
    let forks = || -> String {
        std::fs::read_to_string(format!("/proc/{pid}/aem"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("# fork:"))
            .unwrap_or("# fork: ?")
            .to_string()
    };
    let nap = |ms| std::thread::sleep(std::time::Duration::from_millis(ms));
    let finish = |code: i32| -> i32 {
        // SAFETY: our child; SIGKILL ends it between two forks.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, core::ptr::null_mut(), 0);
        }
        code
    };
    for _ in 0..300 {
        if ready.load(SeqCst) != 0 {
            break;
        }
        nap(10);
    }
    match ready.load(SeqCst) {
        1 => {}
        0 => {
            nap(1000);
            println!(
                "LIVELOCK: 4 s after fork() the child has not got past its aem_register() ({})",
                forks()
            );
            return finish(1);
        }
        _ => {
            println!("the registration failed: no level fork events on this kernel?");
            return finish(2);
        }
    }
    nap(500);
    let c0 = counter.load(SeqCst);
    nap(2000);
    let c1 = counter.load(SeqCst);
    println!(
        "shared page only: {} iterations in 2 s ({})",
        c1 - c0,
        forks()
    );
    phase.store(1, SeqCst);
    nap(500);
    let c2 = counter.load(SeqCst);
    nap(2000);
    let c3 = counter.load(SeqCst);
    println!(
        "private page too: {} iterations in 2 s ({})",
        c3 - c2,
        forks()
    );
    if c1 == c0 || c3 == c2 {
        println!(
            "LIVELOCK: the thread forks on every way out of its page fault, never completing the write"
        );
        finish(1)
    } else {
        println!("the thread made progress");
        finish(0)
    }
}
