//! The output: aligned tables of registrations, threads and notes.

use std::collections::HashMap;

use crate::args::Config;
use crate::parse::Registration;
use crate::scan::{Process, Snapshot};

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// A table of text, printed with its columns aligned.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings and alignments.
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Add a row; it must have one cell per column.
    pub fn push(&mut self, row: Vec<String>) {
        assert_eq!(row.len(), self.columns.len(), "a row of the wrong width");
        self.rows.push(row);
    }

    /// The number of rows (the heading not counted).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, heading first, columns two spaces apart, one line per
    /// row, each ending with a newline and no trailing blanks.
    pub fn render(&self) -> String {
        let heading: Vec<String> = self.columns.iter().map(|c| c.0.to_string()).collect();
        let mut widths: Vec<usize> = heading.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&heading).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let width = widths[i];
                match self.columns[i].1 {
                    Align::Left => line.push_str(&format!("{cell:<width$}")),
                    Align::Right => line.push_str(&format!("{cell:>width$}")),
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The registrations of `p` that `config` shows (its sources), by id.
fn shown_registrations<'a>(p: &'a Process, config: &Config) -> Vec<&'a Registration> {
    let mut regs: Vec<&Registration> = p
        .aem
        .registrations
        .iter()
        .filter(|r| config.wants_source(&r.source))
        .collect();
    regs.sort_by_key(|r| r.id);
    regs
}

/// The processes `config` shows, by pid: those with registrations of the
/// sources asked for, and with `-t` and no `-s`, those with a boosted
/// thread too.
pub fn shown_processes<'a>(snap: &'a Snapshot, config: &Config) -> Vec<&'a Process> {
    let mut procs: Vec<&Process> = snap
        .processes
        .iter()
        .filter(|p| {
            !shown_registrations(p, config).is_empty()
                || (config.threads && config.sources.is_empty() && !p.aem.boosts.is_empty())
        })
        .collect();
    procs.sort_by_key(|p| p.pid);
    procs
}

/// A registration's rates between two samples, per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Activations a second.
    pub activations: f64,
    /// Deliveries a second.
    pub deliveries: f64,
}

/// The rates of the registrations, by (pid, id).
pub type Rates = HashMap<(u32, u32), Rate>;

/// The rates of activations and deliveries of each registration of `cur`
/// since `prev`, by (pid, id): only for registrations found in both (same
/// process name, same source, counters not gone back: not a pid or an id
/// used again).
pub fn rates(cur: &Snapshot, prev: &Snapshot) -> Rates {
    let secs = cur
        .taken
        .saturating_duration_since(prev.taken)
        .as_secs_f64();
    let mut out = HashMap::new();
    if secs <= 0.0 {
        return out;
    }
    let before: HashMap<(u32, u32), (&str, &Registration)> = prev
        .processes
        .iter()
        .flat_map(|p| {
            p.aem
                .registrations
                .iter()
                .map(move |r| ((p.pid, r.id), (p.comm.as_str(), r)))
        })
        .collect();
    for p in &cur.processes {
        for r in &p.aem.registrations {
            let Some((comm, old)) = before.get(&(p.pid, r.id)) else {
                continue;
            };
            if *comm != p.comm
                || old.source != r.source
                || old.activations > r.activations
                || old.deliveries > r.deliveries
            {
                continue;
            }
            out.insert(
                (p.pid, r.id),
                Rate {
                    activations: (r.activations - old.activations) as f64 / secs,
                    deliveries: (r.deliveries - old.deliveries) as f64 / secs,
                },
            );
        }
    }
    out
}

/// The registrations table: one row per registration shown, by pid then
/// id.  With `rates` (watch mode) two more columns, ACT/s and DLV/s, `-`
/// where no earlier sample had the registration.
pub fn registrations_table(snap: &Snapshot, config: &Config, rates: Option<&Rates>) -> Table {
    use Align::{Left, Right};
    let mut columns = vec![
        ("PID", Right),
        ("COMM", Left),
        ("ID", Right),
        ("SOURCE", Left),
        ("PRIO", Right),
        ("FLAGS", Left),
        ("STATE", Left),
        ("ACTIVATIONS", Right),
        ("DELIVERIES", Right),
        ("PENDING", Right),
    ];
    if rates.is_some() {
        columns.extend([("ACT/s", Right), ("DLV/s", Right)]);
    }
    let mut table = Table::new(&columns);
    for p in shown_processes(snap, config) {
        for r in shown_registrations(p, config) {
            let mut row = vec![
                p.pid.to_string(),
                p.comm.clone(),
                r.id.to_string(),
                r.source.clone(),
                r.prio.to_string(),
                r.flags.clone(),
                r.state.clone(),
                r.activations.to_string(),
                r.deliveries.to_string(),
                r.pending.to_string(),
            ];
            if let Some(rates) = rates {
                // One decimal; `-` with nothing to compare with.
                let (act, dlv) = match rates.get(&(p.pid, r.id)) {
                    Some(rate) => (
                        format!("{:.1}", rate.activations),
                        format!("{:.1}", rate.deliveries),
                    ),
                    None => ("-".to_string(), "-".to_string()),
                };
                row.extend([act, dlv]);
            }
            table.push(row);
        }
    }
    table
}

/// The threads table of `-t`: every thread of the processes shown, with
/// its boost (`-` when not boosted), from the `# thread` lines.
pub fn threads_table(snap: &Snapshot, config: &Config) -> Table {
    use Align::{Left, Right};
    let mut table = Table::new(&[
        ("PID", Right),
        ("TID", Right),
        ("COMM", Left),
        ("BOOST", Right),
        ("BAND", Left),
    ]);
    for p in shown_processes(snap, config) {
        let mut tids: Vec<u32> = p.threads.iter().map(|t| t.tid).collect();
        tids.extend(p.aem.boosts.iter().map(|b| b.tid));
        tids.sort_unstable();
        tids.dedup();
        for tid in tids {
            let comm = p
                .threads
                .iter()
                .find(|t| t.tid == tid)
                .map_or("?", |t| t.comm.as_str());
            let (boost, band) = match p.aem.boosts.iter().find(|b| b.tid == tid) {
                Some(b) => (b.prio.to_string(), b.band.clone()),
                None => ("-".to_string(), "-".to_string()),
            };
            table.push(vec![
                p.pid.to_string(),
                tid.to_string(),
                comm.to_string(),
                boost,
                band,
            ]);
        }
    }
    table
}

/// The notes table of `-t`: each process's comment lines (files held,
/// the user's registrations, the pool, fork), one row each.
pub fn notes_table(snap: &Snapshot, config: &Config) -> Table {
    use Align::{Left, Right};
    let mut table = Table::new(&[("PID", Right), ("COMM", Left), ("NOTE", Left)]);
    for p in shown_processes(snap, config) {
        for note in &p.aem.notes {
            table.push(vec![p.pid.to_string(), p.comm.clone(), note.clone()]);
        }
    }
    table
}

/// Everything one sample shows: the registrations, then with `-t` the
/// threads and the notes, blank lines between.  In watch mode (`rates`
/// given) the registrations have their rates.
pub fn render(snap: &Snapshot, config: &Config, rates: Option<&Rates>) -> String {
    let mut out = registrations_table(snap, config, rates).render();
    if config.threads {
        out.push('\n');
        out.push_str(&threads_table(snap, config).render());
        out.push('\n');
        out.push_str(&notes_table(snap, config).render());
    }
    out
}

/// The title line of a sample in watch mode: "aemstat: every 1s, sample
/// 2 of 3: 4 processes, 9 registrations".
pub fn watch_title(snap: &Snapshot, config: &Config, sample: u64) -> String {
    let every = config.watch.map_or(0.0, |d| d.as_secs_f64());
    let of = config.count.map(|n| format!(" of {n}")).unwrap_or_default();
    let procs = shown_processes(snap, config);
    let regs: usize = procs
        .iter()
        .map(|p| shown_registrations(p, config).len())
        .sum();
    let count =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "aemstat: every {every}s, sample {sample}{of}: {}, {}",
        count(procs.len(), "process", "processes"),
        count(regs, "registration", "registrations")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;
    use std::time::{Duration, Instant};

    const HEADER: &str = "id\tsource\tprio\tflags\tstate\tactivations\tdeliveries\tpending\n";

    fn process(pid: u32, comm: &str, body: &str) -> Process {
        Process {
            pid,
            comm: comm.into(),
            aem: parse(&format!("{HEADER}{body}")).unwrap(),
            threads: Vec::new(),
        }
    }

    fn snapshot(taken: Instant, processes: Vec<Process>) -> Snapshot {
        Snapshot { taken, processes }
    }

    fn sample() -> Snapshot {
        snapshot(
            Instant::now(),
            vec![
                process(
                    300,
                    "http-aem",
                    "5\taccept\t10\t-\tenabled\t1200\t1199\t1\n2\tread\t10\tpool\tenabled\t7\t7\t0\n",
                ),
                process(12, "idle", ""),
                process(
                    40,
                    "timer",
                    "1\ttimer\t0\toneshot,disabled\tdisabled\t0\t0\t0\n\
                     # pool: 0 idle threads, 0 events queued\n\
                     # thread 41: boost 60 real-time\n",
                ),
            ],
        )
    }

    #[test]
    fn registrations_are_aligned_by_pid_then_id() {
        let out = registrations_table(&sample(), &Config::default(), None).render();
        assert_eq!(
            out,
            "\
PID  COMM      ID  SOURCE  PRIO  FLAGS             STATE     ACTIVATIONS  DELIVERIES  PENDING
 40  timer      1  timer      0  oneshot,disabled  disabled            0           0        0
300  http-aem   2  read      10  pool              enabled             7           7        0
300  http-aem   5  accept    10  -                 enabled          1200        1199        1
"
        );
    }

    #[test]
    fn sources_filter_rows_and_processes() {
        let config = Config {
            sources: vec!["accept".into(), "timer".into()],
            ..Config::default()
        };
        let table = registrations_table(&sample(), &config, None);
        assert_eq!(table.len(), 2);
        let out = table.render();
        assert!(out.contains(" accept ") && out.contains(" timer "));
        assert!(!out.contains(" read "));
        let config = Config {
            sources: vec!["socket".into()],
            ..Config::default()
        };
        assert_eq!(
            render(&sample(), &config, None),
            "PID  COMM  ID  SOURCE  PRIO  FLAGS  STATE  ACTIVATIONS  DELIVERIES  PENDING\n"
        );
    }

    #[test]
    fn threads_show_every_thread_and_its_boost() {
        let mut snap = sample();
        snap.processes[2].threads = vec![
            crate::scan::Thread {
                tid: 40,
                comm: "timer".into(),
            },
            crate::scan::Thread {
                tid: 41,
                comm: "worker".into(),
            },
        ];
        // A process whose only sign of AEM is a boosted thread.
        snap.processes
            .push(process(50, "child", "# thread 50: boost 20 fair\n"));
        let config = Config {
            threads: true,
            ..Config::default()
        };
        assert_eq!(
            threads_table(&snap, &config).render(),
            "\
PID  TID  COMM    BOOST  BAND
 40   40  timer       -  -
 40   41  worker     60  real-time
 50   50  ?          20  fair
"
        );
        assert_eq!(
            notes_table(&snap, &config).render(),
            "PID  COMM   NOTE\n 40  timer  pool: 0 idle threads, 0 events queued\n"
        );
        let out = render(&snap, &config, None);
        assert_eq!(out.matches("\n\n").count(), 2, "{out}");
        assert!(out.contains("\nPID  TID  COMM"));
        assert!(out.contains("\nPID  COMM   NOTE\n"));
        // With -s, only processes with registrations of those sources.
        let config = Config {
            threads: true,
            sources: vec!["timer".into()],
            ..Config::default()
        };
        assert_eq!(threads_table(&snap, &config).len(), 2);
    }

    #[test]
    fn rates_come_from_the_difference_between_samples() {
        let t0 = Instant::now();
        let before = snapshot(
            t0,
            vec![
                process(7, "a", "1\ttimer\t0\t-\tenabled\t100\t90\t0\n2\tfd\t0\t-\tenabled\t5\t5\t0\n3\tfd\t0\t-\tenabled\t9\t9\t0\n"),
                process(8, "b", "1\tfd\t0\t-\tenabled\t0\t0\t0\n"),
            ],
        );
        let after = snapshot(
            t0 + Duration::from_millis(500),
            vec![
                process(
                    7,
                    "a",
                    // 2 re-registered as another source; 3 as the same,
                    // counting again from 0; 4 new.
                    "1\ttimer\t0\t-\tenabled\t150\t120\t0\n2\ttimer\t0\t-\tenabled\t6\t6\t0\n\
                     3\tfd\t0\t-\tenabled\t0\t0\t0\n4\tfd\t0\t-\tenabled\t1\t1\t0\n",
                ),
                // Pid 8 used again by another program.
                process(8, "c", "1\tfd\t0\t-\tenabled\t3\t3\t0\n"),
            ],
        );
        let r = rates(&after, &before);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(
            r[&(7, 1)],
            Rate {
                activations: 100.0,
                deliveries: 60.0
            }
        );
        let out = registrations_table(&after, &Config::default(), Some(&r)).render();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].ends_with("PENDING  ACT/s  DLV/s"), "{out}");
        assert!(lines[1].ends_with("  100.0   60.0"), "{out}");
        assert!(lines[2].ends_with("      -      -"), "{out}");
        assert!(rates(&before, &before).is_empty());
    }

    #[test]
    fn watch_title_counts_what_is_shown() {
        let config = Config {
            watch: Some(Duration::from_millis(500)),
            count: Some(3),
            ..Config::default()
        };
        assert_eq!(
            watch_title(&sample(), &config, 2),
            "aemstat: every 0.5s, sample 2 of 3: 2 processes, 3 registrations"
        );
        let config = Config {
            watch: Some(Duration::from_secs(1)),
            pids: vec![40],
            sources: vec!["timer".into()],
            ..Config::default()
        };
        assert_eq!(
            watch_title(&sample(), &config, 1),
            "aemstat: every 1s, sample 1: 1 process, 1 registration"
        );
    }
}
