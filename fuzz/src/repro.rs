//! Minimal reproducers of kernel bugs the fuzzer found, as fixed
//! sequences: `aem-fuzz --repro NAME`.

use aem_syscalls::uapi;

use crate::sys::{self, aem, ctl};

/// The reproducers, by name.
pub const NAMES: &[&str] = &["ctx-epoll-add"];

/// Run reproducer `name`; returns the process exit status.
pub fn run(name: &str) -> i32 {
    match name {
        "ctx-epoll-add" => ctx_epoll_add(),
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
