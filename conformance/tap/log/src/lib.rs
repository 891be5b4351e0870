//! The `log` crate as the conformance suite's test files see it in
//! `aem-conformance-tap` (which depends on this crate under the name
//! `log`): all of `log`, the same crate, except that the level macros
//! (`error!` to `trace!`) give a record the target the file's own test
//! binary gives it -- its module path without the binary's crate: `shim`,
//! not `aem_conformance_tap::shim`.  (`tests/shim.rs` checks the targets
//! of its log lines.)

pub use log::*;

/// `module_path` without its first segment, the crate: `shim` for
/// `aem_conformance_tap::shim`; `module_path` itself if it has one
/// segment.
#[doc(hidden)]
pub const fn file_target(module_path: &'static str) -> &'static str {
    let bytes = module_path.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b':' && bytes[i + 1] == b':' {
            let (_, rest) = bytes.split_at(i + 2);
            return match core::str::from_utf8(rest) {
                Ok(rest) => rest,
                Err(_) => module_path,
            };
        }
        i += 1;
    }
    module_path
}

// Written out: macros that a macro defined would be ambiguous with the
// glob import's.

/// `log::error!`, with the test file's target (see the crate).
#[macro_export]
macro_rules! error {
    (target: $target:expr, $($arg:tt)+) => {
        $crate::log!(target: $target, $crate::Level::Error, $($arg)+)
    };
    ($($arg:tt)+) => {
        $crate::log!(
            target: $crate::file_target(::core::module_path!()),
            $crate::Level::Error,
            $($arg)+
        )
    };
}

/// `log::warn!`, with the test file's target (see the crate).
#[macro_export]
macro_rules! warn {
    (target: $target:expr, $($arg:tt)+) => {
        $crate::log!(target: $target, $crate::Level::Warn, $($arg)+)
    };
    ($($arg:tt)+) => {
        $crate::log!(
            target: $crate::file_target(::core::module_path!()),
            $crate::Level::Warn,
            $($arg)+
        )
    };
}

/// `log::info!`, with the test file's target (see the crate).
#[macro_export]
macro_rules! info {
    (target: $target:expr, $($arg:tt)+) => {
        $crate::log!(target: $target, $crate::Level::Info, $($arg)+)
    };
    ($($arg:tt)+) => {
        $crate::log!(
            target: $crate::file_target(::core::module_path!()),
            $crate::Level::Info,
            $($arg)+
        )
    };
}

/// `log::debug!`, with the test file's target (see the crate).
#[macro_export]
macro_rules! debug {
    (target: $target:expr, $($arg:tt)+) => {
        $crate::log!(target: $target, $crate::Level::Debug, $($arg)+)
    };
    ($($arg:tt)+) => {
        $crate::log!(
            target: $crate::file_target(::core::module_path!()),
            $crate::Level::Debug,
            $($arg)+
        )
    };
}

/// `log::trace!`, with the test file's target (see the crate).
#[macro_export]
macro_rules! trace {
    (target: $target:expr, $($arg:tt)+) => {
        $crate::log!(target: $target, $crate::Level::Trace, $($arg)+)
    };
    ($($arg:tt)+) => {
        $crate::log!(
            target: $crate::file_target(::core::module_path!()),
            $crate::Level::Trace,
            $($arg)+
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_drops_the_crate() {
        assert_eq!(file_target("aem_conformance_tap::shim"), "shim");
        assert_eq!(
            file_target("aem_conformance_tap::shim::inner"),
            "shim::inner"
        );
        assert_eq!(file_target("shim"), "shim");
        assert_eq!(file_target(""), "");
        const AT_COMPILE_TIME: &str = file_target("a::b");
        assert_eq!(AT_COMPILE_TIME, "b");
    }

    /// A logger that keeps the last record's target and message.
    struct Last(std::sync::Mutex<Vec<(String, String)>>);

    impl Log for Last {
        fn enabled(&self, _: &Metadata) -> bool {
            true
        }
        fn log(&self, record: &Record) {
            self.0
                .lock()
                .unwrap()
                .push((record.target().to_string(), record.args().to_string()));
        }
        fn flush(&self) {}
    }

    #[test]
    fn the_level_macros_log_with_the_file_target() {
        static LAST: Last = Last(std::sync::Mutex::new(Vec::new()));
        set_logger(&LAST).unwrap();
        set_max_level(LevelFilter::Trace);
        crate::error!("e {}", 1);
        crate::warn!("w");
        crate::info!(target: "mine", "i");
        crate::debug!("d");
        crate::trace!("t");
        let got = LAST.0.lock().unwrap().clone();
        let me = file_target(module_path!()).to_string();
        assert_eq!(me, "tests");
        let want: Vec<(String, String)> = [
            (me.as_str(), "e 1"),
            (&me, "w"),
            ("mine", "i"),
            (&me, "d"),
            (&me, "t"),
        ]
        .iter()
        .map(|(t, m)| (t.to_string(), m.to_string()))
        .collect();
        assert_eq!(got, want);
    }
}
