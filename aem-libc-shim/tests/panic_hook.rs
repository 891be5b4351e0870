//! The panic hook (`aem::panic`) on the build host, in forked children
//! (a binary of its own: a fork must not happen while another test
//! thread holds `std`'s hook lock, as a panicking one does).

use std::fmt;

/// Fork; the child runs `f` with standard error on a pipe and exits
/// 0.  Returns its wait status and what it wrote, or None if it was
/// still running after 10 s (then killed).
fn child_stderr(f: fn()) -> Option<(i32, String)> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (r, w) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child only runs `f` (which keeps to the calling
    // thread) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: the pipe's write end becomes standard error.
        unsafe { libc::dup2(w.as_raw_fd(), 2) };
        f();
        // SAFETY: ends the child without the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let mut r = std::fs::File::from(r);
    drop(w);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut status = 0;
    // SAFETY: `status` is a valid int to fill.
    while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
        if std::time::Instant::now() > deadline {
            // SAFETY: our child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut out = String::new();
    r.read_to_string(&mut out).unwrap();
    Some((status, out))
}

#[test]
fn a_main_flow_panic_is_printed_and_unwinds() {
    let (status, err) = child_stderr(|| {
        aem::panic::install_hook();
        let r = std::panic::catch_unwind(|| panic!("main flow {}", 7));
        assert!(r.is_err());
        aem::eprintln!("caught");
    })
    .expect("the child hung");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let first = err.lines().next().unwrap();
    assert!(first.starts_with("thread 'main' ("), "{err:?}");
    assert!(
        first.ends_with(&format!("panicked at {}:", file!())) || first.contains(file!()),
        "{err:?}"
    );
    assert!(err.ends_with(":\nmain flow 7\ncaught\n"), "{err:?}");
    assert!(!err.contains("inline handler"), "{err:?}");
}

#[test]
fn a_panic_inside_this_crates_output_does_not_wait_for_its_own_lock() {
    struct Bad;
    impl fmt::Display for Bad {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            panic!("display failed")
        }
    }
    let (status, err) = child_stderr(|| {
        aem::panic::install_hook();
        let r = std::panic::catch_unwind(|| aem::eprintln!("before {}", Bad));
        assert!(r.is_err());
        // The lock was released by the unwinding.
        aem::eprintln!("after");
    })
    .expect("the hook waited for its own thread's output lock");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert!(err.contains("panicked at"), "{err:?}");
    assert!(err.contains("\ndisplay failed\n"), "{err:?}");
    assert!(err.ends_with("after\n"), "{err:?}");
}

#[test]
fn the_chained_hook_leaves_main_flow_panics_to_the_previous_hook() {
    let (status, err) = child_stderr(|| {
        std::panic::set_hook(Box::new(|_| aem::eprintln!("previous hook")));
        aem::panic::install_hook_chained();
        let r = std::panic::catch_unwind(|| panic!("main flow"));
        assert!(r.is_err());
    })
    .expect("the child hung");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert_eq!(err, "previous hook\n");
}
