//! The patterns people write in handlers and in the code handlers
//! interrupt, shared by the SHIM-3 suites (`shim_safe_modes`,
//! `shim_preemptive`): lines that show whether they arrived whole, C
//! library calls that allocate behind Rust's back, thread-local caches.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicI64, Ordering::SeqCst};

use rand::Rng;

/// A line that shows whether it arrived whole: `who`, `n`, a letter
/// repeated `len` times, and `len` again.
pub fn line(who: &str, n: u64, len: usize) -> String {
    let letter = (b'a' + (n % 26) as u8) as char;
    format!("{who} {n} {} {len}", letter.to_string().repeat(len))
}

/// The lines of `lines` that are not whole [`line`]s of length `len` by
/// one of `whos` (at most five).
pub fn broken<'a>(lines: &'a [String], whos: &[&str], len: usize) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|l| {
            let mut f = l.split(' ');
            match (f.next(), f.next().and_then(|n| n.parse().ok())) {
                (Some(who), Some(n)) => !whos.contains(&who) || **l != line(who, n, len),
                _ => true,
            }
        })
        .take(5)
        .collect()
}

/// How many of `lines` start with `who` and a space.
pub fn count(lines: &[String], who: &str) -> u64 {
    let prefix = format!("{who} ");
    lines.iter().filter(|l| l.starts_with(&prefix)).count() as u64
}

/// Longer than `std`'s 1 KiB standard-output buffer, so that `std`
/// writes each line in more than one `write(2)`.
pub const LONG: usize = 1536;

/// C library calls that allocate with the C library's own `malloc`,
/// outside Rust's allocator: `opendir` (through `read_dir`) and `strdup`.
pub fn c_library_allocates(i: u64) {
    let entries = std::fs::read_dir("/proc/self").unwrap().count();
    assert!(entries > 10);
    let s = std::ffi::CString::new(format!("round {i}")).unwrap();
    // SAFETY: `s` is a valid C string; strdup's copy is freed right away.
    unsafe {
        let copy = libc::strdup(s.as_ptr());
        assert!(!copy.is_null());
        libc::free(copy.cast());
    }
}

/// Rust allocations of several sizes.
pub fn rust_allocates(n: u64) -> usize {
    let words: Vec<String> = (0..8).map(|k| format!("{n}-{k}")).collect();
    let page = vec![n as u8; 4096].into_boxed_slice();
    let mut map = std::collections::HashMap::new();
    map.insert(n, words.join(","));
    map[&n].len() + page.len()
}

/// A value whose instances are counted, so that a double free or a leak
/// shows in [`LIVE`].
pub struct Tracked(pub u64);

/// [`Tracked`] instances alive.
pub static LIVE: AtomicI64 = AtomicI64::new(0);

impl Default for Tracked {
    /// A new instance, counted in [`LIVE`].
    fn default() -> Tracked {
        LIVE.fetch_add(1, SeqCst);
        Tracked(0)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, SeqCst);
    }
}

thread_local! {
    /// A cache as libraries keep them: taken, used, put back.
    pub static CACHE: Cell<Option<Box<Tracked>>> = const { Cell::new(None) };
    /// A thread-local generator state behind a `RefCell`.
    pub static SEED: RefCell<u64> = const { RefCell::new(0x9e37_79b9_7f4a_7c15) };
}

/// Use the thread's caches the way library code does: take-and-put-back,
/// a `RefCell` borrow, and `rand::thread_rng()` (an `Rc` to a
/// thread-local generator).
pub fn use_thread_locals() -> u64 {
    let mut cached = CACHE.take().unwrap_or_default();
    cached.0 += 1;
    let uses = cached.0;
    CACHE.set(Some(cached));
    let x = SEED.with_borrow_mut(|s| {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    });
    let r: u64 = rand::thread_rng().gen();
    uses ^ x ^ r
}
