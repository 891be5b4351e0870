//! SHIM-5 on the host: properties of the shim's own logic, which hold
//! with or without an AEM kernel (on a kernel without AEM, critical
//! sections only count).  The delivery state machine itself is checked
//! against the real kernel by the conformance suite (`tests/model.rs`).

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd};
use std::os::unix::process::ExitStatusExt;

use aem::{EventData, FdEvents, TcpState};
use aem_syscalls::uapi;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// Guards opened and closed in any order: the depth is always the
    /// number of guards alive, and the thread ends unblocked.
    #[test]
    fn sections_closed_in_any_order_keep_the_depth(
        steps in proptest::collection::vec((any::<bool>(), any::<usize>()), 0..200)
    ) {
        let mut open = Vec::new();
        for (push, at) in steps {
            if push || open.is_empty() {
                open.push(aem::critical_section());
            } else {
                drop(open.remove(at % open.len()));
            }
            prop_assert_eq!(aem::critical_depth() as usize, open.len());
        }
        drop(open);
        prop_assert_eq!(aem::critical_depth(), 0);
    }

    /// Any text, of any length, goes out whole and unchanged.
    #[test]
    fn output_is_written_whole(text in ".{0,3000}", times in 1usize..4) {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let (mut r, w) = (std::fs::File::from(r), std::fs::File::from(w));
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            s
        });
        for _ in 0..times {
            aem::io::write_fmt(w.as_fd(), format_args!("{text}\n")).unwrap();
        }
        drop(w);
        prop_assert_eq!(reader.join().unwrap(), format!("{text}\n").repeat(times));
    }

    /// Records decode to their source's typed data, errors included.
    #[test]
    fn records_decode_by_source(source in 1u32..12, d0 in any::<u64>(), d1 in any::<u64>(),
                                count in 1u64..1000, id in any::<u32>(), cookie in any::<u64>()) {
        // An accept record owns the descriptor it carries: give it a real
        // one of ours (a new /dev/null), never a random number.
        let accept = source == uapi::aem_source_kind::AEM_SOURCE_ACCEPT;
        let d0 = if accept && (d0 as i64) >= 0 {
            std::fs::File::open("/dev/null").unwrap().into_raw_fd() as u64
        } else {
            d0
        };
        // A process-exit record's si_code is one of a few small numbers:
        // hit CLD_EXITED, CLD_KILLED, CLD_DUMPED and some that are none.
        let exit = source == uapi::aem_source_kind::AEM_SOURCE_PROCESS_EXIT;
        let d0 = if exit { d0 % 5 } else { d0 };
        // ... and signals 0 and 0x7f, which a wait status cannot tell.
        let d1 = if exit && d1 % 4 == 0 { (d1 & !0x7f) | (((d1 >> 8) & 1) * 0x7f) } else { d1 };
        // A module record's type 0 is the end of a driver's type: hit it.
        let module = source == uapi::aem_source_kind::AEM_SOURCE_MODULE;
        let d1 = if module && d1 % 4 == 0 { 0 } else { d1 };
        let raw = uapi::aem_record { id, source, cookie, count, data: [d0, d1] };
        // SAFETY: an accept record's descriptor is a new one handed over.
        let rec = unsafe { aem::Record::from_raw(&raw) };
        prop_assert_eq!((rec.id, rec.cookie, rec.count), (id, cookie, count));
        let as_result = |w: u64| if (w as i64) < 0 { Err(-(w as i64) as i32) } else { Ok(w) };
        match rec.data {
            EventData::Fd { fd, ready } => {
                prop_assert_eq!(source, uapi::aem_source_kind::AEM_SOURCE_FD);
                prop_assert_eq!((fd, ready), (d0 as i32, FdEvents::from_bits_retain(d1 as u32)));
            }
            EventData::Timer { expirations } => {
                prop_assert_eq!(source, uapi::aem_source_kind::AEM_SOURCE_TIMER);
                prop_assert_eq!(expirations, d0);
            }
            EventData::Accept { listener, conn } => {
                prop_assert_eq!(source, uapi::aem_source_kind::AEM_SOURCE_ACCEPT);
                prop_assert_eq!(listener, d1 as i32);
                prop_assert_eq!(conn.map(|fd| fd.as_raw_fd() as u64).map_err(|e| e.raw()),
                                as_result(d0));
            }
            EventData::Read { result } => {
                prop_assert_eq!(source, uapi::aem_source_kind::AEM_SOURCE_READ);
                prop_assert_eq!(result.map(|n| n as u64).map_err(|e| e.raw()), as_result(d0));
            }
            EventData::SocketState(change) => {
                prop_assert_eq!(source, uapi::aem_source_kind::AEM_SOURCE_SOCKET_STATE);
                prop_assert_eq!(change.old, TcpState::from((d0 & 0xff) as u8));
                prop_assert_eq!(change.new, TcpState::from(((d0 >> 8) & 0xff) as u8));
                prop_assert_eq!(change.count, count);
            }
            EventData::ProcessExit { status } => {
                prop_assert!(exit);
                let status = status.map(|s| (s.code(), s.signal(), s.core_dumped()));
                let (code, sig) = ((d1 & 0xff) as i32, (d1 & 0x7f) as i32);
                let expected = match d0 as i32 {
                    libc::CLD_EXITED => Some((Some(code), None, false)),
                    libc::CLD_KILLED | libc::CLD_DUMPED if sig == 0 || sig == 0x7f => None,
                    libc::CLD_KILLED => Some((None, Some(sig), false)),
                    libc::CLD_DUMPED => Some((None, Some(sig), true)),
                    _ => None,
                };
                prop_assert_eq!(status, expected);
            }
            EventData::Topic { payload, seq } => {
                prop_assert_eq!(source, uapi::aem_source_kind::AEM_SOURCE_TOPIC);
                prop_assert_eq!((payload, seq), (d0, d1));
            }
            EventData::Module { data, type_ } => {
                prop_assert_eq!(source, uapi::aem_source_kind::AEM_SOURCE_MODULE);
                prop_assert_ne!(d1, 0);
                prop_assert_eq!((data, type_.raw()), (d0, d1 as u32));
            }
            EventData::ModuleGone { data } => {
                prop_assert_eq!(source, uapi::aem_source_kind::AEM_SOURCE_MODULE);
                prop_assert_eq!((data, d1), (d0, 0));
            }
            EventData::Overload { overloaded, firings } => {
                prop_assert_eq!(source, uapi::aem_source_kind::AEM_SOURCE_OVERLOAD);
                prop_assert_eq!((overloaded, firings), (d0 != 0, d1));
            }
            EventData::MemoryWatch { value, previous } => {
                prop_assert_eq!(source, uapi::aem_source_kind::AEM_SOURCE_MEMORY_WATCH);
                prop_assert_eq!(value.map_err(|e| e.raw()), as_result(d0).map(|v| v as u32));
                prop_assert_eq!(previous, d1 as u32);
            }
            EventData::Other { source: s, data } => {
                prop_assert_eq!((s, data), (source, [d0, d1]));
                prop_assert!(!(1..=10).contains(&source), "source {} not decoded", source);
            }
            other => prop_assert!(false, "a variant this test does not know: {:?}", other),
        }
    }
}
