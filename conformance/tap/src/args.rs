//! The command line: libtest's options that make sense here, and the
//! runner's own.

use std::fmt;
use std::time::Duration;

/// The usage text.
pub(crate) const USAGE: &str = "\
Usage: aem-conformance-tap [OPTIONS] [FILTER...]

Runs the AEM conformance suite (every test of conformance/tests/*.rs) on
the running kernel, one test at a time, each in a process of its own, and
reports in TAP (version 13) on standard output.  A test is named
FILE::TEST (api::api_2_query_accepts_a_full_page); it runs when its name
contains one of the FILTERs (all run without one).  Run it as root.

Options:
      --exact            a FILTER (and --skip) must be the whole name
      --skip FILTER      leave out the tests whose names contain FILTER
      --list             list the tests (FILE::TEST: test) and exit
      --ignored          run only the #[ignore]d tests
      --include-ignored  run the #[ignore]d tests too (else: ok # SKIP)
      --nocapture        let the tests' output through (to standard error)
                         instead of showing it only for a failed test
      --timeout SECS     kill a test that runs longer (default 300)
      --test-threads 1   accepted: tests always run one at a time
  -h, --help             this text

Exit status: 0 when no test failed, 1 when one did, 2 on a usage error.
";

/// Which tests `#[ignore]` affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ignored {
    /// Ignored tests are reported as skipped (the default).
    Skip,
    /// Only the ignored tests run (`--ignored`).
    Only,
    /// Ignored tests run like the others (`--include-ignored`).
    Include,
}

/// The options of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// Substrings of the names to run (all, if empty).
    pub(crate) filters: Vec<String>,
    /// Substrings of the names to leave out.
    pub(crate) skip: Vec<String>,
    /// Filters match whole names.
    pub(crate) exact: bool,
    /// List the tests instead of running them.
    pub(crate) list: bool,
    /// What to do with `#[ignore]`d tests.
    pub(crate) ignored: Ignored,
    /// Let the tests' output through.
    pub(crate) nocapture: bool,
    /// How long a test may run.
    pub(crate) timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            filters: Vec::new(),
            skip: Vec::new(),
            exact: false,
            list: false,
            ignored: Ignored::Skip,
            nocapture: false,
            timeout: Duration::from_secs(300),
        }
    }
}

impl Options {
    /// Whether the test named `name` (`FILE::TEST`) is selected.
    pub(crate) fn selects(&self, name: &str) -> bool {
        let matches = |f: &String| {
            if self.exact {
                name == f
            } else {
                name.contains(f.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skip.iter().any(matches)
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// Run (or list) tests.
    Run(Options),
    /// The usage text.
    Help,
    /// Internal: run one test in this process (the runner starts each
    /// test this way) and write what happened to `report`.
    RunOne {
        /// `FILE::TEST`.
        name: String,
        /// The file for the panic message and location.
        report: String,
    },
}

/// A bad command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ArgError {
    /// An option this program does not know.
    Unknown(String),
    /// An option without its value.
    MissingValue(String),
    /// An option with a value it cannot take.
    BadValue {
        /// The option.
        option: String,
        /// The value.
        value: String,
    },
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::Unknown(o) => write!(f, "unknown option {o:?}"),
            ArgError::MissingValue(o) => write!(f, "{o} needs a value"),
            ArgError::BadValue { option, value } => {
                write!(f, "{option}: bad value {value:?}")
            }
        }
    }
}

impl std::error::Error for ArgError {}

/// The internal option that runs one test (followed by its name and the
/// report file).
pub(crate) const RUN_ONE: &str = "--aem-tap-run-one";

/// Read the command line (without the program name).
pub(crate) fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, ArgError> {
    let mut args = args.into_iter();
    let mut o = Options::default();
    while let Some(arg) = args.next() {
        // --option=value, or --option value.
        let (option, inline) = match arg.split_once('=') {
            Some((opt, v)) if opt.starts_with("--") => (opt.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let value = |args: &mut I::IntoIter| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| ArgError::MissingValue(option.clone()))
        };
        match option.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            RUN_ONE => {
                let name = value(&mut args)?;
                let report = args
                    .next()
                    .ok_or_else(|| ArgError::MissingValue(RUN_ONE.to_string()))?;
                return Ok(Command::RunOne { name, report });
            }
            "--exact" => o.exact = true,
            "--list" => o.list = true,
            "--ignored" => o.ignored = Ignored::Only,
            "--include-ignored" => o.ignored = Ignored::Include,
            "--nocapture" | "--no-capture" => o.nocapture = true,
            "--skip" => o.skip.push(value(&mut args)?),
            "--timeout" => {
                let v = value(&mut args)?;
                let secs: u64 =
                    v.parse()
                        .ok()
                        .filter(|&s| s > 0)
                        .ok_or_else(|| ArgError::BadValue {
                            option: option.clone(),
                            value: v.clone(),
                        })?;
                o.timeout = Duration::from_secs(secs);
            }
            "--test-threads" => {
                let v = value(&mut args)?;
                if v != "1" {
                    return Err(ArgError::BadValue {
                        option: option.clone(),
                        value: v,
                    });
                }
            }
            _ if arg.starts_with('-') => return Err(ArgError::Unknown(arg)),
            _ => o.filters.push(arg),
        }
    }
    Ok(Command::Run(o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::prelude::v1::test;

    fn parse_strs(args: &[&str]) -> Result<Command, ArgError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    fn options(args: &[&str]) -> Options {
        match parse_strs(args) {
            Ok(Command::Run(o)) => o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn filters_select_by_substring_or_whole_name() {
        let o = options(&["api::", "sock_2"]);
        assert!(o.selects("api::api_1_x"));
        assert!(o.selects("sock::sock_2_y"));
        assert!(!o.selects("sock::sock_1_y"));
        assert!(options(&[]).selects("anything::at_all"));

        let o = options(&["--exact", "api::api_1"]);
        assert!(o.selects("api::api_1"));
        assert!(!o.selects("api::api_1_x"));

        let o = options(&["api", "--skip", "api_2", "--skip=api_3"]);
        assert!(o.selects("api::api_1"));
        assert!(!o.selects("api::api_2_x"));
        assert!(!o.selects("api::api_3_x"));
    }

    #[test]
    fn options_take_values_inline_or_next() {
        assert_eq!(options(&["--timeout", "5"]).timeout, Duration::from_secs(5));
        assert_eq!(options(&["--timeout=7"]).timeout, Duration::from_secs(7));
        assert_eq!(options(&["--test-threads=1"]), Options::default());
        assert_eq!(options(&["--include-ignored"]).ignored, Ignored::Include);
        assert_eq!(options(&["--ignored"]).ignored, Ignored::Only);
        assert!(options(&["--list", "--nocapture"]).list);
        assert_eq!(parse_strs(&["x", "-h"]), Ok(Command::Help));
        assert_eq!(
            parse_strs(&[RUN_ONE, "a::b", "/tmp/r"]),
            Ok(Command::RunOne {
                name: "a::b".into(),
                report: "/tmp/r".into()
            })
        );
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert_eq!(
            parse_strs(&["--test-threads", "4"]),
            Err(ArgError::BadValue {
                option: "--test-threads".into(),
                value: "4".into()
            })
        );
        assert!(matches!(
            parse_strs(&["--timeout", "0"]),
            Err(ArgError::BadValue { .. })
        ));
        assert_eq!(
            parse_strs(&["--skip"]),
            Err(ArgError::MissingValue("--skip".into()))
        );
        assert_eq!(
            parse_strs(&["--frobnicate"]),
            Err(ArgError::Unknown("--frobnicate".into()))
        );
        assert_eq!(
            parse_strs(&[RUN_ONE, "a::b"]),
            Err(ArgError::MissingValue(RUN_ONE.into()))
        );
    }
}
