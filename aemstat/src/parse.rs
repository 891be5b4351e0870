//! The text of `/proc/<pid>/aem`, parsed.
//!
//! The kernel (`proc_pid_aem()`, `kernel/aem/core.c`) writes a header
//! line naming the columns, one tab-separated line per registration, then
//! comment lines starting with `# `: the limits and counters of the
//! process (files held, the user's registrations, the pool, fork) and,
//! for each thread that is boosted at the time of the read,
//!
//! ```text
//! # thread <tid>: boost <P> <band>
//! ```
//!
//! where P is the AEM priority (0..99) and band `real-time` (P >= 50) or
//! `fair`.  Columns are found by their names in the header, so columns
//! added later (anywhere) are skipped; comment lines of unknown form are
//! kept as notes.

use std::fmt;

/// The columns a registration line must have, by header name.
pub const REQUIRED_COLUMNS: [&str; 8] = [
    "id",
    "source",
    "prio",
    "flags",
    "state",
    "activations",
    "deliveries",
    "pending",
];

/// One registration: a line of `/proc/<pid>/aem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The registration id, as `aem_register(2)` returned it.
    pub id: u32,
    /// The source's name: `fd`, `timer`, `accept`, `read`, `process`,
    /// `socket`, `topic`, `overload`, `memory`, `module`, ...
    pub source: String,
    /// The priority, 0..99.
    pub prio: u32,
    /// The flags, comma-separated (`oneshot,level`), or `-` for none.
    pub flags: String,
    /// `enabled`, `disabled` or `shed` (held back by load shedding).
    pub state: String,
    /// Activations since registration.
    pub activations: u64,
    /// Deliveries since registration.
    pub deliveries: u64,
    /// Activations not delivered yet.
    pub pending: u64,
}

/// A thread boosted at the time of the read: a `# thread` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadBoost {
    /// The thread id.
    pub tid: u32,
    /// The AEM priority it is boosted to, 0..99.
    pub prio: u32,
    /// The scheduling band: `real-time` (priority 50 and up) or `fair`.
    pub band: String,
}

/// A whole `/proc/<pid>/aem`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcAem {
    /// The registrations, in the file's order.
    pub registrations: Vec<Registration>,
    /// The threads boosted at the time of the read.
    pub boosts: Vec<ThreadBoost>,
    /// The other comment lines, without their `# `: "files held: 1 of
    /// 1024 (RLIMIT_NOFILE)", "pool: 0 idle threads, 0 events queued", ...
    pub notes: Vec<String>,
}

/// Why a `/proc/<pid>/aem` text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The text is empty: no header line.
    NoHeader,
    /// The header has no column of this name.
    MissingColumn(&'static str),
    /// A registration line (1-based line number) has fewer fields than
    /// the header has columns.
    ShortLine {
        /// The line number, from 1 (the header).
        line: usize,
    },
    /// A numeric field is not a number.
    BadNumber {
        /// The line number, from 1 (the header).
        line: usize,
        /// The column's name.
        column: &'static str,
        /// The field as written.
        value: String,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NoHeader => write!(f, "no header line"),
            ParseError::MissingColumn(name) => write!(f, "the header has no {name:?} column"),
            ParseError::ShortLine { line } => write!(f, "line {line}: too few fields"),
            ParseError::BadNumber {
                line,
                column,
                value,
            } => write!(f, "line {line}: {column} {value:?} is not a number"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parse a `# thread <tid>: boost <P> <band>` comment (given without
/// its `# `); `None` if it is not of that form.  Words after the band are
/// allowed, for additions to come.
pub fn parse_boost(comment: &str) -> Option<ThreadBoost> {
    let rest = comment.strip_prefix("thread ")?;
    let (tid, rest) = rest.split_once(':')?;
    let mut words = rest.split_whitespace();
    if words.next()? != "boost" {
        return None;
    }
    let prio = words.next()?.parse().ok()?;
    let band = words.next()?.to_string();
    Some(ThreadBoost {
        tid: tid.trim().parse().ok()?,
        prio,
        band,
    })
}

/// Parse the text of a `/proc/<pid>/aem`.
pub fn parse(text: &str) -> Result<ProcAem, ParseError> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or(ParseError::NoHeader)?
        .split('\t')
        .collect();
    let mut index = [0usize; REQUIRED_COLUMNS.len()];
    for (slot, name) in index.iter_mut().zip(REQUIRED_COLUMNS) {
        *slot = header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or(ParseError::MissingColumn(name))?;
    }
    let width = index.iter().max().map_or(0, |m| m + 1);
    let mut out = ProcAem::default();
    for (n, line) in lines.enumerate() {
        let line_no = n + 2;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim();
            if comment.is_empty() {
                continue;
            }
            match parse_boost(comment) {
                Some(boost) => out.boosts.push(boost),
                None => out.notes.push(comment.to_string()),
            }
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < width {
            return Err(ParseError::ShortLine { line: line_no });
        }
        let field = |i: usize| fields[index[i]].trim();
        let number = |i: usize| -> Result<u64, ParseError> {
            field(i).parse().map_err(|_| ParseError::BadNumber {
                line: line_no,
                column: REQUIRED_COLUMNS[i],
                value: field(i).to_string(),
            })
        };
        let small = |i: usize| -> Result<u32, ParseError> {
            u32::try_from(number(i)?).map_err(|_| ParseError::BadNumber {
                line: line_no,
                column: REQUIRED_COLUMNS[i],
                value: field(i).to_string(),
            })
        };
        out.registrations.push(Registration {
            id: small(0)?,
            source: field(1).to_string(),
            prio: small(2)?,
            flags: field(3).to_string(),
            state: field(4).to_string(),
            activations: number(5)?,
            deliveries: number(6)?,
            pending: number(7)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "id\tsource\tprio\tflags\tstate\tactivations\tdeliveries\tpending\n";

    /// What the kernel writes for a process with two registrations and a
    /// boosted thread.
    const SAMPLE: &str = "id\tsource\tprio\tflags\tstate\tactivations\tdeliveries\tpending\n\
        1\tfd\t42\tlevel\tenabled\t7\t5\t2\n\
        3\ttimer\t0\toneshot,disabled\tdisabled\t0\t0\t0\n\
        # files held: 1 of 1024 (RLIMIT_NOFILE)\n\
        # user's registrations: 2 of 31366 (user.max_aem_events)\n\
        # pool: 0 idle threads, 0 events queued\n\
        # fork: 0 children started, 0 refused\n\
        # thread 812: boost 60 real-time\n\
        # thread 813: boost 30 fair\n";

    #[test]
    fn parses_registrations_boosts_and_notes() {
        let p = parse(SAMPLE).unwrap();
        assert_eq!(
            p.registrations,
            vec![
                Registration {
                    id: 1,
                    source: "fd".into(),
                    prio: 42,
                    flags: "level".into(),
                    state: "enabled".into(),
                    activations: 7,
                    deliveries: 5,
                    pending: 2,
                },
                Registration {
                    id: 3,
                    source: "timer".into(),
                    prio: 0,
                    flags: "oneshot,disabled".into(),
                    state: "disabled".into(),
                    activations: 0,
                    deliveries: 0,
                    pending: 0,
                },
            ]
        );
        assert_eq!(
            p.boosts,
            vec![
                ThreadBoost {
                    tid: 812,
                    prio: 60,
                    band: "real-time".into()
                },
                ThreadBoost {
                    tid: 813,
                    prio: 30,
                    band: "fair".into()
                },
            ]
        );
        assert_eq!(
            p.notes,
            vec![
                "files held: 1 of 1024 (RLIMIT_NOFILE)",
                "user's registrations: 2 of 31366 (user.max_aem_events)",
                "pool: 0 idle threads, 0 events queued",
                "fork: 0 children started, 0 refused",
            ]
        );
    }

    #[test]
    fn a_header_alone_is_no_registrations() {
        assert_eq!(parse(HEADER).unwrap(), ProcAem::default());
    }

    #[test]
    fn columns_are_found_by_name_and_unknown_ones_skipped() {
        let text = "cpu\tpending\tid\tsource\tprio\tflags\tstate\tactivations\tdeliveries\textra\n\
            1\t4\t9\tread\t5\t-\tshed\t10\t6\twhatever\n";
        let p = parse(text).unwrap();
        assert_eq!(p.registrations.len(), 1);
        let r = &p.registrations[0];
        assert_eq!(
            (r.id, r.source.as_str(), r.prio, r.flags.as_str()),
            (9, "read", 5, "-")
        );
        assert_eq!(
            (r.state.as_str(), r.activations, r.deliveries, r.pending),
            ("shed", 10, 6, 4)
        );
    }

    #[test]
    fn unknown_comments_are_notes_and_malformed_boosts_too() {
        let text = format!(
            "{HEADER}# something new: 3\n# thread x: boost 1 fair\n# thread 5: boost\n#\n\n\
             # thread 7: boost 99 real-time later-words\n"
        );
        let p = parse(&text).unwrap();
        assert_eq!(
            p.notes,
            vec![
                "something new: 3",
                "thread x: boost 1 fair",
                "thread 5: boost"
            ]
        );
        assert_eq!(
            p.boosts,
            vec![ThreadBoost {
                tid: 7,
                prio: 99,
                band: "real-time".into()
            }]
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(parse(""), Err(ParseError::NoHeader));
        assert_eq!(
            parse("id\tsource\n"),
            Err(ParseError::MissingColumn("prio"))
        );
        assert_eq!(
            parse(&format!("{HEADER}1\tfd\t0\n")),
            Err(ParseError::ShortLine { line: 2 })
        );
        assert_eq!(
            parse(&format!("{HEADER}1\tfd\tx\t-\tenabled\t0\t0\t0\n")),
            Err(ParseError::BadNumber {
                line: 2,
                column: "prio",
                value: "x".into()
            })
        );
    }
}
