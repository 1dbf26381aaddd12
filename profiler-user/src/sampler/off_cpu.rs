//! The off-CPU kind's userspace half, free of BPF syscalls: its budget
//! setting, decoding drained intervals into [`RawSample`]s (thread states
//! named here) and adapting the sampling period `P` to the budget.
//!
//! The kernel keeps an interval of `d` ns with probability `min(1, d/P)`
//! and weighs it `max(d, P)` ns and `max(1, P/d)` events
//! ([`profiler_common::keep_wait`]), so the totals are exact in
//! expectation whatever `P` is; `P` only trades the resolution of short
//! waits against the cost of unwinding. [`next_period`] moves it so the
//! kept intervals (the ones that are unwound) stay under the budget.

use std::collections::HashMap;
use std::time::Duration;

use profiler_common::{kernel_kind, StackHash, WaitEvent};

use super::bounded::bounded_number;
use super::drain::{decode_key, RawSample};
use crate::kind::{Event, Label, ProfileKind, THREAD_STATE};
use crate::locks::{kernel_lock_type, LOCK_SPACE, LOCK_TYPE};

bounded_number! {
    /// Kept (unwound) off-CPU intervals per second per CPU, 1 to 100000.
    pub struct OffCpuRate;
    /// An off-CPU rate outside 1–100000, or not a number.
    pub struct InvalidOffCpuRate;
    what = "off-CPU rate", unit = "events per second per CPU",
    min = 1, max = 100_000,
    /// The default: 250 unwinds per second per CPU. A kept interval
    /// costs what a CPU sample costs, its stacks (10 to 30 µs of BPF time
    /// measured by `cargo xtask bench-unwind` and `bench-off-cpu`), so the
    /// budget spends at most ~0.5 % of each CPU on stacks: 2.5 times the
    /// CPU profile's 99 samples/s. A host blocking less than 250 times a
    /// second per CPU keeps every interval; a busier one keeps every wait
    /// longer than the adapted period and samples the shorter ones.
    default = 250,
    /// Kept intervals per second per CPU.
    get = per_second,
}

/// The switch-in functions the off-CPU kprobe attaches to: every
/// `finish_task_switch` symbol in `kallsyms` text (`/proc/kallsyms`),
/// compiler clones such as `finish_task_switch.isra.0` included, each
/// once. Cold parts (`.cold`) are not entry points and are left out.
pub fn switch_in_symbols(kallsyms: &str) -> Vec<String> {
    let mut symbols: Vec<String> = kallsyms
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_addr, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            // Module symbols carry a fourth field: the scheduler is built in.
            let text = kind.eq_ignore_ascii_case("t");
            let ours = name == "finish_task_switch" || name.starts_with("finish_task_switch.");
            (text && ours && fields.next().is_none() && !name.ends_with(".cold"))
                .then(|| name.to_owned())
        })
        .collect();
    symbols.sort();
    symbols.dedup();
    symbols
}

/// The name of a thread state as `sched_switch` reports it (`prev_state`,
/// 0 when the thread was preempted).
pub fn thread_state(state: u32) -> &'static str {
    // include/linux/sched.h
    const INTERRUPTIBLE: u32 = 0x1;
    const UNINTERRUPTIBLE: u32 = 0x2;
    const STOPPED: u32 = 0x4;
    const TRACED: u32 = 0x8;
    const PARKED: u32 = 0x40;
    const NOLOAD: u32 = 0x400;
    if state == 0 {
        "preempted"
    } else if state & (STOPPED | TRACED) != 0 {
        "stopped"
    } else if state & UNINTERRUPTIBLE != 0 && state & NOLOAD == 0 {
        // Uninterruptible, counted in the load average: disk I/O mostly.
        "disk"
    } else if state & (INTERRUPTIBLE | UNINTERRUPTIBLE | PARKED) != 0 {
        // TASK_IDLE (uninterruptible + no-load) is an idle kernel thread.
        "sleeping"
    } else {
        "other"
    }
}

/// The labels a drained wait of `kind` carries, from its key's `state`:
/// off-CPU, the thread state; locks, the kernel lock's type.
fn wait_labels(kind: ProfileKind, state: u32) -> Vec<Label> {
    match kind {
        ProfileKind::Locks => vec![
            (LOCK_TYPE, kernel_lock_type(state).to_owned()),
            (LOCK_SPACE, "kernel".to_owned()),
        ],
        _ => vec![(THREAD_STATE, thread_state(state).to_owned())],
    }
}

/// Joins kept waits (off-CPU intervals, lock contentions) with drained
/// stacks: one sample per wait, with the events and time it stands for
/// (events rounded from thousandths, at least 1), its labels (the thread
/// state, or the lock's type) and its time; `boot_to_unix` turns the
/// kernel's `CLOCK_MONOTONIC` times into Unix times. Waits of a kind this
/// build does not know are left out.
pub fn assemble_waits(
    waits: impl IntoIterator<Item = WaitEvent>,
    stacks: &HashMap<StackHash, Vec<u64>>,
    boot_to_unix: i128,
) -> Vec<RawSample> {
    waits
        .into_iter()
        .filter_map(|wait| {
            let kind = match wait.kind {
                kernel_kind::OFF_CPU => ProfileKind::OffCpu,
                kernel_kind::LOCKS => ProfileKind::Locks,
                _ => return None,
            };
            let key = &wait.key;
            // Rounded from thousandths; a kept wait is at least one event.
            let values = vec![
                (wait.events_milli.saturating_add(500) / 1000).max(1),
                wait.nanos,
            ];
            let time = (i128::from(wait.time_ns) + boot_to_unix).max(0) as u64;
            Some(RawSample {
                key: decode_key(
                    kind,
                    (key.tgid, key.tid, key.exec_gen, &key.comm, &key.trace),
                    key.user_stack,
                    key.kernel_stack,
                    stacks,
                    wait_labels(kind, key.state),
                ),
                events: vec![Event {
                    time_unix_nano: time,
                    values: values.clone(),
                }],
                values,
            })
        })
        .collect()
}

/// Where `P` starts: 1 ms, below most waits worth looking at, and high
/// enough that the first second of a busy host (before any adaptation)
/// keeps at most ~1000 intervals per second of blocked time.
pub const INITIAL_PERIOD_NS: u64 = 1_000_000;
/// The smallest `P`: below it every interval is kept anyway.
pub const MIN_PERIOD_NS: u64 = 1_000;
/// The largest `P`: 10 s.
pub const MAX_PERIOD_NS: u64 = 10_000_000_000;

/// The period for the next drain, from the current one and the intervals
/// it kept in `elapsed`, so the kept rate goes to 80 % of `budget`
/// (intervals per second, all CPUs).
///
/// Short intervals are kept with probability `d/P`, so the kept count
/// goes as `1/P`: scaling `P` by `kept / target` lands on the target in
/// one step when intervals are short, and converges in a few when some
/// are longer than `P` (those are always kept). `P` rises at once when
/// over budget and falls at most by half per drain, so one quiet drain
/// (1 to 4 s) does not open the floodgates.
pub fn next_period(period_ns: u64, kept: u64, elapsed: Duration, budget: u64) -> u64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 || budget == 0 {
        return period_ns.clamp(MIN_PERIOD_NS, MAX_PERIOD_NS);
    }
    let target = budget as f64 * seconds * 0.8;
    let scaled = period_ns as f64 * kept as f64 / target;
    let floor = period_ns as f64 / 2.0;
    (scaled.max(floor) as u64).clamp(MIN_PERIOD_NS, MAX_PERIOD_NS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::{WaitKey, COMM_LEN, TRUNCATED_MARK};

    #[test]
    fn switch_in_symbols_include_compiler_clones() {
        let kallsyms = "\
ffffffff813ae3b0 t __pfx_finish_task_switch.isra.0
ffffffff813ae3c0 t finish_task_switch.isra.0
ffffffff813ae500 t finish_task_switch.cold
ffffffff813ae600 T finish_task_switch
ffffffff813ae700 T finish_task_switch_hook
ffffffffc0000000 t finish_task_switch\t[some_module]
";
        assert_eq!(
            switch_in_symbols(kallsyms),
            ["finish_task_switch", "finish_task_switch.isra.0"]
        );
        assert!(switch_in_symbols("ffffffff81000000 T schedule\n").is_empty());
    }

    #[test]
    fn thread_states_are_named() {
        assert_eq!(thread_state(0), "preempted");
        assert_eq!(thread_state(0x1), "sleeping");
        assert_eq!(thread_state(0x1 | 0x2000), "sleeping", "freezable");
        assert_eq!(thread_state(0x2), "disk");
        assert_eq!(thread_state(0x2 | 0x100), "disk", "killable");
        assert_eq!(thread_state(0x2 | 0x400), "sleeping", "TASK_IDLE");
        assert_eq!(thread_state(0x40), "sleeping", "parked");
        assert_eq!(thread_state(0x4), "stopped");
        assert_eq!(thread_state(0x8), "stopped");
        assert_eq!(thread_state(0x80), "other");
    }

    fn key(state: u32, user: StackHash, kernel: StackHash) -> WaitKey {
        let mut comm = [0; COMM_LEN];
        comm[..5].copy_from_slice(b"sleep");
        WaitKey {
            tgid: 10,
            tid: 11,
            user_stack: user,
            kernel_stack: kernel,
            comm,
            state,
            exec_gen: 0,
            trace: Default::default(),
        }
    }

    fn wait(kind: u32, key: WaitKey, time_ns: u64, events_milli: u64, nanos: u64) -> WaitEvent {
        WaitEvent {
            key,
            time_ns,
            events_milli,
            nanos,
            kind,
            set: 0,
        }
    }

    #[test]
    fn waits_decode_to_weighted_samples_with_their_state_and_time() {
        let stacks = HashMap::from([
            (1, vec![0x10, 0x20, TRUNCATED_MARK]),
            (2, vec![0xffff_ffff_8100_0000]),
        ]);
        let off = kernel_kind::OFF_CPU;
        let samples = assemble_waits(
            [
                wait(off, key(1, 1, 2), 5_000, 7_400, 9_000_000),
                wait(off, key(0, 0, 2), 6_000, 1_000, 1_000),
                wait(99, key(2, 0, 0), 7_000, 1_000, 1),
            ],
            &stacks,
            1_000_000,
        );
        assert_eq!(
            samples.len(),
            2,
            "a kind this build does not know is left out"
        );
        let first = &samples[0];
        assert_eq!(first.key.kind, ProfileKind::OffCpu);
        assert_eq!(first.values, vec![7, 9_000_000], "7.4 events round to 7");
        assert_eq!(
            first.events,
            vec![Event {
                time_unix_nano: 1_005_000,
                values: vec![7, 9_000_000]
            }],
            "one event, at its Unix time"
        );
        assert_eq!(first.key.user_stack, vec![0x10, 0x20]);
        assert_eq!(
            first.key.user_stop,
            Some(profiler_common::UnwindStop::Truncated)
        );
        assert_eq!(first.key.kernel_stack, vec![0xffff_ffff_8100_0000]);
        assert_eq!(first.key.thread.comm, "sleep");
        assert_eq!(
            first.key.labels,
            vec![(THREAD_STATE, "sleeping".to_owned())]
        );
        let second = &samples[1];
        assert_eq!(second.values, vec![1, 1_000]);
        assert!(second.key.user_stack.is_empty());
        assert_eq!(second.key.labels[0].1, "preempted");
    }

    #[test]
    fn lock_contentions_decode_with_the_lock_type() {
        let stacks = HashMap::from([(2, vec![0xffff_ffff_8100_0000])]);
        // LCB_F_WRITE: a writer waiting on an rw_semaphore.
        let samples = assemble_waits(
            [wait(
                kernel_kind::LOCKS,
                key(0x4, 0, 2),
                1,
                2_000,
                5_000_000,
            )],
            &stacks,
            0,
        );
        assert_eq!(samples[0].key.kind, ProfileKind::Locks);
        assert_eq!(samples[0].values, vec![2, 5_000_000]);
        assert_eq!(
            samples[0].key.labels,
            vec![
                (LOCK_TYPE, "rwsem:write".to_owned()),
                (LOCK_SPACE, "kernel".to_owned())
            ]
        );
    }

    #[test]
    fn the_period_follows_the_budget() {
        let second = Duration::from_secs(1);
        // 4000 kept at 1 ms against a budget of 1000/s (target 800):
        // P goes up 5x.
        assert_eq!(next_period(1_000_000, 4_000, second, 1_000), 5_000_000);
        // Under budget: down, but at most by half.
        assert_eq!(next_period(1_000_000, 10, second, 1_000), 500_000);
        assert_eq!(next_period(1_000_000, 600, second, 1_000), 750_000);
        // Nothing kept: halves down to the floor.
        assert_eq!(next_period(1_500, 0, second, 1_000), MIN_PERIOD_NS);
        // Bounded above; a zero-length drain keeps P.
        assert_eq!(
            next_period(MAX_PERIOD_NS, u64::MAX, second, 1),
            MAX_PERIOD_NS
        );
        assert_eq!(next_period(2_000_000, 5, Duration::ZERO, 1_000), 2_000_000);
        // Two seconds hold twice the intervals.
        assert_eq!(
            next_period(1_000_000, 3_200, Duration::from_secs(2), 1_000),
            2_000_000
        );
    }

    /// Against a simulated host switching 200k times a second (short
    /// waits) with a budget of 2000/s, the kept rate settles under the
    /// budget within a few drains.
    #[test]
    fn the_period_converges_under_budget_on_a_busy_host() {
        let budget = 2_000u64;
        let mut period = INITIAL_PERIOD_NS;
        let mut kept = 0.0;
        for _ in 0..6 {
            // 200k intervals of 5 us and 100 of 20 ms per second.
            kept = 200_000.0 * (5_000.0 / period as f64).min(1.0)
                + 100.0 * (20_000_000.0 / period as f64).min(1.0);
            period = next_period(period, kept as u64, Duration::from_secs(1), budget);
        }
        assert!(kept <= budget as f64, "kept {kept}/s at P = {period} ns");
        assert!(
            kept >= budget as f64 * 0.5,
            "kept {kept}/s at P = {period} ns"
        );
    }

    #[test]
    fn rates_parse_within_bounds() {
        assert_eq!("250".parse::<OffCpuRate>().unwrap().per_second(), 250);
        assert_eq!(OffCpuRate::default().per_second(), 250);
        let err = "0".parse::<OffCpuRate>().unwrap_err().to_string();
        assert!(err.contains("1 to 100000"), "{err}");
        assert!("lots".parse::<OffCpuRate>().is_err());
        assert!(OffCpuRate::new(100_001).is_err());
    }
}
