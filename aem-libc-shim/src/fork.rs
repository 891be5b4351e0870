//! A process per event (EXEC-2): each delivery of an event runs its
//! handler in a new child process, as the 2003 AEM's `EVF_FORK` did --
//! the pre-fork telecom server, where a crash or a leak in one call's
//! handling ends with that call.
//!
//! The kernel forks the registering thread where it would have entered an
//! inline handler (`AEM_EV_FORK`): the thread goes on with its own flow,
//! and the child, a `fork()` of that thread at that point, runs the
//! handler on the event's record and exits with the handler's return
//! value as its status.  With [`Reap::Auto`] the kernel reaps the child
//! (`AEM_EV_NOCLDWAIT`): no zombie and no `SIGCHLD`.
//!
//! [`spawn_on_event`] is the safe form: the child runs a program, as the
//! inetd of old did, with an accepted connection as its standard input and
//! output.  [`on_event_forked`] runs a closure in the child, and is
//! `unsafe` for the reason `fork()` is in a program with threads.

use core::ffi::c_void;
use core::mem::size_of;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use aem_syscalls::{uapi, Errno};

use crate::event::{attr_for, ctl_owned, EventData, Options, Record, Source};
use crate::features::FeatureSet;
use crate::inline::restorer_address;
use crate::owner::Owner;
use crate::Error;

/// What becomes of a child when it exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reap {
    /// An ordinary child: `SIGCHLD` when it exits, a zombie until the
    /// parent waits for it (`waitpid(2)`, or an [`Source::child_exit`]
    /// event, which reports its status and leaves the reaping to it).
    #[default]
    ByParent,
    /// The kernel reaps it when it exits (`AEM_EV_NOCLDWAIT`): no zombie,
    /// no `SIGCHLD`, as with `SA_NOCLDWAIT`.
    Auto,
}

/// What a fork event's child runs.
type ForkClosure = Box<dyn FnMut(&mut Record) -> i32 + Send>;

/// A fork event; dropping it unregisters the event.  Once the drop
/// returns, no child of the event starts any more (the kernel forks under
/// the lock an unregistration takes), and children already started run
/// on with their own copy of the handler.
#[derive(Debug)]
pub struct ForkRegistration {
    id: u32,
    closure: *mut ForkClosure,
    /// A copy inherited over `fork()` is inert (see `owner.rs`).
    owner: Owner,
}

// SAFETY: the closure is `Send`; the handle only frees it, once.
unsafe impl Send for ForkRegistration {}
// SAFETY: `&ForkRegistration` gives nothing that touches the closure.
unsafe impl Sync for ForkRegistration {}

impl ForkRegistration {
    /// The registration's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Deliver the event again after a disable, or after the kernel
    /// disabled it because it could not fork (`RLIMIT_NPROC`, memory:
    /// counted on the `# fork:` line of `/proc/<pid>/aem`).
    pub fn enable(&self) -> Result<(), Error> {
        ctl_owned(self.owner, self.id, uapi::AEM_CTL_ENABLE, 0)
    }

    /// Stop delivering the event; activations are still counted.
    pub fn disable(&self) -> Result<(), Error> {
        ctl_owned(self.owner, self.id, uapi::AEM_CTL_DISABLE, 0)
    }
}

impl Drop for ForkRegistration {
    fn drop(&mut self) {
        // ENOENT: a copy inherited over fork() (its closure copy is the
        // child's to free all the same), or a one-shot event delivered.
        let _ = ctl_owned(self.owner, self.id, uapi::AEM_CTL_UNREGISTER, 0);
        // SAFETY: made by Box::into_raw in `register`; no child of this
        // process reads it from here on (see the type's docs).
        drop(unsafe { Box::from_raw(self.closure) });
    }
}

/// The entry of every fork event's child.
extern "C" fn aem_fork_entry(_id: i64, rec: *const uapi::aem_record, _uc: *mut c_void) -> i64 {
    // SAFETY: the kernel passes the record it wrote into the frame; an
    // accepted descriptor in it is the child's alone (the parent closed
    // its own).
    let mut record = unsafe { Record::from_raw(&*rec) };
    // SAFETY: the cookie is the closure `register` leaked, copied into
    // the child with the rest of the memory before any unregistration.
    let closure = unsafe { &mut *(record.cookie as *mut ForkClosure) };
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| closure(&mut record)))
        .unwrap_or_else(|payload| {
            let why = crate::panic::payload_str(&*payload);
            crate::eprintln!(
                "aem: the forked handler of event {} panicked: {why}",
                record.id
            );
            101
        });
    drop(record);
    // aem_return(): the child exits with this status.
    i64::from(code & 0xff)
}

/// Register `source` as a fork event whose child runs `handler`.
///
/// # Safety
///
/// `handler` runs in a child forked from the registering thread at any
/// point of its flow where inline delivery is not blocked (between any
/// two instructions, as an inline handler interrupts it), in a copy of a
/// process that may have other threads.  As after `fork()` in such a
/// process, the child may hold locks that no thread of it will ever
/// release -- the registering thread's own, taken where it was forked, and
/// those held by the threads that were not copied -- and may find data
/// they were changing half-changed.  So until it execs or exits, `handler`
/// may do only what is async-signal-safe, as in
/// [`std::os::unix::process::CommandExt::pre_exec`]: no allocation, no
/// `std` printing or locks, unless the program guarantees that no thread
/// holds them at the fork (the registering thread in
/// [`crate::critical`] sections, say, and no other thread).
pub unsafe fn on_event_forked<F>(
    source: Source<'_>,
    options: Options,
    reap: Reap,
    handler: F,
) -> Result<ForkRegistration, Error>
where
    F: FnMut(&mut Record) -> i32 + Send + 'static,
{
    register(source, options, reap, Box::new(handler))
}

fn register(
    source: Source<'_>,
    options: Options,
    reap: Reap,
    handler: ForkClosure,
) -> Result<ForkRegistration, Error> {
    if !crate::features()?.features.contains(FeatureSet::FORK) {
        return Err(Error::Os(Errno(libc::EOPNOTSUPP)));
    }
    let mut attr = attr_for(source, options)?;
    // The fork happens where inline delivery is not blocked: the thread's
    // sections must block it from the first event, as for inline handlers.
    crate::critical::prepare_thread_for_inline();
    let closure = Box::into_raw(Box::new(handler));
    attr.flags |= uapi::AEM_EV_FORK;
    if reap == Reap::Auto {
        attr.flags |= uapi::AEM_EV_NOCLDWAIT;
    }
    attr.handler = aem_fork_entry as *const () as u64;
    attr.restorer = restorer_address();
    attr.cookie = closure as u64;
    // SAFETY: `attr` is a live aem_event_attr of exactly the size passed.
    match unsafe { aem_syscalls::aem_register(&attr, size_of::<uapi::aem_event_attr>(), 0) } {
        Ok(id) => Ok(ForkRegistration {
            id,
            closure,
            owner: Owner::current(),
        }),
        Err(e) => {
            // SAFETY: not registered: nothing else has the pointer.
            drop(unsafe { Box::from_raw(closure) });
            Err(e.into())
        }
    }
}

/// A program to run for each event, prepared in full before any child
/// exists: the child only calls `dup2`, `fcntl`, `chdir`, `execve` and
/// `_exit`.
struct Exec {
    path: CString,
    dir: Option<CString>,
    /// Keeps the strings `argv` points at alive.
    _args: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into the `CString`s the value owns.
unsafe impl Send for Exec {}

fn cstring(s: &OsStr) -> Result<CString, Error> {
    CString::new(s.as_bytes()).map_err(|_| Error::Os(Errno(libc::EINVAL)))
}

/// `program` as `execvp` would find it, resolved now: the child must not
/// search.
fn resolve(program: &OsStr, path: Option<OsString>) -> Result<PathBuf, Error> {
    let program = Path::new(program);
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(program.to_path_buf());
    }
    let path = path.unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
        .ok_or(Error::Os(Errno(libc::ENOENT)))
}

impl Exec {
    fn new(command: &std::process::Command) -> Result<Exec, Error> {
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        for (key, value) in command.get_envs() {
            env.retain(|(k, _)| k != key);
            if let Some(value) = value {
                env.push((key.to_owned(), value.to_owned()));
            }
        }
        let search = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        let path = cstring(resolve(command.get_program(), search)?.as_os_str())?;
        let mut args = vec![cstring(command.get_program())?];
        for arg in command.get_args() {
            args.push(cstring(arg)?);
        }
        let env = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                cstring(&kv)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dir = command
            .get_current_dir()
            .map(|d| cstring(d.as_os_str()))
            .transpose()?;
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(core::iter::once(core::ptr::null()))
                .collect::<Vec<_>>()
        };
        Ok(Exec {
            path,
            dir,
            argv: pointers(&args),
            _args: args,
            envp: pointers(&env),
            _env: env,
        })
    }

    /// In the child: only async-signal-safe calls, nothing allocated.
    fn run(&self, record: &Record) -> i32 {
        if let EventData::Accept { conn: Ok(fd), .. } = &record.data {
            let fd = fd.as_raw_fd();
            if !onto(fd, 0) || !onto(fd, 1) {
                return 126;
            }
        }
        if let Some(dir) = &self.dir {
            // SAFETY: a NUL-terminated path.
            if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
                return 126;
            }
        }
        // SAFETY: NUL-terminated strings and NULL-terminated arrays of
        // them, alive as long as `self`.
        unsafe { libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        127
    }
}

/// In the child: make `target` a copy of `fd` that survives `execve`.
/// When `fd` is `target` already, `dup2` would do nothing and leave its
/// `FD_CLOEXEC` set (as `AcceptFlags::CLOEXEC`, the default, makes a
/// connection), so the flag is cleared instead.  Async-signal-safe;
/// false on failure.
fn onto(fd: libc::c_int, target: libc::c_int) -> bool {
    // SAFETY: plain descriptor calls on descriptors of the child.
    unsafe {
        if fd != target {
            return libc::dup2(fd, target) >= 0;
        }
        let flags = libc::fcntl(fd, libc::F_GETFD);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) >= 0
    }
}

/// Register `source` as an event that runs `command` in a new process at
/// each delivery, the parent's flow untouched: the program, its arguments,
/// its environment (the parent's at registration, with the command's
/// changes) and its working directory, all prepared now.  For an accept
/// event the connection is the program's standard input and output (the
/// inetd pattern; the parent closes its own descriptor); other
/// descriptors are inherited as over `fork()` and `execve()`
/// (`O_CLOEXEC` ones close).  The child's status is the program's, or 127
/// when it could not be run, 126 when its connection or directory could
/// not be set up.
///
/// The program is searched for in `PATH` now (`ENOENT` when it is not
/// found); a string with a NUL byte fails with `EINVAL`, a kernel without
/// fork events with `EOPNOTSUPP`.  `Command`'s standard I/O settings,
/// `env_clear`, and `pre_exec` hooks are not used.
pub fn spawn_on_event(
    source: Source<'_>,
    options: Options,
    reap: Reap,
    command: &std::process::Command,
) -> Result<ForkRegistration, Error> {
    let exec = Exec::new(command)?;
    register(
        source,
        options,
        reap,
        Box::new(move |record: &mut Record| exec.run(record)),
    )
}
