//! `aemstat`: the AEM state of a live system, from `/proc/<pid>/aem`.
//!
//! The library holds what can be tested on the host: the parser of the
//! kernel's text ([`parse`]), the command line ([`args`]), the sampling
//! of a `/proc` tree ([`scan`]), and the tables printed ([`render`]).
//! The binary (`src/main.rs`) ties them to the real `/proc`, the clock
//! and the terminal.

pub mod args;
pub mod parse;
pub mod render;
pub mod scan;
