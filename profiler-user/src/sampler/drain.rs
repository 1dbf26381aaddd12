//! Drain bookkeeping that needs no kernel: which map set is live, decoding
//! drained map entries into [`RawSample`]s (truncation decoded here, once),
//! and loss counters.
//!
//! The kernel program writes into one of two map sets (`COUNTS_n` +
//! `STACKS_n`). To drain, userspace points the program at the other set,
//! waits until no program run can still be using the old one (an RCU grace
//! period, see `sampler::quiesce`), then reads and empties the old set. No
//! sample is read twice or lost between sets.

use std::collections::{BTreeMap, HashMap};

use profiler_common::{
    SampleKey as KernelKey, StackHash, Stat, TraceContext, UnwindStop, COMM_LEN, PYTHON_MARK,
};

use super::stats::{
    CaptureStats, FileCounters, LinkCounters, MemoryCounters, UnresolvedLeaves, UnwindCounters,
};
use crate::kind::{Event, Label, ProfileKind};
use crate::trace_link::TraceLink;

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

/// A thread as the kernel saw it when it took a sample.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Thread {
    /// Process id (tgid); 0 for the idle task.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread name (`comm`).
    pub comm: String,
    /// The process's exec generation at the sample: which image of the
    /// process (before or after an `exec`) the stacks belong to.
    pub exec_gen: u32,
}

/// What decoded samples merge by: their kind, thread, stacks and labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SampleKey {
    /// The profile kind whose program recorded the sample.
    pub kind: ProfileKind,
    /// The sampled thread.
    pub thread: Thread,
    /// User-space instruction pointers, leaf first; empty for kernel threads.
    pub user_stack: Vec<u64>,
    /// Why the table unwinder stopped before the user stack's outermost
    /// frame (the depth limit, unreadable memory, …): the frames above the
    /// last one are unknown. `None` for a whole stack, or one taken with
    /// frame pointers.
    pub user_stop: Option<UnwindStop>,
    /// The thread's Python frames, innermost first, one word each
    /// ([`profiler_common::python_frame`]); empty outside Python.
    pub python_frames: Vec<u64>,
    /// Kernel instruction pointers, leaf first; empty when the sample hit user mode.
    pub kernel_stack: Vec<u64>,
    /// Labels the kind's decoder attached; empty for CPU samples.
    pub labels: Vec<Label>,
    /// The trace and span the thread ran in, when known.
    pub link: Option<TraceLink>,
}

/// Samples that share a [`SampleKey`], decoded from what the kernel recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawSample {
    /// What the samples share.
    pub key: SampleKey,
    /// One value per sample type of the kind
    /// ([`ProfileKind::sample_types`]); `values[0]` is the count.
    pub values: Vec<u64>,
    /// Each event the samples stand for, with its time and values, for
    /// kinds that record them (their sums are `values`); empty otherwise.
    pub events: Vec<Event>,
}

impl RawSample {
    /// The number of samples or events (the first value).
    pub fn count(&self) -> u64 {
        self.values.first().copied().unwrap_or(0)
    }
}

/// Loss and filter counters of each kind.
pub type KindStats = BTreeMap<ProfileKind, CaptureStats>;

/// What one drain produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Samples, one entry per distinct [`SampleKey`].
    pub samples: Vec<RawSample>,
    /// Loss counters of each kind accumulated since the previous drain.
    pub stats: KindStats,
}

impl Drained {
    /// Total number of samples (or events) in this drain, all kinds.
    pub fn total(&self) -> u64 {
        self.samples.iter().map(RawSample::count).sum()
    }

    /// The distinct processes with samples in this drain, ascending, each
    /// with the newest exec generation its samples were taken in.
    pub fn newest_images(&self) -> Vec<(u32, u32)> {
        let mut images: Vec<(u32, u32)> = self
            .samples
            .iter()
            .map(|s| (s.key.thread.tgid, s.key.thread.exec_gen))
            .collect();
        images.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        images.dedup_by_key(|image| image.0);
        images
    }

    /// The distinct processes with samples in this drain, ascending.
    pub fn tgids(&self) -> Vec<u32> {
        let mut tgids: Vec<u32> = self.samples.iter().map(|s| s.key.thread.tgid).collect();
        tgids.sort_unstable();
        tgids.dedup();
        tgids
    }
}

/// The name in a NUL-padded `comm`.
pub fn comm_to_string(comm: &[u8; COMM_LEN]) -> String {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&comm[..len]).into_owned()
}

/// A user stack without the mark the kernel's unwinder ends a stack with
/// when it stopped early, and why it stopped ([`UnwindStop::mark`]).
pub fn split_stop(mut stack: Vec<u64>) -> (Vec<u64>, Option<UnwindStop>) {
    let stop = stack.last().and_then(|&word| UnwindStop::from_mark(word));
    if stop.is_some() {
        stack.pop();
    }
    (stack, stop)
}

/// A user stack's native frames and, after [`PYTHON_MARK`], the Python
/// frames the unwinder appended (innermost first, see
/// [`profiler_common::python_frame`]; empty when it appended none).
pub fn split_python(mut stack: Vec<u64>) -> (Vec<u64>, Vec<u64>) {
    match stack.iter().position(|&word| word == PYTHON_MARK) {
        Some(mark) => {
            let python = stack.split_off(mark + 1);
            stack.pop();
            (stack, python)
        }
        None => (stack, Vec::new()),
    }
}

/// The drained stack with hash `hash`; empty for 0 (no stack).
///
/// A stack hash with no stack can only come from a kernel bug or a map
/// corrupted from outside; such samples keep their count with an empty
/// stack rather than being dropped.
pub fn lookup_stack(stacks: &HashMap<StackHash, Vec<u64>>, hash: StackHash) -> Vec<u64> {
    if hash == 0 {
        Vec::new()
    } else {
        stacks.get(&hash).cloned().unwrap_or_default()
    }
}

/// Who the kernel saw run a sample: tgid, tid, exec generation, `comm`
/// and trace context.
pub type KernelThread<'a> = (u32, u32, u32, &'a [u8; COMM_LEN], &'a TraceContext);

/// What the kernel recorded about a sample of `kind`, decoded: the thread,
/// its stacks looked up by hash in `stacks` (the user stack's truncation
/// mark decoded), its trace link, and `labels`.
pub fn decode_key(
    kind: ProfileKind,
    (tgid, tid, exec_gen, comm, trace): KernelThread<'_>,
    user_stack: StackHash,
    kernel_stack: StackHash,
    stacks: &HashMap<StackHash, Vec<u64>>,
    labels: Vec<Label>,
) -> SampleKey {
    let (user_stack, python_frames) = split_python(lookup_stack(stacks, user_stack));
    let (user_stack, user_stop) = split_stop(user_stack);
    SampleKey {
        kind,
        thread: Thread {
            tgid,
            tid,
            comm: comm_to_string(comm),
            exec_gen,
        },
        user_stack,
        user_stop,
        python_frames,
        kernel_stack: lookup_stack(stacks, kernel_stack),
        labels,
        link: TraceLink::from_context(trace),
    }
}

/// A drained `COUNTS` entry: its key and its count, the sum of its value
/// slots (one for the shared map; a per-CPU map has one per possible CPU).
pub fn sum_slots(key: &KernelKey, slots: &[u64]) -> (KernelKey, u64) {
    (*key, slots.iter().sum())
}

/// Joins drained sample counts (CPU and page faults, told apart by the
/// key's kernel kind) with drained stacks, decoding the truncation mark.
/// `kind_of` names the profile kind of a kernel kind and the period one
/// sample stands for (CPU: ns; page faults: faults); each sample's second
/// value is its count × that period. Counts of a kind `kind_of` does not
/// know are left out.
pub fn assemble_counted(
    counts: impl IntoIterator<Item = (KernelKey, u64)>,
    stacks: &HashMap<StackHash, Vec<u64>>,
    kind_of: impl Fn(u32) -> Option<(ProfileKind, u64)>,
) -> Vec<RawSample> {
    counts
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .filter_map(|(key, count)| {
            let (kind, period) = kind_of(key.kind)?;
            Some(RawSample {
                key: decode_key(
                    kind,
                    (key.tgid, key.tid, key.exec_gen, &key.comm, &key.trace),
                    key.user_stack,
                    key.kernel_stack,
                    stacks,
                    Vec::new(),
                ),
                values: vec![count, count.saturating_mul(period)],
                events: Vec::new(),
            })
        })
        .collect()
}

/// Cumulative kernel counters of one kind, summed over CPUs, indexed by
/// [`Stat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatCounters([u64; Stat::COUNT as usize]);

// `Default` is derived for arrays of up to 32 elements only.
impl Default for StatCounters {
    fn default() -> Self {
        Self([0; Stat::COUNT as usize])
    }
}

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
                + delta(Stat::UnwindTailCallFailed)
                + delta(Stat::UnwindRaced),
            user_stack_errors: delta(Stat::UserStackError),
            kernel_stack_errors: delta(Stat::KernelStackError),
            stacks_lost: delta(Stat::StackMapFull),
            process_events_lost: delta(Stat::NewProcessLost),
            intervals: delta(Stat::WaitIntervals),
            interval_ns: delta(Stat::WaitNanos),
            unwind: UnwindCounters {
                unwound: delta(Stat::Unwound),
                no_tables: delta(Stat::UnwindNoTables),
                frame_pointer_steps: delta(Stat::UnwindFramePointerSteps),
                ended: delta(Stat::UnwindStopEnd),
                frame_pointer_ended: delta(Stat::UnwindStopFramePointerEnd),
                read_errors: delta(Stat::UnwindStopReadError),
                no_rule: delta(Stat::UnwindStopNoRule),
                no_progress: delta(Stat::UnwindStopNoProgress),
                zero_return: delta(Stat::UnwindStopZeroReturn),
                tables_pending: delta(Stat::UnwindStopTablesPending),
                truncated: delta(Stat::UnwindTruncated),
                python_stacks: delta(Stat::PythonStacks),
                python_no_frames: delta(Stat::PythonNoFrames),
                python_truncated: delta(Stat::PythonTruncated),
            },
            files: FileCounters {
                recorded: delta(Stat::FilesRecorded),
                lost: delta(Stat::FileRecordLost),
                lookup_failed: delta(Stat::FileLookupFailed),
            },
            // Counted in userspace, later in the pipeline.
            unresolved: UnresolvedLeaves::default(),
            links: LinkCounters::default(),
            memory: MemoryCounters {
                calls: delta(Stat::AllocCalls),
                bytes: delta(Stat::AllocBytes),
                untracked: delta(Stat::AllocUntracked),
                frees_deferred: delta(Stat::FreesDeferred),
                frees_lost: delta(Stat::FreesLost),
                forks_lost: delta(Stat::ForksLost),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::{kernel_kind, TRUNCATED_MARK};

    fn key(tgid: u32, user: StackHash, kernel: StackHash) -> KernelKey {
        let mut comm = [0; COMM_LEN];
        comm[..4].copy_from_slice(b"work");
        KernelKey {
            tgid,
            tid: tgid + 1,
            user_stack: user,
            kernel_stack: kernel,
            comm,
            exec_gen: 0,
            kind: kernel_kind::CPU,
            trace: TraceContext::default(),
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
        let stacks = HashMap::from([
            (11, vec![0x1, 0x2]),
            (22, vec![0xffff_0001]),
            (33, vec![0x1, 0x2, TRUNCATED_MARK]),
        ]);
        let samples = assemble_counted(
            [
                (key(5, 11, 22), 3),
                (key(6, 0, 22), 1),
                (key(7, 99, 0), 2),
                (key(8, 11, 0), 0),
                (key(9, 33, 0), 1),
            ],
            &stacks,
            |kind| (kind == kernel_kind::CPU).then_some((ProfileKind::Cpu, 10)),
        );
        assert_eq!(samples.len(), 4, "zero counts are skipped");
        assert_eq!(samples[0].key.user_stack, vec![0x1, 0x2]);
        assert_eq!(samples[0].key.user_stop, None);
        assert_eq!(samples[0].key.kernel_stack, vec![0xffff_0001]);
        assert_eq!(samples[0].key.thread.comm, "work");
        assert_eq!(samples[0].key.kind, ProfileKind::Cpu);
        assert_eq!(samples[0].values, vec![3, 30], "count and CPU time");
        assert!(samples[1].key.user_stack.is_empty());
        assert!(
            samples[2].key.user_stack.is_empty(),
            "unknown hash, empty stack"
        );
        assert_eq!(samples[2].count(), 2);
        assert_eq!(samples[3].key.user_stack, vec![0x1, 0x2], "mark removed");
        assert_eq!(samples[3].key.user_stop, Some(UnwindStop::Truncated));
        let drained = Drained {
            samples,
            stats: KindStats::new(),
        };
        assert_eq!(drained.total(), 7);
        assert_eq!(drained.tgids(), vec![5, 6, 7, 9]);
    }

    #[test]
    fn each_process_is_named_once_with_its_newest_image() {
        let at = |tgid, exec_gen| KernelKey {
            exec_gen,
            ..key(tgid, 11, 0)
        };
        let stacks = HashMap::from([(11, vec![0x1])]);
        let samples = assemble_counted(
            [(at(6, 2), 1), (at(5, 1), 1), (at(6, 4), 1), (at(6, 3), 1)],
            &stacks,
            |_| Some((ProfileKind::Cpu, 10)),
        );
        let drained = Drained {
            samples,
            stats: KindStats::new(),
        };
        assert_eq!(drained.newest_images(), vec![(5, 1), (6, 4)]);
    }

    #[test]
    fn counts_of_each_kind_get_its_kind_and_period() {
        let stacks = HashMap::from([(11, vec![0x1])]);
        let fault = KernelKey {
            kind: kernel_kind::PAGE_FAULTS,
            ..key(5, 11, 0)
        };
        let unknown = KernelKey {
            kind: 77,
            ..key(6, 11, 0)
        };
        let samples = assemble_counted(
            [(key(5, 11, 0), 2), (fault, 3), (unknown, 1)],
            &stacks,
            |kind| match kind {
                kernel_kind::CPU => Some((ProfileKind::Cpu, 10)),
                kernel_kind::PAGE_FAULTS => Some((ProfileKind::PageFaults, 1000)),
                _ => None,
            },
        );
        assert_eq!(samples.len(), 2, "an unknown kind is left out");
        assert_eq!(samples[0].key.kind, ProfileKind::Cpu);
        assert_eq!(samples[0].values, vec![2, 20]);
        assert_eq!(samples[1].key.kind, ProfileKind::PageFaults);
        assert_eq!(samples[1].values, vec![3, 3000], "samples and faults");
    }

    #[test]
    fn stop_marks_are_decoded_once() {
        assert_eq!(
            split_stop(vec![1, 2, TRUNCATED_MARK]),
            (vec![1, 2], Some(UnwindStop::Truncated))
        );
        for stop in UnwindStop::EARLY {
            let mark = stop.mark().unwrap();
            assert_eq!(split_stop(vec![1, mark]), (vec![1], Some(stop)));
        }
        assert_eq!(split_stop(vec![1, 2]), (vec![1, 2], None));
        assert_eq!(split_stop(vec![]), (vec![], None));
    }

    #[test]
    fn python_frames_follow_the_mark() {
        assert_eq!(split_python(vec![1, 2]), (vec![1, 2], vec![]));
        assert_eq!(
            split_python(vec![1, 2, PYTHON_MARK, 7, 8]),
            (vec![1, 2], vec![7, 8])
        );
        assert_eq!(split_python(vec![PYTHON_MARK, 7]), (vec![], vec![7]));
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
