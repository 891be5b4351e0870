//! A deliberately small HTTP/1.1 server core, shared by the epoll server
//! (`http-epoll`), the io_uring server (`http-uring`) and the AEM server
//! (`http-aem`), so that they differ only in how they wait for and move
//! bytes.
//!
//! [`Conn`] is push-driven: hand it whatever bytes arrived, in whatever
//! pieces, and it appends the complete responses to an output buffer. That
//! fits both a readiness loop and a server that receives bytes in a callback.
//!
//! What it serves:
//!
//! * `GET /` - `200`, `text/plain`, `hello from <server name>\n`;
//! * `GET /bytes/N` - `200` with `N` bytes (`N` <= [`MAX_BYTES`]) of a fixed
//!   pattern, `400` for a larger or malformed `N`;
//! * anything else - `404`; methods other than `GET` and `HEAD` - `405`.
//!
//! Requests may not carry a body: a `Content-Length` above zero or any
//! `Transfer-Encoding` gets `400` and the connection is closed, since
//! nothing here needs a body and skipping one safely means parsing it.

use std::fmt;
use std::io::Write as _;

mod args;
mod sys;

pub use args::ServerArgs;
pub use sys::{connect_nonblocking, listen, nofile_limit, raise_nofile, shutdown_signals, Epoll};

/// Largest request head (request line and headers, with the blank line that
/// ends them) a connection accepts; a larger one gets `431` and is closed.
pub const MAX_HEAD: usize = 8 * 1024;

/// Largest `N` that `GET /bytes/N` serves.
pub const MAX_BYTES: usize = 1024 * 1024;

/// While the caller's output buffer holds at least this much, [`Conn`] stops
/// answering buffered requests, so that a client pipelining many requests
/// for large responses cannot make the server buffer them all at once.
pub const OUT_HIGH_WATER: usize = 256 * 1024;

/// The bytes `GET /bytes/N` repeats.
const PATTERN: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n";

/// A request that could not be served; the error response is already queued
/// and the connection is to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpError {
    status: u16,
    reason: &'static str,
}

impl HttpError {
    /// The status code of the response that was queued.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// What was wrong with the request.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status,
            status_text(self.status),
            self.reason
        )
    }
}

impl std::error::Error for HttpError {}

/// The HTTP state of one connection.
#[derive(Debug)]
pub struct Conn {
    name: &'static str,
    /// Received bytes not yet consumed by a complete request.
    buf: Vec<u8>,
    /// How far `buf` is known not to hold the end of a request head, so a
    /// head arriving a byte at a time is not rescanned from its start.
    scanned: usize,
    close: bool,
}

impl Conn {
    /// A new connection whose `GET /` answers `hello from <name>`.
    pub fn new(name: &'static str) -> Self {
        Conn {
            name,
            buf: Vec::new(),
            scanned: 0,
            close: false,
        }
    }

    /// Takes `data` received on the connection, answers every request now
    /// complete, in order, by appending the responses to `out`, and keeps
    /// any partial request for the next call.
    ///
    /// Answering pauses while `out` holds [`OUT_HIGH_WATER`] bytes or more;
    /// once `out` has been sent, call `on_bytes(&[], out)` to answer the
    /// requests still buffered. Once [`wants_close`](Self::wants_close) is
    /// true, further bytes are ignored.
    ///
    /// # Errors
    ///
    /// A malformed request. Its error response has been appended to `out`,
    /// after the responses to the requests before it, and `wants_close()` is
    /// now true: send `out`, then close.
    pub fn on_bytes(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), HttpError> {
        if self.close {
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        let mut start = 0;
        let mut result = Ok(());
        while !self.close && out.len() < OUT_HIGH_WATER {
            let pending = &self.buf[start..];
            let Some(len) = head_len(pending, self.scanned) else {
                self.scanned = pending.len();
                if pending.len() > MAX_HEAD {
                    result = Err(self.reject(out, 431, "request head too large"));
                }
                break;
            };
            self.scanned = 0;
            if len > MAX_HEAD {
                result = Err(self.reject(out, 431, "request head too large"));
                break;
            }
            let answered = respond(self.name, &self.buf[start..start + len], out);
            start += len;
            match answered {
                Ok(close) => self.close = close,
                Err(e) => result = Err(self.reject(out, e.status, e.reason)),
            }
        }
        if self.close {
            self.buf = Vec::new();
        } else {
            self.buf.drain(..start);
        }
        result
    }

    /// Whether the connection should be closed once `out` has been sent:
    /// after `Connection: close`, an HTTP/1.0 request without keep-alive,
    /// or a malformed request.
    pub fn wants_close(&self) -> bool {
        self.close
    }

    /// Queues the error response for a malformed request and gives up on the
    /// connection, since where the next request would start is unknown.
    fn reject(&mut self, out: &mut Vec<u8>, status: u16, reason: &'static str) -> HttpError {
        self.close = true;
        let body = format!("{} {}: {reason}\n", status, status_text(status));
        write_response(out, status, Body::Bytes(body.as_bytes()), false, true, "");
        HttpError { status, reason }
    }
}

/// Answers one request, given its complete head; returns whether the
/// connection is to be closed after the response.
fn respond(name: &str, head: &[u8], out: &mut Vec<u8>) -> Result<bool, HttpError> {
    let req = Request::parse(head)?;
    let close = !req.keep_alive;
    let head_only = req.method == "HEAD";
    if !head_only && req.method != "GET" {
        let body = Body::Bytes(b"405 Method Not Allowed\n");
        write_response(out, 405, body, false, close, "Allow: GET, HEAD\r\n");
        return Ok(close);
    }
    let path = req.target.split('?').next().unwrap_or_default();
    let (status, body) = if path == "/" {
        (200, Body::Hello(name))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        match parse_count(n) {
            Some(n) => (200, Body::Pattern(n)),
            None => (400, Body::Bytes(b"400 Bad Request: bad byte count\n")),
        }
    } else {
        (404, Body::Bytes(b"404 Not Found\n"))
    };
    write_response(out, status, body, head_only, close, "");
    Ok(close)
}

/// The parts of a request head the server acts on.
struct Request<'a> {
    method: &'a str,
    target: &'a str,
    keep_alive: bool,
}

impl<'a> Request<'a> {
    /// Parses a complete head, as delimited by [`head_len`].
    fn parse(head: &'a [u8]) -> Result<Self, HttpError> {
        let bad = |reason| HttpError {
            status: 400,
            reason,
        };
        let head = std::str::from_utf8(head).map_err(|_| bad("request head is not UTF-8"))?;
        // RFC 9112 allows a bare LF as line terminator; trailing CRs go.
        let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));

        let line = lines.next().unwrap_or_default();
        let mut parts = line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("malformed request line"));
        };
        if method.is_empty() || !method.bytes().all(is_tchar) {
            return Err(bad("malformed method"));
        }
        if !target.starts_with('/') {
            return Err(bad("request target is not a path"));
        }
        let http11 = match version {
            "HTTP/1.1" => true,
            "HTTP/1.0" => false,
            v if v.starts_with("HTTP/") => {
                return Err(HttpError {
                    status: 505,
                    reason: "only HTTP/1.0 and HTTP/1.1",
                });
            }
            _ => return Err(bad("malformed HTTP version")),
        };

        let (mut close, mut keep_alive, mut hosts) = (false, false, 0);
        let mut length = None;
        for line in lines.take_while(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else {
                return Err(bad("malformed header line"));
            };
            // Whitespace before the colon, or a folded line, is an error in
            // RFC 9112 rather than something to guess about.
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(bad("malformed header name"));
            }
            let value = value.trim_matches([' ', '\t']);
            if name.eq_ignore_ascii_case("host") {
                hosts += 1;
            } else if name.eq_ignore_ascii_case("connection") {
                for option in value.split(',').map(str::trim) {
                    close |= option.eq_ignore_ascii_case("close");
                    keep_alive |= option.eq_ignore_ascii_case("keep-alive");
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                let n = value
                    .parse::<u64>()
                    .map_err(|_| bad("malformed Content-Length"))?;
                if value.starts_with('+') || length.is_some_and(|l| l != n) {
                    return Err(bad("malformed Content-Length"));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad("request bodies are not supported"));
            }
        }
        if length.unwrap_or(0) > 0 {
            return Err(bad("request bodies are not supported"));
        }
        if http11 && hosts != 1 {
            return Err(bad("an HTTP/1.1 request needs one Host header"));
        }
        Ok(Request {
            method,
            target,
            keep_alive: !close && (http11 || keep_alive),
        })
    }
}

/// The length of the request head at the start of `buf`, through the blank
/// line that ends it, or `None` if it is not complete yet. Bytes before
/// `from` are known not to end the head.
fn head_len(buf: &[u8], from: usize) -> Option<usize> {
    // A blank line is "\n\n" or "\n\r\n"; look back far enough to see one
    // that straddles `from`.
    let from = from.saturating_sub(2);
    buf[from..].iter().enumerate().find_map(|(i, &b)| {
        let i = from + i;
        let blank = b == b'\n' && (buf[..i].ends_with(b"\n") || buf[..i].ends_with(b"\n\r"));
        blank.then_some(i + 1)
    })
}

/// RFC 9110 token characters, for methods and header names.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses the `N` of `/bytes/N`: plain decimal, at most [`MAX_BYTES`].
fn parse_count(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n <= MAX_BYTES)
}

/// A response body.
enum Body<'a> {
    Bytes(&'a [u8]),
    Hello(&'a str),
    Pattern(usize),
}

impl Body<'_> {
    fn len(&self) -> usize {
        match self {
            Body::Bytes(b) => b.len(),
            Body::Hello(name) => "hello from \n".len() + name.len(),
            Body::Pattern(n) => *n,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match *self {
            Body::Bytes(b) => out.extend_from_slice(b),
            Body::Hello(name) => {
                out.extend_from_slice(b"hello from ");
                out.extend_from_slice(name.as_bytes());
                out.push(b'\n');
            }
            Body::Pattern(n) => {
                out.reserve(n);
                let mut left = n;
                while left > 0 {
                    let k = left.min(PATTERN.len());
                    out.extend_from_slice(&PATTERN[..k]);
                    left -= k;
                }
            }
        }
    }
}

fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    body: Body<'_>,
    head_only: bool,
    close: bool,
    extra_headers: &str,
) {
    let connection = if close { "close" } else { "keep-alive" };
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: {connection}\r\n{extra_headers}\r\n",
        status_text(status),
        body.len(),
    );
    if !head_only {
        body.write(out);
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed response: status, headers (lowercased names), body.
    type Response = (u16, Vec<(String, String)>, Vec<u8>);

    /// Splits `out` into responses; HEAD responses must be listed in
    /// `head_only` by index, as their Content-Length has no body behind it.
    fn responses(mut out: &[u8], head_only: &[usize]) -> Vec<Response> {
        let mut all = Vec::new();
        while !out.is_empty() {
            let len = head_len(out, 0).expect("incomplete response head");
            let head = std::str::from_utf8(&out[..len]).unwrap();
            let mut lines = head.split("\r\n");
            let status = lines.next().unwrap()[9..12].parse().unwrap();
            let headers: Vec<(String, String)> = lines
                .take_while(|l| !l.is_empty())
                .map(|l| {
                    let (n, v) = l.split_once(": ").unwrap();
                    (n.to_ascii_lowercase(), v.to_string())
                })
                .collect();
            let cl: usize = header(&headers, "content-length").parse().unwrap();
            let cl = if head_only.contains(&all.len()) {
                0
            } else {
                cl
            };
            all.push((status, headers, out[len..len + cl].to_vec()));
            out = &out[len + cl..];
        }
        all
    }

    fn header<'h>(headers: &'h [(String, String)], name: &str) -> &'h str {
        let found = headers.iter().find(|(n, _)| n == name);
        &found.unwrap_or_else(|| panic!("no {name} header")).1
    }

    /// Feeds `input` to a fresh connection in one piece.
    fn serve(input: &[u8]) -> (Conn, Result<(), HttpError>, Vec<u8>) {
        let mut conn = Conn::new("test");
        let mut out = Vec::new();
        let r = conn.on_bytes(input, &mut out);
        (conn, r, out)
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn hello() {
        let (conn, r, out) = serve(GET);
        assert_eq!(r, Ok(()));
        let resp = responses(&out, &[]);
        assert_eq!(resp.len(), 1);
        let (status, headers, body) = &resp[0];
        assert_eq!(*status, 200);
        assert_eq!(body, b"hello from test\n");
        assert_eq!(header(headers, "content-type"), "text/plain");
        assert_eq!(header(headers, "connection"), "keep-alive");
        assert!(!conn.wants_close());
    }

    #[test]
    fn split_anywhere() {
        let (_, _, whole) = serve(GET);
        for cut in 0..GET.len() {
            let mut conn = Conn::new("test");
            let mut out = Vec::new();
            conn.on_bytes(&GET[..cut], &mut out).unwrap();
            assert!(
                out.is_empty(),
                "answered an incomplete request cut at {cut}"
            );
            conn.on_bytes(&GET[cut..], &mut out).unwrap();
            assert_eq!(out, whole);
        }
        // And a byte at a time.
        let mut conn = Conn::new("test");
        let mut out = Vec::new();
        for b in GET {
            conn.on_bytes(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert_eq!(out, whole);
    }

    #[test]
    fn pipelined() {
        let input = [
            GET,
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /bytes/100 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET / HT",
        ]
        .concat();
        let mut conn = Conn::new("test");
        let mut out = Vec::new();
        conn.on_bytes(&input, &mut out).unwrap();
        let statuses: Vec<u16> = responses(&out, &[1]).iter().map(|r| r.0).collect();
        assert_eq!(statuses, [200, 200, 200, 404]);
        out.clear();
        conn.on_bytes(b"TP/1.1\r\nHost: x\r\n\r\n", &mut out)
            .unwrap();
        assert_eq!(responses(&out, &[])[0].2, b"hello from test\n");
    }

    #[test]
    fn head_has_length_but_no_body() {
        let (_, r, out) = serve(b"HEAD /bytes/5000 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r, Ok(()));
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("\r\nContent-Length: 5000\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn bytes() {
        let (_, _, out) = serve(b"GET /bytes/1000 HTTP/1.1\r\nHost: x\r\n\r\n");
        let body = &responses(&out, &[])[0].2;
        assert_eq!(body.len(), 1000);
        assert_eq!(&body[..64], PATTERN);
        assert_eq!(&body[960..], &PATTERN[..40]);

        let max = format!("GET /bytes/{MAX_BYTES} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            responses(&serve(max.as_bytes()).2, &[])[0].2.len(),
            MAX_BYTES
        );
        for n in ["1048577", "-1", "+1", "", "1x", "99999999999999999999"] {
            let req = format!("GET /bytes/{n} HTTP/1.1\r\nHost: x\r\n\r\n");
            let (conn, r, out) = serve(req.as_bytes());
            assert_eq!(r, Ok(()), "{n}");
            assert_eq!(responses(&out, &[])[0].0, 400, "{n}");
            assert!(!conn.wants_close(), "{n}");
        }
    }

    #[test]
    fn not_found_and_method() {
        for (req, status) in [
            (&b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"[..], 404),
            (b"GET /?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", 200),
            (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                405,
            ),
        ] {
            let (conn, r, out) = serve(req);
            assert_eq!(r, Ok(()));
            assert_eq!(responses(&out, &[])[0].0, status);
            assert!(!conn.wants_close());
        }
    }

    #[test]
    fn keep_alive_and_close() {
        for (req, close) in [
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], false),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                true,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nconnection: Keep-Alive, CLOSE\r\n\r\n",
                true,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", true),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", false),
        ] {
            let (conn, r, out) = serve(req);
            assert_eq!(r, Ok(()));
            assert_eq!(
                conn.wants_close(),
                close,
                "{}",
                String::from_utf8_lossy(req)
            );
            let resp = responses(&out, &[]);
            let expected = if close { "close" } else { "keep-alive" };
            assert_eq!(header(&resp[0].1, "connection"), expected);
        }
        // Nothing after a close is answered.
        let input = [
            &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
            GET,
        ]
        .concat();
        let (mut conn, _, mut out) = serve(&input);
        assert_eq!(responses(&out, &[]).len(), 1);
        conn.on_bytes(GET, &mut out).unwrap();
        assert_eq!(responses(&out, &[]).len(), 1);
    }

    #[test]
    fn bad_requests() {
        for (req, status) in [
            (&b"GET /\r\n\r\n"[..], 400),
            (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
            (b"GET / HTTX/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n",
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n", 400),
        ] {
            let input = [req, GET].concat();
            let (conn, r, out) = serve(&input);
            let what = String::from_utf8_lossy(req);
            assert_eq!(r.map_err(|e| e.status()), Err(status), "{what}");
            assert!(conn.wants_close(), "{what}");
            // One response: the request after the bad one is not answered.
            let resp = responses(&out, &[]);
            assert_eq!(resp.len(), 1, "{what}");
            assert_eq!(resp[0].0, status, "{what}");
            assert_eq!(header(&resp[0].1, "connection"), "close", "{what}");
        }
    }

    #[test]
    fn bare_lf() {
        let (_, r, out) = serve(b"GET / HTTP/1.1\nHost: x\n\n");
        assert_eq!(r, Ok(()));
        assert_eq!(responses(&out, &[])[0].0, 200);
    }

    #[test]
    fn oversize_head() {
        // Without an end in sight: rejected once more than MAX_HEAD is buffered.
        let mut conn = Conn::new("test");
        let mut out = Vec::new();
        let filler = [
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Filler: ".as_slice(),
            &[b'a'; 100],
        ]
        .concat();
        conn.on_bytes(&filler, &mut out).unwrap();
        let mut r = Ok(());
        while r.is_ok() && !conn.wants_close() {
            r = conn.on_bytes(&[b'a'; 1000], &mut out);
        }
        assert_eq!(r.map_err(|e| e.status()), Err(431));
        assert_eq!(responses(&out, &[])[0].0, 431);

        // Complete but too long, arriving in one piece.
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let (conn, r, _) = serve(big.as_bytes());
        assert_eq!(r.map_err(|e| e.status()), Err(431));
        assert!(conn.wants_close());

        // Exactly MAX_HEAD is fine.
        let base = "GET / HTTP/1.1\r\nHost: x\r\nX-Filler: \r\n\r\n".len();
        let fits = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
            "a".repeat(MAX_HEAD - base)
        );
        assert_eq!(fits.len(), MAX_HEAD);
        let (_, r, out) = serve(fits.as_bytes());
        assert_eq!(r, Ok(()));
        assert_eq!(responses(&out, &[])[0].0, 200);
    }

    #[test]
    fn pauses_at_high_water() {
        let req = format!("GET /bytes/{MAX_BYTES} HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut conn = Conn::new("test");
        let mut out = Vec::new();
        conn.on_bytes(req.repeat(3).as_bytes(), &mut out).unwrap();
        assert_eq!(responses(&out, &[]).len(), 1);
        let mut answered = 1;
        loop {
            out.clear();
            conn.on_bytes(&[], &mut out).unwrap();
            if out.is_empty() {
                break;
            }
            answered += responses(&out, &[]).len();
        }
        assert_eq!(answered, 3);
    }
}
