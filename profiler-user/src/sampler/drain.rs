//! Drain bookkeeping that needs no kernel: which map set is live, turning
//! drained map entries into [`RawSample`]s, and loss counters.
//!
//! The kernel program writes into one of two map sets (`COUNTS_n` +
//! `STACKS_n`). To drain, userspace points the program at the other set,
//! waits until no program run can still be using the old one (an RCU grace
//! period, see `sampler::quiesce`), then reads and empties the old set. No
//! sample is read twice or lost between sets.

use std::collections::HashMap;

use profiler_common::{SampleKey, StackHash, Stat, COMM_LEN};

use crate::profile::{CaptureStats, UnwindCounters};

/// One of the two map sets the kernel program alternates between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapSet {
    /// `COUNTS_0` / `STACKS_0`.
    Zero,
    /// `COUNTS_1` / `STACKS_1`.
    One,
}

impl MapSet {
    /// Index into `profiler_common::names::{COUNTS, STACKS}` and the value
    /// of `Config::active_set`.
    pub fn index(self) -> usize {
        match self {
            MapSet::Zero => 0,
            MapSet::One => 1,
        }
    }

    /// The other set.
    pub fn other(self) -> MapSet {
        match self {
            MapSet::Zero => MapSet::One,
            MapSet::One => MapSet::Zero,
        }
    }
}

/// Samples that share a thread and a stack, as the kernel recorded them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawSample {
    /// Process id (tgid); 0 for the idle task.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread name (`comm`).
    pub comm: String,
    /// User-space instruction pointers, leaf first; empty for kernel threads.
    pub user_stack: Vec<u64>,
    /// Kernel instruction pointers, leaf first; empty when the sample hit user mode.
    pub kernel_stack: Vec<u64>,
    /// Number of samples.
    pub count: u64,
}

/// What one drain produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Samples, one entry per distinct thread and stack pair.
    pub samples: Vec<RawSample>,
    /// Loss counters accumulated since the previous drain.
    pub stats: CaptureStats,
}

impl Drained {
    /// Total number of samples in this drain.
    pub fn total(&self) -> u64 {
        self.samples.iter().map(|s| s.count).sum()
    }
}

/// The name in a NUL-padded `comm`.
pub fn comm_to_string(comm: &[u8; COMM_LEN]) -> String {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&comm[..len]).into_owned()
}

/// Joins drained counts with drained stacks.
///
/// A stack hash with no stack can only come from a kernel bug or a map
/// corrupted from outside; such samples keep their count with an empty
/// stack rather than being dropped.
pub fn assemble(
    counts: impl IntoIterator<Item = (SampleKey, u64)>,
    stacks: &HashMap<StackHash, Vec<u64>>,
) -> Vec<RawSample> {
    let stack = |hash: StackHash| -> Vec<u64> {
        if hash == 0 {
            Vec::new()
        } else {
            stacks.get(&hash).cloned().unwrap_or_default()
        }
    };
    counts
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(key, count)| RawSample {
            tgid: key.tgid,
            tid: key.tid,
            comm: comm_to_string(&key.comm),
            user_stack: stack(key.user_stack),
            kernel_stack: stack(key.kernel_stack),
            count,
        })
        .collect()
}

/// Cumulative kernel counters, summed over CPUs, indexed by [`Stat`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatCounters([u64; Stat::COUNT as usize]);

impl StatCounters {
    /// Counters from per-stat values (already summed over CPUs).
    pub fn new(values: [u64; Stat::COUNT as usize]) -> Self {
        Self(values)
    }

    /// The value of one counter.
    pub fn get(&self, stat: Stat) -> u64 {
        self.0[stat as usize]
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &StatCounters) -> CaptureStats {
        let delta = |stat| self.get(stat).saturating_sub(earlier.get(stat));
        CaptureStats {
            recorded: delta(Stat::Recorded),
            filtered: delta(Stat::Filtered),
            dropped: delta(Stat::DroppedCountsFull)
                + delta(Stat::DroppedNoConfig)
                + delta(Stat::UnwindTailCallFailed),
            user_stack_errors: delta(Stat::UserStackError),
            kernel_stack_errors: delta(Stat::KernelStackError),
            stacks_lost: delta(Stat::StackMapFull),
            process_events_lost: delta(Stat::NewProcessLost),
            unwind: UnwindCounters {
                unwound: delta(Stat::Unwound),
                no_tables: delta(Stat::UnwindNoTables),
                frame_pointer_steps: delta(Stat::UnwindFramePointerSteps),
                ended: delta(Stat::UnwindStopEnd),
                read_errors: delta(Stat::UnwindStopReadError),
                no_rule: delta(Stat::UnwindStopNoRule),
                no_progress: delta(Stat::UnwindStopNoProgress),
                truncated: delta(Stat::UnwindTruncated),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32, user: StackHash, kernel: StackHash) -> SampleKey {
        let mut comm = [0; COMM_LEN];
        comm[..4].copy_from_slice(b"work");
        SampleKey {
            tgid,
            tid: tgid + 1,
            user_stack: user,
            kernel_stack: kernel,
            comm,
        }
    }

    #[test]
    fn sets_alternate() {
        assert_eq!(MapSet::Zero.other(), MapSet::One);
        assert_eq!(MapSet::One.other().index(), 0);
    }

    #[test]
    fn comm_names() {
        let mut comm = [0; COMM_LEN];
        assert_eq!(comm_to_string(&comm), "");
        comm.copy_from_slice(b"0123456789abcdef");
        assert_eq!(comm_to_string(&comm), "0123456789abcdef");
    }

    #[test]
    fn assemble_joins_stacks_and_keeps_unknown_hashes() {
        let stacks = HashMap::from([(11, vec![0x1, 0x2]), (22, vec![0xffff_0001])]);
        let samples = assemble(
            [
                (key(5, 11, 22), 3),
                (key(6, 0, 22), 1),
                (key(7, 99, 0), 2),
                (key(8, 11, 0), 0),
            ],
            &stacks,
        );
        assert_eq!(samples.len(), 3, "zero counts are skipped");
        assert_eq!(samples[0].user_stack, vec![0x1, 0x2]);
        assert_eq!(samples[0].kernel_stack, vec![0xffff_0001]);
        assert_eq!(samples[0].comm, "work");
        assert!(samples[1].user_stack.is_empty());
        assert!(
            samples[2].user_stack.is_empty(),
            "unknown hash, empty stack"
        );
        assert_eq!(samples[2].count, 2);
        let total: u64 = samples.iter().map(|s| s.count).sum();
        assert_eq!(total, 6);
    }

    #[test]
    fn stats_deltas() {
        let mut before = [0; Stat::COUNT as usize];
        let mut after = [0; Stat::COUNT as usize];
        before[Stat::Recorded as usize] = 10;
        after[Stat::Recorded as usize] = 25;
        after[Stat::DroppedCountsFull as usize] = 2;
        after[Stat::DroppedNoConfig as usize] = 1;
        after[Stat::StackMapFull as usize] = 4;
        let delta = StatCounters::new(after).since(&StatCounters::new(before));
        assert_eq!(delta.recorded, 15);
        assert_eq!(delta.dropped, 3);
        assert_eq!(delta.stacks_lost, 4);
    }
}
