//! The command line and descriptor budget both servers share.

use std::io;

/// Descriptors kept for the listener, signalfd, epoll, stdio and the like
/// on top of one per connection.
const SPARE_FDS: u64 = 64;

/// `--addr HOST:PORT` (default 127.0.0.1:8080) and `--max-conns N`
/// (default 30,000).
#[derive(Debug, Clone)]
pub struct ServerArgs {
    /// Where to listen.
    pub addr: String,
    /// Most connections served at once.
    pub max_conns: usize,
}

impl ServerArgs {
    /// Parse the process's arguments; `Err` holds the problem, empty for
    /// `--help`.
    pub fn parse() -> Result<ServerArgs, String> {
        let mut args = ServerArgs {
            addr: "127.0.0.1:8080".into(),
            max_conns: 30_000,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut value = || it.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--addr" => args.addr = value()?,
                "--max-conns" => {
                    let v = value()?;
                    args.max_conns = v.parse().map_err(|_| format!("bad --max-conns {v}"))?;
                }
                "-h" | "--help" => return Err(String::new()),
                _ => return Err(format!("unknown argument {arg}")),
            }
        }
        Ok(args)
    }

    /// Raise RLIMIT_NOFILE for `max_conns` connections and return how many
    /// fit, saying on stderr (as `name`) when that is fewer.
    pub fn fit_nofile(&self, name: &str) -> io::Result<usize> {
        let want = self.max_conns as u64 + SPARE_FDS;
        if let Err(e) = crate::raise_nofile(want) {
            let limit = crate::nofile_limit()?;
            let fit = self.max_conns.min(limit.saturating_sub(SPARE_FDS) as usize);
            eprintln!(
                "{name}: cannot raise RLIMIT_NOFILE to {want} ({e}); serving at most {fit} connections"
            );
            return Ok(fit);
        }
        Ok(self.max_conns)
    }
}
