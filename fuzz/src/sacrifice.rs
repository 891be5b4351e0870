//! Sacrificial children: forked processes that do what may (and often
//! should) kill them -- handlers at bad addresses, bad restorers, thread
//! areas unmapped or made read-only while registered, an alternate stack
//! unmapped under an ONSTACK handler, handlers that exit their thread or
//! the process, crafted frames given to aem_return().  The kernel must
//! survive all of it and free what they registered; their deaths by
//! signal are counted, not failures.

use std::sync::atomic::Ordering::Relaxed;

use aem_syscalls::uapi;

use crate::handler::{self, FLAGS, F_EXIT_IN_HANDLER, F_SACRIFICIAL};
use crate::sys::{self, aem};
use crate::worker::Worker;

/// Register an inline timer with `handler` and `restorer`; `flags` are
/// AEM_EV_* flags.  Returns the id or -errno.
fn inline_timer(handler: u64, restorer: u64, flags: u32, value_ns: u64, interval_ns: u64) -> i64 {
    let mut attr = uapi::aem_event_attr {
        source: uapi::aem_source_kind::AEM_SOURCE_TIMER,
        flags,
        handler,
        restorer,
        ..Default::default()
    };
    attr.__bindgen_anon_1.timer = uapi::aem_timer_source {
        clockid: libc::CLOCK_MONOTONIC as u32,
        flags: 0,
        value_ns,
        interval_ns,
    };
    // SAFETY: a live attr of exactly the size passed.
    unsafe {
        aem(
            sys::REGISTER,
            [
                &attr as *const _ as u64,
                core::mem::size_of_val(&attr) as u64,
                0,
                0,
                0,
                0,
            ],
        )
    }
}

fn nap(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

/// Run one sacrificial scenario chosen by `seed`, in a forked child that
/// exits afterwards.
pub fn run(w: &mut Worker<'_>, seed: u64) {
    FLAGS.fetch_or(F_SACRIFICIAL, Relaxed);
    sys::alarm(5);
    // A wild frame may send a thread anywhere, a panic included: die
    // quietly (the kernel's reports are what matters here).
    std::panic::set_hook(Box::new(|_| sys::exit_group(0)));
    let mut rng = crate::rng::Rng::new(seed);
    let mem = w.mem();
    let good_h = handler::handler();
    let good_r = handler::restorer();
    match rng.below(7) {
        0 => {
            // A handler at an address that is not code.
            let at = mem.scratch + 8 * rng.below(1000);
            let bad = rng.pick(&[
                0x1000,
                mem.ro,
                at,
                mem.scratch + sys::SCRATCH as u64,
                good_r, // the restorer as handler: aem_return(0) at once
                good_h + 1,
            ]);
            inline_timer(
                bad,
                good_r,
                0,
                500_000,
                if rng.chance(1, 2) { 1_000_000 } else { 0 },
            );
            nap(20);
        }
        1 => {
            // A good handler returning to a bad restorer.
            let bad = rng.pick(&[0x1000, mem.ro, mem.scratch, good_h, good_r + 2]);
            inline_timer(good_h, bad, 0, 500_000, 0);
            nap(20);
        }
        2 | 3 => {
            // A thread area unmapped (SEGV_MAPERR) or made read-only
            // (SEGV_ACCERR) while registered; delivery deferred so the
            // kernel must touch it.
            let page = sys::map(4096, libc::PROT_READ | libc::PROT_WRITE);
            // SAFETY: our fresh page, registered as the area.
            let r = unsafe { aem(sys::THREAD_AREA, [page as u64, 8, 0, 0, 0, 0]) };
            if r == 0 {
                // SAFETY: the area's block word, in our page.
                unsafe { core::ptr::write_volatile(page as *mut u32, 1) };
            }
            inline_timer(good_h, good_r, 0, 300_000, 1_000_000);
            nap(2);
            // SAFETY: the page is ours; what the kernel does with the
            // registered area afterwards is the test.
            unsafe {
                if rng.chance(1, 2) {
                    libc::munmap(page.cast(), 4096);
                } else {
                    libc::mprotect(page.cast(), 4096, libc::PROT_READ);
                }
            }
            nap(20);
        }
        4 => {
            // An ONSTACK handler whose alternate stack goes away.
            let stack = sys::map(64 << 10, libc::PROT_READ | libc::PROT_WRITE);
            let ss = libc::stack_t {
                ss_sp: stack.cast(),
                ss_flags: 0,
                ss_size: 64 << 10,
            };
            // SAFETY: a fresh mapping; unmapping it under the registered
            // handler is the test.
            unsafe {
                libc::sigaltstack(&ss, core::ptr::null_mut());
                inline_timer(good_h, good_r, uapi::AEM_EV_ONSTACK, 300_000, 1_000_000);
                nap(3);
                libc::munmap(stack.cast(), 64 << 10);
            }
            nap(20);
        }
        5 => {
            // Handlers that exit their thread, or the process.
            FLAGS.fetch_or(F_EXIT_IN_HANDLER, Relaxed);
            let t = std::thread::spawn(|| {
                inline_timer(
                    handler::handler(),
                    handler::restorer(),
                    0,
                    200_000,
                    1_000_000,
                );
                nap(30);
            });
            inline_timer(good_h, good_r, 0, 1_000_000, 2_000_000);
            nap(30);
            let _ = t.join();
        }
        _ => {
            // The fuzz loop, with wild crafted frames and aem_return()
            // called from handlers at any time.
            let calls = rng.range(50, 300);
            w.run_sacrificial(calls);
        }
    }
}
