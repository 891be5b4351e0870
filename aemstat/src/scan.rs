//! A sample of `/proc`: the AEM state of the processes.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::parse::{parse, ParseError, ProcAem};

/// A thread of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    /// The thread id.
    pub tid: u32,
    /// Its name (`/proc/<pid>/task/<tid>/comm`), or `?`.
    pub comm: String,
}

/// One process's AEM state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// The process id.
    pub pid: u32,
    /// Its name (`/proc/<pid>/comm`), or `?`.
    pub comm: String,
    /// Its `/proc/<pid>/aem`.
    pub aem: ProcAem,
    /// Its threads, by tid, when they were asked for (`-t`); else empty.
    pub threads: Vec<Thread>,
}

/// The processes' state at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When the sample was taken (after reading the files).
    pub taken: Instant,
    /// The processes read, by pid.
    pub processes: Vec<Process>,
}

/// What went wrong with a process that was asked for by pid, or with a
/// file of unexpected form.
#[derive(Debug)]
pub enum ScanError {
    /// No such process.
    NoProcess(u32),
    /// Its `/proc/<pid>/aem` could not be read (`EACCES`, say).
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Its `/proc/<pid>/aem` is not of the known form.
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        error: ParseError,
    },
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::NoProcess(pid) => write!(f, "no process {pid}"),
            ScanError::Unreadable { path, error } => write!(f, "{}: {error}", path.display()),
            ScanError::Malformed { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for ScanError {}

/// Where a process's files are.
fn pid_dir(proc_root: &Path, pid: u32) -> PathBuf {
    proc_root.join(pid.to_string())
}

/// The first line of a `comm` file, or `?`.
fn comm(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches('\n').to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// The numeric entries of a directory, sorted.
fn numeric_entries(dir: &Path) -> Vec<u32> {
    let mut ids: Vec<u32> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    ids.sort_unstable();
    ids
}

/// Whether the kernel has `/proc/<pid>/aem` at all: `<proc_root>/self/aem`
/// exists.
pub fn kernel_has_aem(proc_root: &Path) -> bool {
    proc_root.join("self/aem").exists()
}

/// Read process `pid`: `Ok(None)` if it has gone or its file cannot be
/// read (reported only when `explicit`, that is asked for by pid).
fn read_process(
    proc_root: &Path,
    pid: u32,
    threads: bool,
    explicit: bool,
    errors: &mut Vec<ScanError>,
) -> Option<Process> {
    let dir = pid_dir(proc_root, pid);
    let path = dir.join("aem");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            if explicit {
                if dir.exists() {
                    errors.push(ScanError::Unreadable { path, error });
                } else {
                    errors.push(ScanError::NoProcess(pid));
                }
            }
            return None;
        }
    };
    let aem = match parse(&text) {
        Ok(aem) => aem,
        Err(error) => {
            errors.push(ScanError::Malformed { path, error });
            return None;
        }
    };
    let threads = if threads {
        numeric_entries(&dir.join("task"))
            .into_iter()
            .map(|tid| Thread {
                tid,
                comm: comm(&dir.join(format!("task/{tid}/comm"))),
            })
            .collect()
    } else {
        Vec::new()
    };
    Some(Process {
        pid,
        comm: comm(&dir.join("comm")),
        aem,
        threads,
    })
}

/// Sample the processes `pids` (all of them when empty) under `proc_root`
/// (`/proc`), with their threads if `threads`.  Processes that exit or
/// whose files cannot be read are left out; when they were asked for by
/// pid, the second value says why.  A file of unknown form is reported
/// whichever way its process was found.
pub fn scan(proc_root: &Path, pids: &[u32], threads: bool) -> (Snapshot, Vec<ScanError>) {
    let mut errors = Vec::new();
    let explicit = !pids.is_empty();
    let mut wanted: Vec<u32> = if explicit {
        pids.to_vec()
    } else {
        numeric_entries(proc_root)
    };
    wanted.sort_unstable();
    wanted.dedup();
    let processes = wanted
        .into_iter()
        .filter_map(|pid| read_process(proc_root, pid, threads, explicit, &mut errors))
        .collect();
    let snapshot = Snapshot {
        taken: Instant::now(),
        processes,
    };
    (snapshot, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /proc in a directory of its own, removed on drop.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(name: &str) -> FakeProc {
            let dir = std::env::temp_dir().join(format!("aemstat-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("self")).unwrap();
            std::fs::write(dir.join("self/aem"), "id\n").unwrap();
            FakeProc(dir)
        }

        fn process(&self, pid: u32, comm: &str, aem: Option<&str>, tids: &[u32]) {
            let dir = self.0.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            if let Some(aem) = aem {
                std::fs::write(dir.join("aem"), aem).unwrap();
            }
            for tid in tids {
                let t = dir.join(format!("task/{tid}"));
                std::fs::create_dir_all(&t).unwrap();
                std::fs::write(t.join("comm"), format!("{comm}-{tid}\n")).unwrap();
            }
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const HEADER: &str = "id\tsource\tprio\tflags\tstate\tactivations\tdeliveries\tpending\n";

    #[test]
    fn scans_every_process_skipping_unreadable_ones() {
        let fake = FakeProc::new("all");
        fake.process(
            20,
            "srv",
            Some(&format!("{HEADER}1\tfd\t0\t-\tenabled\t1\t1\t0\n")),
            &[20, 21],
        );
        fake.process(3, "idle", Some(HEADER), &[3]);
        fake.process(7, "gone", None, &[]);
        std::fs::create_dir_all(fake.0.join("sys")).unwrap();
        assert!(kernel_has_aem(&fake.0));
        let (snap, errors) = scan(&fake.0, &[], false);
        assert!(errors.is_empty(), "{errors:?}");
        let pids: Vec<u32> = snap.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![3, 20]);
        assert_eq!(snap.processes[1].comm, "srv");
        assert_eq!(snap.processes[1].aem.registrations.len(), 1);
        assert!(snap.processes[1].threads.is_empty());

        let (snap, _) = scan(&fake.0, &[], true);
        assert_eq!(
            snap.processes[1].threads,
            vec![
                Thread {
                    tid: 20,
                    comm: "srv-20".into()
                },
                Thread {
                    tid: 21,
                    comm: "srv-21".into()
                }
            ]
        );
    }

    #[test]
    fn pids_asked_for_are_reported_when_missing_or_unreadable() {
        let fake = FakeProc::new("pids");
        fake.process(5, "a", Some(HEADER), &[]);
        fake.process(6, "b", None, &[]);
        fake.process(8, "c", Some("id\tsource\n"), &[]);
        let (snap, errors) = scan(&fake.0, &[9, 5, 6, 5, 8], false);
        assert_eq!(snap.processes.len(), 1);
        assert_eq!(snap.processes[0].pid, 5);
        let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].ends_with("/6/aem: No such file or directory (os error 2)"));
        assert!(errors[1].ends_with("/8/aem: the header has no \"prio\" column"));
        assert_eq!(errors[2], "no process 9");
        assert!(matches!(
            scan(&fake.0, &[9], false).1[..],
            [ScanError::NoProcess(9)]
        ));
    }

    #[test]
    fn a_kernel_without_aem_is_recognised() {
        let fake = FakeProc::new("noaem");
        std::fs::remove_file(fake.0.join("self/aem")).unwrap();
        assert!(!kernel_has_aem(&fake.0));
    }
}
