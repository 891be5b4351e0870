//! SHIM-5: a model of the delivery state machine, checked by proptest
//! against the real kernel.
//!
//! Random programs register inline events (priority, one-shot, dispatch,
//! registered disabled, the handler's verdict), activate them, block and
//! unblock delivery (through the shared word and with `AEM_CTL_BLOCK`),
//! enable, disable, re-prioritise and unregister them.  After every step
//! the handlers that ran -- which, and with what count, in what order --
//! must be the ones the model predicts, and at the end `/proc/self/aem`
//! must show the model's counters.  Delivery is synchronous here: an
//! activation is an eventfd write by this thread, and the kernel runs
//! what is due on the way back from that call (or from the call that
//! unblocks or enables), so each step's deliveries are exact.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::Arc;

use aem::{Action, FdEvents, Options, Source};
use aem_conformance::{eventfd, eventfd_add, proc_aem};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[global_allocator]
static ALLOC: aem::HandlerSafeAlloc = aem::HandlerSafeAlloc::system();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Rearm,
    Disarm,
    Unregister,
}

impl Verdict {
    fn action(self) -> Action {
        match self {
            Verdict::Rearm => Action::Rearm,
            Verdict::Disarm => Action::Disarm,
            Verdict::Unregister => Action::Unregister,
        }
    }

    fn raw(self) -> u8 {
        self as u8
    }

    fn from_raw(v: u8) -> Verdict {
        [Verdict::Rearm, Verdict::Disarm, Verdict::Unregister][v as usize]
    }
}

#[derive(Debug, Clone)]
enum Op {
    Register {
        prio: u8,
        oneshot: bool,
        dispatch: bool,
        disabled: bool,
        verdict: Verdict,
    },
    Activate(usize),
    Block,
    Unblock,
    SysBlock,
    SysUnblock,
    Enable(usize),
    Disable(usize),
    SetPriority(usize, u8),
    SetVerdict(usize, Verdict),
    Unregister(usize),
}

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![
        6 => Just(Verdict::Rearm),
        1 => Just(Verdict::Disarm),
        1 => Just(Verdict::Unregister),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // Few priorities, so that ties (activation order) happen.
    let prio = 0u8..4;
    prop_oneof![
        3 => (prio.clone(), any::<bool>(), any::<bool>(), any::<bool>(), verdict()).prop_map(
            |(prio, oneshot, dispatch, disabled, verdict)| Op::Register {
                prio: prio * 30,
                oneshot: oneshot && prio % 2 == 0,
                dispatch,
                disabled: disabled && prio == 0,
                verdict,
            }
        ),
        8 => any::<usize>().prop_map(Op::Activate),
        2 => Just(Op::Block),
        2 => Just(Op::Unblock),
        1 => Just(Op::SysBlock),
        1 => Just(Op::SysUnblock),
        2 => any::<usize>().prop_map(Op::Enable),
        1 => any::<usize>().prop_map(Op::Disable),
        1 => (any::<usize>(), prio).prop_map(|(i, p)| Op::SetPriority(i, p * 30)),
        1 => (any::<usize>(), verdict()).prop_map(|(i, v)| Op::SetVerdict(i, v)),
        1 => any::<usize>().prop_map(Op::Unregister),
    ]
}

/// One registration as the model sees it.
#[derive(Debug)]
struct ModelEvent {
    key: u32,
    prio: u8,
    oneshot: bool,
    dispatch: bool,
    verdict: Verdict,
    enabled: bool,
    pending: u64,
    /// Its place in its priority's queue, when queued.
    queued: Option<u64>,
    activations: u64,
    deliveries: u64,
}

#[derive(Debug, Default)]
struct Model {
    events: Vec<ModelEvent>,
    next_seq: u64,
    area_depth: u32,
    sys_depth: u32,
}

impl Model {
    fn queue(&mut self, i: usize) {
        let e = &mut self.events[i];
        if e.enabled && e.pending > 0 && e.queued.is_none() {
            e.queued = Some(self.next_seq);
            self.next_seq += 1;
        }
    }

    /// What the kernel runs when nothing blocks: highest priority first,
    /// then queue order, each with its coalesced count.
    fn deliver(&mut self) -> Vec<(u32, u64)> {
        let mut ran = Vec::new();
        if self.area_depth > 0 || self.sys_depth > 0 {
            return ran;
        }
        while let Some(i) = (0..self.events.len())
            .filter(|&i| self.events[i].queued.is_some())
            .max_by_key(|&i| {
                (
                    self.events[i].prio,
                    std::cmp::Reverse(self.events[i].queued),
                )
            })
        {
            let e = &mut self.events[i];
            ran.push((e.key, e.pending));
            e.pending = 0;
            e.queued = None;
            e.deliveries += 1;
            if e.oneshot || e.dispatch {
                e.enabled = false;
            }
            if e.oneshot || e.verdict == Verdict::Unregister {
                self.events.remove(i);
            } else if e.verdict == Verdict::Disarm {
                e.enabled = false;
            }
        }
        ran
    }
}

/// One registration as the program holds it.
struct RealEvent {
    key: u32,
    efd: OwnedFd,
    verdict: Arc<AtomicU8>,
    reg: aem::InlineRegistration,
}

type Log = Arc<aem::sync::Mutex<Vec<(u32, u64)>>>;

/// `AEM_CTL_BLOCK`s to undo when a program ends, even by a failure, so
/// that the next one (or proptest's shrinking) starts unblocked.
struct SysBlocks(u32);

impl Drop for SysBlocks {
    fn drop(&mut self) {
        for _ in 0..self.0 {
            aem::unblock().expect("AEM_CTL_UNBLOCK");
        }
    }
}

fn run_program(ops: &[Op]) -> Result<(), TestCaseError> {
    let log: Log = Arc::default();
    let mut model = Model::default();
    let mut real: Vec<RealEvent> = Vec::new();
    let mut sys_blocks = SysBlocks(0);
    let mut sections = Vec::new();
    let mut next_key = 0;

    for (step, op) in ops.iter().enumerate() {
        let n = model.events.len();
        // The model drops unregistered events; the program's list follows.
        let pick = |i: &usize| (n > 0).then(|| i % n);
        match op {
            Op::Register {
                prio,
                oneshot,
                dispatch,
                disabled,
                verdict,
            } => {
                let key = next_key;
                next_key += 1;
                let efd = eventfd();
                let v = Arc::new(AtomicU8::new(verdict.raw()));
                let (l, vv) = (log.clone(), v.clone());
                // SAFETY: the handler pushes to the log, an
                // aem::sync::Mutex (which may allocate: this binary's
                // global allocator is aem::HandlerSafeAlloc), and reads an
                // atomic.
                let reg = unsafe {
                    aem::register_inline(
                        Source::fd(efd.as_fd(), FdEvents::IN),
                        Options::new()
                            .priority(*prio)
                            .oneshot(*oneshot)
                            .dispatch(*dispatch)
                            .disabled(*disabled),
                        move |rec| {
                            l.lock().push((key, rec.count));
                            Verdict::from_raw(vv.load(SeqCst)).action()
                        },
                    )
                }
                .map_err(|e| TestCaseError::fail(format!("register: {e}")))?;
                real.push(RealEvent {
                    key,
                    efd,
                    verdict: v,
                    reg,
                });
                model.events.push(ModelEvent {
                    key,
                    prio: *prio,
                    oneshot: *oneshot,
                    dispatch: *dispatch,
                    verdict: *verdict,
                    enabled: !*disabled,
                    pending: 0,
                    queued: None,
                    activations: 0,
                    deliveries: 0,
                });
            }
            Op::Activate(i) => {
                if let Some(i) = pick(i) {
                    let e = &mut model.events[i];
                    e.pending += 1;
                    e.activations += 1;
                    model.queue(i);
                    eventfd_add(&real_of(&real, model.events[i].key).efd, 1);
                }
            }
            Op::Block => {
                model.area_depth += 1;
                sections.push(aem::critical_section());
            }
            Op::Unblock => {
                if let Some(s) = sections.pop() {
                    model.area_depth -= 1;
                    drop(s);
                }
            }
            Op::SysBlock => {
                model.sys_depth += 1;
                aem::block().map_err(|e| TestCaseError::fail(format!("block: {e}")))?;
                sys_blocks.0 += 1;
            }
            Op::SysUnblock => {
                if model.sys_depth > 0 {
                    model.sys_depth -= 1;
                    sys_blocks.0 -= 1;
                    aem::unblock().map_err(|e| TestCaseError::fail(format!("unblock: {e}")))?;
                }
            }
            Op::Enable(i) => {
                if let Some(i) = pick(i) {
                    model.events[i].enabled = true;
                    model.queue(i);
                    real_of(&real, model.events[i].key)
                        .reg
                        .enable()
                        .map_err(|e| TestCaseError::fail(format!("enable: {e}")))?;
                }
            }
            Op::Disable(i) => {
                if let Some(i) = pick(i) {
                    model.events[i].enabled = false;
                    model.events[i].queued = None;
                    real_of(&real, model.events[i].key)
                        .reg
                        .disable()
                        .map_err(|e| TestCaseError::fail(format!("disable: {e}")))?;
                }
            }
            Op::SetPriority(i, prio) => {
                if let Some(i) = pick(i) {
                    let e = &mut model.events[i];
                    e.prio = *prio;
                    // A queued event moves to the tail of its new queue.
                    if e.queued.is_some() {
                        e.queued = None;
                        model.queue(i);
                    }
                    let key = model.events[i].key;
                    let id = real_of(&real, key).reg.id();
                    aem_syscalls::aem_ctl(
                        id as i32,
                        aem_syscalls::uapi::AEM_CTL_SET_PRIORITY,
                        u64::from(*prio),
                    )
                    .map_err(|e| TestCaseError::fail(format!("set priority: {e}")))?;
                }
            }
            Op::SetVerdict(i, v) => {
                if let Some(i) = pick(i) {
                    model.events[i].verdict = *v;
                    real_of(&real, model.events[i].key)
                        .verdict
                        .store(v.raw(), SeqCst);
                }
            }
            Op::Unregister(i) => {
                if let Some(i) = pick(i) {
                    let key = model.events.remove(i).key;
                    real.retain(|r| r.key != key);
                }
            }
        }
        let expected = model.deliver();
        let ran: Vec<(u32, u64)> = std::mem::take(&mut *log.lock());
        prop_assert_eq!(&ran, &expected, "step {}: {:?}", step, op);
        // Events the model dropped (one-shot, verdict) are gone in the
        // kernel too; the program lets go of them.
        real.retain(|r| model.events.iter().any(|e| e.key == r.key));
    }

    // The counters /proc/self/aem shows are the model's.
    let rows = proc_aem("self");
    prop_assert_eq!(rows.len(), model.events.len(), "registrations in /proc");
    for e in &model.events {
        let id = real_of(&real, e.key).reg.id();
        let row = rows.iter().find(|r| r.id == id);
        prop_assert!(row.is_some(), "event {} missing from /proc", e.key);
        let row = row.unwrap();
        let state = if e.enabled { "enabled" } else { "disabled" };
        prop_assert_eq!(
            (
                row.activations,
                row.deliveries,
                row.pending,
                row.prio,
                row.state.as_str()
            ),
            (
                e.activations,
                e.deliveries,
                e.pending,
                u32::from(e.prio),
                state
            ),
            "event {}",
            e.key
        );
    }
    // Leaving, the thread is restored: sections closed and blocks undone
    // (which runs what waits), every event unregistered.
    Ok(())
}

fn real_of(real: &[RealEvent], key: u32) -> &RealEvent {
    real.iter()
        .find(|r| r.key == key)
        .expect("the program lost an event the model has")
}

#[test]
fn shim_5_delivery_state_machine_matches_the_model_on_the_real_kernel() {
    let config = Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    runner
        .run(&proptest::collection::vec(op(), 1..48), |ops| {
            run_program(&ops)
        })
        .unwrap();
    assert!(
        proc_aem("self").is_empty(),
        "the programs left registrations behind"
    );
}
