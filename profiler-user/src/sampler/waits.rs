//! The kinds that measure waits (off-CPU, locks), seen from userspace:
//! each kind's counts maps, draining them, adapting its sampling period to
//! the unwind budget, and attaching the locks programs. The pure halves
//! (decoding, the period rule) are in [`super::off_cpu`].

use std::collections::HashMap as StdHashMap;
use std::time::Instant;

use aya::maps::{Map, MapData, PerCpuHashMap, ProgramArray};
use aya::{Btf, Ebpf};
use profiler_common::{names, Config, StackHash, WaitKey, WaitValue};

use super::drain::{MapSet, RawSample};
use super::{btf_tracepoint, map_err, off_cpu, process_events, program_fd, SamplerError};
use crate::kind::ProfileKind;
use crate::profile::CaptureStats;

/// A wait kind's two counts maps, one per map set.
pub(super) type Counts = [PerCpuHashMap<MapData, WaitKey, WaitValue>; 2];

/// Takes the counts maps `names` out of the object with `take`.
pub(super) fn counts(
    take: &mut impl FnMut(&'static str) -> Result<Map, SamplerError>,
    names: [&'static str; 2],
) -> Result<Counts, SamplerError> {
    let [zero, one] = names;
    Ok([
        take(zero)?.try_into().map_err(map_err(zero))?,
        take(one)?.try_into().map_err(map_err(one))?,
    ])
}

/// A wait kind's maps and its adaptive period.
pub(super) struct WaitState {
    /// Which kind.
    pub kind: ProfileKind,
    counts: Counts,
    /// Kept waits per second the period adapts to (all CPUs).
    budget: u64,
    /// When the period was last adapted.
    adapted: Instant,
}

impl WaitState {
    pub fn new(kind: ProfileKind, counts: Counts, budget: u64) -> Self {
        Self {
            kind,
            counts,
            budget,
            adapted: Instant::now(),
        }
    }

    /// The kind's period in `config`.
    fn period<'c>(&self, config: &'c mut Config) -> &'c mut u64 {
        match self.kind {
            ProfileKind::Locks => &mut config.lock_period_ns,
            _ => &mut config.off_cpu_period_ns,
        }
    }

    /// Moves the kind's period in `config` after a drain whose counters
    /// were `delta`; returns whether it changed.
    pub fn adapt(&mut self, config: &mut Config, delta: &CaptureStats) -> bool {
        let kept = delta.recorded + delta.dropped;
        let elapsed = self.adapted.elapsed();
        self.adapted = Instant::now();
        let kind = self.kind;
        let budget = self.budget;
        let current = self.period(config);
        let period = off_cpu::next_period(*current, kept, elapsed, budget);
        if period == *current {
            return false;
        }
        log::debug!(
            "{kind}: {kept} of {} waits kept; period {current} -> {period} ns",
            delta.intervals
        );
        *current = period;
        true
    }

    /// Reads and empties the kind's counts map of `set`, joined with the
    /// drained `stacks`.
    pub fn take(
        &mut self,
        set: MapSet,
        stacks: &StdHashMap<StackHash, Vec<u64>>,
    ) -> Result<Vec<RawSample>, SamplerError> {
        let index = set.index();
        let name = match self.kind {
            ProfileKind::Locks => names::LOCK_COUNTS[index],
            _ => names::OFF_CPU_COUNTS[index],
        };
        let counts = &mut self.counts[index];
        let mut entries = Vec::new();
        for item in counts.iter() {
            let (key, per_cpu) = item.map_err(map_err(name))?;
            let mut total = WaitValue::default();
            for value in per_cpu.iter() {
                total.kept += value.kept;
                total.events_milli += value.events_milli;
                total.nanos += value.nanos;
            }
            entries.push((key, total));
        }
        for (key, _) in &entries {
            counts.remove(key).map_err(map_err(name))?;
        }
        Ok(off_cpu::assemble_waits(self.kind, entries, stacks))
    }
}

/// Loads a tracing hook's unwinding programs `[unwind, store]` for
/// `tracepoint` into their slots of its tail-call array `(name, array)`.
pub(super) fn load_unwinders(
    ebpf: &mut Ebpf,
    btf: &Btf,
    tracepoint: &str,
    [unwind, store]: [&'static str; 2],
    (array_name, array): (&'static str, &mut ProgramArray<MapData>),
) -> Result<(), SamplerError> {
    for (name, slot) in [
        (unwind, names::TAIL_UNWIND_USER),
        (store, names::TAIL_UNWIND_STORE),
    ] {
        let program = btf_tracepoint(ebpf, name)?;
        program
            .load(tracepoint, btf)
            .map_err(super::tail_call_load_error(name))?;
        let fd = program_fd(program.fd(), name)?;
        array.set(slot, &fd, 0).map_err(map_err(array_name))?;
    }
    Ok(())
}

/// Whether this kernel's BTF has the lock-contention tracepoints.
pub fn has_contention_tracepoints(btf: &Btf) -> bool {
    [names::CONTENTION_BEGIN, names::CONTENTION_END]
        .iter()
        .all(|tracepoint| {
            btf.id_by_type_name_kind(
                &format!("btf_trace_{tracepoint}"),
                aya_obj::btf::BtfKind::Typedef,
            )
            .is_ok()
        })
}

/// Loads the locks programs and attaches them: `contention_end` first,
/// then `contention_begin` (an end without a noted begin is skipped).
/// With `tables`, the unwinding programs go into `tail_calls`, and with
/// `files` the files program; returns whether that one was loaded.
pub(super) fn attach_locks(
    ebpf: &mut Ebpf,
    btf: &Btf,
    tables: bool,
    files: bool,
    tail_calls: &mut ProgramArray<MapData>,
) -> Result<bool, SamplerError> {
    if !has_contention_tracepoints(btf) {
        return Err(SamplerError::NoContentionTracepoints);
    }
    let files = files
        && process_events::load_files_program(
            ebpf,
            btf,
            process_events::FilesHook::Tracepoint {
                program: names::LOCK_FILES,
                tracepoint: names::CONTENTION_END,
                array_name: names::LOCK_TAIL_CALLS,
                array: tail_calls,
            },
        )?;
    if tables {
        load_unwinders(
            ebpf,
            btf,
            names::CONTENTION_END,
            [names::LOCK_UNWIND, names::LOCK_STORE],
            (names::LOCK_TAIL_CALLS, tail_calls),
        )?;
    }
    for (name, tracepoint) in [
        (names::LOCK_END, names::CONTENTION_END),
        (names::LOCK_BEGIN, names::CONTENTION_BEGIN),
    ] {
        let program = btf_tracepoint(ebpf, name)?;
        program
            .load(tracepoint, btf)
            .map_err(|source| SamplerError::Program {
                action: format!("load {name} (verifier)"),
                source,
            })?;
        program.attach().map_err(|source| SamplerError::Program {
            action: format!("attach {name} to tp_btf/{tracepoint}"),
            source,
        })?;
    }
    Ok(files)
}
