//! A [`log`] backend that handlers and the main flow can share (SHIM-3).
//!
//! The usual backends write through a `std::sync::Mutex` around standard
//! error: an inline handler that logs while it interrupted a log call of
//! its own thread waits for a lock its own thread holds, for ever.  This
//! one formats each record and writes it to standard error as
//! [`crate::io::write_fmt`] does, under this crate's output lock, an
//! [`crate::sync::Mutex`] that defers the thread's events while held:
//! records from handlers, the main flow and other threads come out as
//! whole lines, in the order they took the lock, and nothing deadlocks.
//!
//! Formatting a record runs its arguments' `Display` code, in a handler
//! as anywhere: it must be handler-safe there (the standard types are; what
//! allocates needs [`crate::HandlerSafeAlloc`] as the global allocator).
//!
//! ```no_run
//! aem::log::init(log::LevelFilter::Info).expect("another logger is set");
//! log::info!("serving on {}", 8080);
//! ```

use log::{LevelFilter, Metadata, Record, SetLoggerError};

/// The backend; install it with [`init`].
#[derive(Debug)]
pub struct Logger;

static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            // Standard error, as a number (it may be closed), errors
            // ignored: as the macros do.
            crate::io::_print(
                2,
                format_args!(
                    "{:<5} {}: {}\n",
                    record.level(),
                    record.target(),
                    record.args()
                ),
            );
        }
    }

    fn flush(&self) {}
}

/// Make [`Logger`] the program's logger, passing records up to `level`.
/// Fails if a logger is set already.
pub fn init(level: LevelFilter) -> Result<(), SetLoggerError> {
    log::set_logger(&LOGGER)?;
    log::set_max_level(level);
    Ok(())
}
