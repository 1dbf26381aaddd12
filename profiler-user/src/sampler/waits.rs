//! The kinds that measure waits (off-CPU, locks), seen from userspace:
//! reading their kept waits from the `WAIT_EVENTS` ring, adapting each
//! kind's sampling period to the unwind budget, and attaching the locks
//! programs. The pure halves (decoding, the period rule) are in
//! [`super::off_cpu`].
//!
//! Why a ring of events rather than counts maps like the CPU kind's: kept
//! waits are few by construction (the budget bounds them), each one's time
//! goes to OTLP (`timestamps_unix_nano`), and a ring costs the kernel one
//! copy where a per-CPU hash costs a lookup and an insert.

use std::collections::HashMap as StdHashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aya::maps::{MapData, ProgramArray, RingBuf};
use aya::{Btf, Ebpf};
use profiler_common::{names, Config, StackHash, WaitEvent};

use super::drain::{MapSet, RawSample};
use super::{
    attach_btf_tracepoint, btf_tracepoint, map_err, off_cpu, process_events, program_fd,
    SamplerError,
};
use crate::kind::ProfileKind;
use crate::profile::CaptureStats;

/// Bytes of the `WAIT_EVENTS` ring for `per_second` kept waits a second
/// on each of `cpus` CPUs: eight seconds of them (a drain is due every 1
/// to 4 s, sooner once a CPU's share of half the ring is used, and the
/// agent symbolizes a window between two drains), a power
/// of two from 256 KiB to 64 MiB (the kernel's rule for ring sizes: a
/// power-of-two number of pages). A fuller ring drops and counts.
pub(super) fn ring_bytes(cpus: usize, per_second: u64) -> u32 {
    let wanted = (cpus as u64 * per_second * 8 * RING_EVENT_BYTES).next_power_of_two();
    wanted.clamp(256 << 10, 64 << 20) as u32
}

/// Bytes a kept wait takes in the ring: the event and the ring's header.
const RING_EVENT_BYTES: u64 = std::mem::size_of::<WaitEvent>() as u64 + 8;

/// Kept waits a ring of `bytes` holds.
pub(super) fn ring_events(bytes: u32) -> u32 {
    (u64::from(bytes) / RING_EVENT_BYTES) as u32
}

/// The kept waits of every waiting kind, as the kernel sends them.
pub(super) struct WaitEvents {
    ring: RingBuf<MapData>,
    /// Read from the ring but of the map set still being written (their
    /// stacks are drained with it, at the next drain).
    held: Vec<WaitEvent>,
}

impl WaitEvents {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        Self {
            ring,
            held: Vec::new(),
        }
    }

    /// Every event of the map set `set` sent so far (the programs that
    /// write it have finished: the caller flipped the set and waited),
    /// as samples joined with the drained `stacks`.
    pub fn take(
        &mut self,
        set: MapSet,
        stacks: &StdHashMap<StackHash, Vec<u64>>,
    ) -> Vec<RawSample> {
        let index = set.index() as u32;
        let (mut events, held): (Vec<_>, Vec<_>) =
            self.held.drain(..).partition(|e| e.set == index);
        self.held = held;
        while let Some(item) = self.ring.next() {
            if item.len() < std::mem::size_of::<WaitEvent>() {
                continue;
            }
            // SAFETY: the kernel writes whole `WaitEvent`s (plain
            // integers, any bit pattern valid); the read is unaligned.
            let event = unsafe { item.as_ptr().cast::<WaitEvent>().read_unaligned() };
            if event.set == index {
                events.push(event);
            } else {
                self.held.push(event);
            }
        }
        off_cpu::assemble_waits(events, stacks, monotonic_to_unix_ns())
    }
}

/// What to add to a `CLOCK_MONOTONIC` time (`bpf_ktime_get_ns`) to get
/// nanoseconds since the Unix epoch, now.
fn monotonic_to_unix_ns() -> i128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let monotonic = i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec);
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    unix - monotonic
}

/// A wait kind's adaptive period.
pub(super) struct WaitState {
    /// Which kind.
    pub kind: ProfileKind,
    /// Kept waits per second the period adapts to (all CPUs).
    budget: u64,
    /// When the period was last adapted.
    adapted: Instant,
}

impl WaitState {
    pub fn new(kind: ProfileKind, budget: u64) -> Self {
        Self {
            kind,
            budget,
            adapted: Instant::now(),
        }
    }

    /// Starts the adaptation's clock again (sampling starts now: the time
    /// before it, when nothing could be kept, is not a rate's).
    pub fn restart(&mut self) {
        self.adapted = Instant::now();
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
            process_events::FilesHook::Tracepoint {
                program: names::LOCK_FILES,
                tracepoint: names::CONTENTION_END,
                btf,
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
    attach_btf_tracepoint(ebpf, btf, names::LOCK_END, names::CONTENTION_END)?;
    attach_btf_tracepoint(ebpf, btf, names::LOCK_BEGIN, names::CONTENTION_BEGIN)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_holds_eight_seconds_of_budget_in_a_power_of_two() {
        // 2 CPUs at 250/s: 4000 events of 112 bytes, 448,000 -> 512 KiB.
        assert_eq!(ring_bytes(2, 250), 512 << 10);
        assert_eq!(ring_bytes(1, 1), 256 << 10, "at least 256 KiB");
        assert_eq!(ring_bytes(512, 100_000), 64 << 20, "at most 64 MiB");
        for (cpus, rate) in [(3, 250), (64, 500), (128, 250)] {
            let bytes = ring_bytes(cpus, rate);
            assert!(bytes.is_power_of_two(), "{bytes}");
            assert!(u64::from(bytes) >= (cpus as u64 * rate * 8 * 112).min(64 << 20));
        }
    }
}
