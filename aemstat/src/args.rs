//! The command line.

use std::fmt;
use std::time::Duration;

/// The usage text of `--help`.
pub const USAGE: &str = "\
Usage: aemstat [OPTION]...
Show the AEM registrations of the processes of this system, with their
counters, from /proc/<pid>/aem.

  -p, --pid PID[,PID]...   only these processes (repeatable)
  -s, --source NAME[,NAME]...
                           only registrations of these sources: fd, timer,
                           accept, read, process, socket, topic, overload,
                           memory, module (repeatable)
  -t, --threads            also show each thread's boost (TID BOOST BAND)
                           and each process's limits and counters
  -w, --watch [SECS]       like top: show again every SECS seconds
                           (default 1), with ACT/s and DLV/s, the rates of
                           activations and deliveries since the last sample
  -n, --count COUNT        with -w (implied): stop after COUNT samples
  -h, --help               show this help and exit
  -V, --version            show the version and exit

Exit status: 0 on success, 1 if a process given with -p does not exist or
its file cannot be read, or the kernel has no AEM, 2 on bad options.
";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Show registrations, as configured.
    Show(Config),
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

/// What to show, and how often.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// Only these processes (`-p`); all when empty.
    pub pids: Vec<u32>,
    /// Only registrations of these sources (`-s`); all when empty.
    pub sources: Vec<String>,
    /// Show the threads' boosts and the processes' notes (`-t`).
    pub threads: bool,
    /// Watch mode's interval (`-w`, or `-n` alone: 1 s); `None`: once.
    pub watch: Option<Duration>,
    /// Watch mode's number of samples (`-n`); `None`: until killed.
    pub count: Option<u64>,
}

impl Config {
    /// Whether registrations of `source` are shown.
    pub fn wants_source(&self, source: &str) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|s| s == source)
    }
}

/// A bad command line; `aemstat` exits with status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// An option nobody knows.
    Unknown(String),
    /// An option that needs a value came last.
    MissingValue(String),
    /// An option's value is not valid.
    BadValue {
        /// The option as given.
        option: String,
        /// The value as given.
        value: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// A value given to an option that takes none (`--threads=1`).
    UnexpectedValue(String),
    /// An argument that is not an option.
    Operand(String),
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::Unknown(opt) => write!(f, "unknown option '{opt}'"),
            ArgError::MissingValue(opt) => write!(f, "option '{opt}' needs a value"),
            ArgError::BadValue {
                option,
                value,
                expected,
            } => write!(f, "bad value '{value}' for '{option}': expected {expected}"),
            ArgError::UnexpectedValue(opt) => write!(f, "option '{opt}' takes no value"),
            ArgError::Operand(arg) => write!(f, "unexpected argument '{arg}'"),
        }
    }
}

impl std::error::Error for ArgError {}

/// The options, by what they take.
#[derive(Clone, Copy)]
enum Opt {
    Pid,
    Source,
    Threads,
    Watch,
    Count,
    Help,
    Version,
}

fn long(name: &str) -> Option<Opt> {
    Some(match name {
        "pid" => Opt::Pid,
        "source" => Opt::Source,
        "threads" => Opt::Threads,
        "watch" => Opt::Watch,
        "count" => Opt::Count,
        "help" => Opt::Help,
        "version" => Opt::Version,
        _ => return None,
    })
}

fn short(c: char) -> Option<Opt> {
    Some(match c {
        'p' => Opt::Pid,
        's' => Opt::Source,
        't' => Opt::Threads,
        'w' => Opt::Watch,
        'n' => Opt::Count,
        'h' => Opt::Help,
        'V' => Opt::Version,
        _ => return None,
    })
}

/// Whether `arg` can be the optional SECS of `-w`: a number.
fn looks_like_secs(arg: &str) -> bool {
    !arg.is_empty() && arg.parse::<f64>().is_ok() && !arg.starts_with('-')
}

fn bad(option: &str, value: &str, expected: &'static str) -> ArgError {
    ArgError::BadValue {
        option: option.to_string(),
        value: value.to_string(),
        expected,
    }
}

fn parse_secs(option: &str, value: &str) -> Result<Duration, ArgError> {
    const EXPECTED: &str = "a number of seconds, more than 0";
    let secs: f64 = value.parse().map_err(|_| bad(option, value, EXPECTED))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(bad(option, value, EXPECTED));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad(option, value, EXPECTED))
}

/// The state of the parse: what was seen so far.
#[derive(Default)]
struct Parsed {
    config: Config,
    help: bool,
    version: bool,
}

impl Parsed {
    /// Apply `opt`, spelled `option`, with `value` if it takes one.
    fn apply(&mut self, opt: Opt, option: &str, value: Option<&str>) -> Result<(), ArgError> {
        let c = &mut self.config;
        match opt {
            Opt::Pid => {
                for p in value.unwrap_or_default().split(',') {
                    match p.trim().parse::<u32>() {
                        Ok(pid) if pid > 0 => c.pids.push(pid),
                        _ => return Err(bad(option, p, "a process id (a positive number)")),
                    }
                }
            }
            Opt::Source => {
                for s in value.unwrap_or_default().split(',') {
                    let s = s.trim();
                    if s.is_empty() || s.contains(char::is_whitespace) {
                        return Err(bad(option, s, "a source name such as fd or timer"));
                    }
                    c.sources.push(s.to_string());
                }
            }
            Opt::Count => {
                let v = value.unwrap_or_default();
                match v.parse::<u64>() {
                    Ok(n) if n > 0 => c.count = Some(n),
                    _ => return Err(bad(option, v, "a number of samples, at least 1")),
                }
            }
            Opt::Watch => {
                c.watch = Some(match value {
                    Some(v) => parse_secs(option, v)?,
                    None => Duration::from_secs(1),
                })
            }
            Opt::Threads => c.threads = true,
            Opt::Help => self.help = true,
            Opt::Version => self.version = true,
        }
        Ok(())
    }
}

/// Parse the arguments (without the program name).
pub fn parse_args<I, S>(args: I) -> Result<Command, ArgError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
    let mut p = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            if let Some(operand) = args.get(i) {
                return Err(ArgError::Operand(operand.clone()));
            }
            break;
        }
        if let Some(rest) = arg.strip_prefix("--") {
            let (name, inline) = match rest.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (rest, None),
            };
            let opt = long(name).ok_or_else(|| ArgError::Unknown(arg.clone()))?;
            let option = format!("--{name}");
            let value = match opt {
                Opt::Pid | Opt::Source | Opt::Count => match inline {
                    Some(v) => Some(v.to_string()),
                    None => {
                        let v = args.get(i).ok_or(ArgError::MissingValue(option.clone()))?;
                        i += 1;
                        Some(v.clone())
                    }
                },
                Opt::Watch => match inline {
                    Some(v) => Some(v.to_string()),
                    None if args.get(i).is_some_and(|a| looks_like_secs(a)) => {
                        i += 1;
                        Some(args[i - 1].clone())
                    }
                    None => None,
                },
                Opt::Threads | Opt::Help | Opt::Version => {
                    if inline.is_some() {
                        return Err(ArgError::UnexpectedValue(option));
                    }
                    None
                }
            };
            p.apply(opt, &option, value.as_deref())?;
            continue;
        }
        let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) else {
            return Err(ArgError::Operand(arg.clone()));
        };
        // A cluster of short options, -tw2 or -p1,2: an option that
        // takes a value takes the rest of the cluster, or the next
        // argument.
        for (at, c) in cluster.char_indices() {
            let option = format!("-{c}");
            let opt = short(c).ok_or_else(|| ArgError::Unknown(option.clone()))?;
            let rest = &cluster[at + c.len_utf8()..];
            match opt {
                Opt::Pid | Opt::Source | Opt::Count => {
                    let value = if rest.is_empty() {
                        let v = args.get(i).ok_or(ArgError::MissingValue(option.clone()))?;
                        i += 1;
                        v.clone()
                    } else {
                        rest.to_string()
                    };
                    p.apply(opt, &option, Some(&value))?;
                    break;
                }
                Opt::Watch => {
                    if !rest.is_empty() {
                        p.apply(opt, &option, Some(rest))?;
                        break;
                    }
                    if args.get(i).is_some_and(|a| looks_like_secs(a)) {
                        i += 1;
                        p.apply(opt, &option, Some(&args[i - 1]))?;
                    } else {
                        p.apply(opt, &option, None)?;
                    }
                }
                Opt::Threads | Opt::Help | Opt::Version => p.apply(opt, &option, None)?,
            }
        }
    }
    if p.help {
        return Ok(Command::Help);
    }
    if p.version {
        return Ok(Command::Version);
    }
    let mut config = p.config;
    if config.count.is_some() && config.watch.is_none() {
        config.watch = Some(Duration::from_secs(1));
    }
    Ok(Command::Show(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        match parse_args(args) {
            Ok(Command::Show(c)) => c,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn no_options_shows_everything_once() {
        assert_eq!(config(&[]), Config::default());
    }

    #[test]
    fn pids_and_sources_repeat_and_take_lists() {
        let c = config(&[
            "-p",
            "12,13",
            "--pid=14",
            "-p15",
            "-s",
            "fd",
            "--source",
            "timer,read",
        ]);
        assert_eq!(c.pids, vec![12, 13, 14, 15]);
        assert_eq!(c.sources, vec!["fd", "timer", "read"]);
        assert!(c.wants_source("read") && !c.wants_source("accept"));
        assert!(Config::default().wants_source("accept"));
    }

    #[test]
    fn watch_takes_an_optional_interval() {
        assert_eq!(config(&["-w"]).watch, Some(Duration::from_secs(1)));
        assert_eq!(config(&["-w", "2"]).watch, Some(Duration::from_secs(2)));
        assert_eq!(config(&["-w0.5"]).watch, Some(Duration::from_millis(500)));
        assert_eq!(
            config(&["--watch=3", "-n", "2"]),
            Config {
                watch: Some(Duration::from_secs(3)),
                count: Some(2),
                ..Config::default()
            }
        );
        // Not a number: the next option, not the interval.
        let c = config(&["-w", "-t"]);
        assert_eq!((c.watch, c.threads), (Some(Duration::from_secs(1)), true));
        let c = config(&["--watch", "-p", "3"]);
        assert_eq!((c.watch, c.pids), (Some(Duration::from_secs(1)), vec![3]));
        let c = config(&["-tw", "2"]);
        assert_eq!((c.watch, c.threads), (Some(Duration::from_secs(2)), true));
    }

    #[test]
    fn count_alone_implies_watch() {
        let c = config(&["-n", "3"]);
        assert_eq!((c.watch, c.count), (Some(Duration::from_secs(1)), Some(3)));
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(parse_args(["-t", "--help"]), Ok(Command::Help));
        assert_eq!(parse_args(["-h"]), Ok(Command::Help));
        assert_eq!(parse_args(["--version"]), Ok(Command::Version));
        assert_eq!(parse_args(["-V"]), Ok(Command::Version));
    }

    #[test]
    fn bad_command_lines_are_errors() {
        let err = |args: &[&str]| parse_args(args).unwrap_err();
        assert_eq!(err(&["--bogus"]), ArgError::Unknown("--bogus".into()));
        assert_eq!(err(&["-x"]), ArgError::Unknown("-x".into()));
        assert_eq!(err(&["-p"]), ArgError::MissingValue("-p".into()));
        assert_eq!(err(&["--count"]), ArgError::MissingValue("--count".into()));
        assert!(matches!(err(&["-p", "abc"]), ArgError::BadValue { .. }));
        assert!(matches!(err(&["-p", "0"]), ArgError::BadValue { .. }));
        assert!(matches!(err(&["-p", "1,,2"]), ArgError::BadValue { .. }));
        assert!(matches!(err(&["-n", "0"]), ArgError::BadValue { .. }));
        assert!(matches!(err(&["-w", "0"]), ArgError::BadValue { .. }));
        assert!(matches!(err(&["--watch=inf"]), ArgError::BadValue { .. }));
        assert!(matches!(err(&["--watch=NaN"]), ArgError::BadValue { .. }));
        assert!(matches!(err(&["-s", ""]), ArgError::BadValue { .. }));
        assert_eq!(
            err(&["--threads=1"]),
            ArgError::UnexpectedValue("--threads".into())
        );
        assert_eq!(err(&["extra"]), ArgError::Operand("extra".into()));
        assert_eq!(err(&["-", "x"]), ArgError::Operand("-".into()));
        assert_eq!(err(&["--", "x"]), ArgError::Operand("x".into()));
    }

    #[test]
    fn errors_read_well() {
        let e = parse_args(["-n", "x"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad value 'x' for '-n': expected a number of samples, at least 1"
        );
    }
}
