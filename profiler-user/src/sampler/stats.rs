//! What the kernel programs counted besides samples: losses, filtered
//! samples and how user stacks were unwound. Every number is exact (read
//! from per-CPU counters, see [`super::drain::StatCounters`]).

use profiler_common::UnwindStop;

/// Why samples or frames were lost, and how many; all numbers are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Samples counted by the kernel program.
    pub recorded: u64,
    /// Samples skipped on purpose (pid filter, idle excluded).
    pub filtered: u64,
    /// Samples lost in the kernel (a full map or unreadable config).
    pub dropped: u64,
    /// Samples whose user stack could not be read.
    pub user_stack_errors: u64,
    /// Samples whose kernel stack could not be read.
    pub kernel_stack_errors: u64,
    /// Stacks the kernel could not store (map full, or no memory for the
    /// entry in interrupt context); the sample is kept without that stack.
    pub stacks_lost: u64,
    /// New-process notifications lost (their processes may symbolize less well).
    pub process_events_lost: u64,
    /// Waits the kernel measured, kept or not: off-CPU intervals, or
    /// kernel-lock contentions (0 for the CPU kind); `recorded` of them
    /// were kept and unwound.
    pub intervals: u64,
    /// Their total time in nanoseconds: the off-CPU profile's
    /// `off_cpu/nanoseconds` total estimates it (the locks profile's
    /// `delay/nanoseconds` adds the user-space locks' waits).
    pub interval_ns: u64,
    /// How user stacks were unwound.
    pub unwind: UnwindCounters,
    /// The file mappings of sampled user frames the kernel recorded.
    pub files: FileCounters,
    /// Samples whose leaf user frame resolved to no file, by reason
    /// (counted when the window is symbolized).
    pub unresolved: UnresolvedLeaves,
    /// Samples with a trace link, and those whose link was dropped.
    pub links: LinkCounters,
    /// What the memory profile's probes saw (all zero for other kinds).
    pub memory: MemoryCounters,
}

/// What the memory profile's probes saw, beside the sampled allocations
/// (`recorded`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryCounters {
    /// Allocation calls in the probed processes.
    pub calls: u64,
    /// The bytes they asked for.
    pub bytes: u64,
    /// Sampled allocations not tracked as live: the kernel's table of live
    /// allocations was full (`--memory-max-live`). They count in
    /// `alloc_*`, never in `inuse_*`.
    pub untracked: u64,
    /// Frees of tracked allocations that overflowed the event ring and
    /// came through the overflow map.
    pub frees_deferred: u64,
    /// Frees of tracked allocations lost (ring and overflow map full):
    /// `inuse_*` may still count that many allocations.
    pub frees_lost: u64,
    /// Forks of probed processes not followed (the event ring was full):
    /// the child inherits nothing and is probed at the next drain.
    pub forks_lost: u64,
}

impl MemoryCounters {
    /// Adds every counter of `other` to `self`.
    pub fn add(&mut self, other: &MemoryCounters) {
        self.calls += other.calls;
        self.bytes += other.bytes;
        self.untracked += other.untracked;
        self.frees_deferred += other.frees_deferred;
        self.frees_lost += other.frees_lost;
        self.forks_lost += other.forks_lost;
    }
}

/// Samples linked to a trace and span (counted as samples are aggregated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkCounters {
    /// Samples that carry a link.
    pub linked: u64,
    /// Samples that ran in a span but whose link was dropped: their
    /// process already had the most distinct links a window keeps.
    pub dropped: u64,
}

/// What the kernel's files program did (see the eBPF side's `files`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileCounters {
    /// File mappings sent to userspace (once per process image and mapping).
    pub recorded: u64,
    /// Lost to a full ring buffer (sent again at a later sample), or
    /// samples not walked because the kernel's per-process state was full.
    pub lost: u64,
    /// Frames whose mapping could not be looked up.
    pub lookup_failed: u64,
}

/// Samples whose leaf user frame resolved to no file, by why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnresolvedLeaves {
    /// The process exited before its maps were read and the kernel
    /// recorded no file for the frame.
    pub process_gone: u64,
    /// Only another image of the process (before or after an `exec`) was
    /// snapshotted, and the kernel recorded no file for the frame.
    pub other_image: u64,
    /// The kernel recorded the file but no process mapping it was read
    /// while alive, so hostprof never opened it.
    pub file_not_open: u64,
    /// In no file mapping: JIT or other anonymous code without a perf map.
    pub no_mapping: u64,
}

impl UnresolvedLeaves {
    /// Adds every counter of `other` to `self`.
    pub fn add(&mut self, other: &UnresolvedLeaves) {
        self.process_gone += other.process_gone;
        self.other_image += other.other_image;
        self.file_not_open += other.file_not_open;
        self.no_mapping += other.no_mapping;
    }

    /// All of them.
    pub fn total(&self) -> u64 {
        self.process_gone + self.other_image + self.file_not_open + self.no_mapping
    }
}

/// What the kernel's table unwinder did: how many samples it unwound and
/// why each unwind ended (the stop counters include the unwinds of
/// processes without tables yet, which step with frame pointers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnwindCounters {
    /// Samples whose user stack was unwound with tables.
    pub unwound: u64,
    /// Samples of processes without tables (yet), unwound with frame pointers.
    pub no_tables: u64,
    /// Frames stepped with frame pointers inside table unwinds of
    /// processes with tables (code without tables, gaps, or rules the
    /// tables could not encode).
    pub frame_pointer_steps: u64,
    /// Unwinds that reached a frame its row marks outermost (`_start`,
    /// a thread's entry), a planted return (makecontext), or a zero
    /// return address rows alone found: whole stacks.
    pub ended: u64,
    /// Unwinds that reached a zero frame pointer, the ABI's outermost
    /// mark: whole stacks.
    pub frame_pointer_ended: u64,
    /// Unwinds stopped by unreadable user memory.
    pub read_errors: u64,
    /// Unwinds stopped where neither a row nor a frame pointer applied.
    pub no_rule: u64,
    /// Unwinds stopped by a frame that did not move up the stack.
    pub no_progress: u64,
    /// Unwinds stopped by a zero return address after a frame-pointer
    /// step, or from a signal frame.
    pub zero_return: u64,
    /// Unwinds stopped in a file whose table was still being built.
    pub tables_pending: u64,
    /// Unwinds cut at the depth limit (marked `[truncated]` in the profile).
    pub truncated: u64,
    /// Samples of Python processes whose Python frames were walked.
    pub python_stacks: u64,
    /// Samples of Python processes without Python frames (a thread that
    /// runs no Python code, or frames that could not be read).
    pub python_no_frames: u64,
    /// Python stacks cut at the frame limit.
    pub python_truncated: u64,
}

impl UnwindCounters {
    /// The unwinds that ended for `stop`.
    pub fn stops(&self, stop: UnwindStop) -> u64 {
        match stop {
            UnwindStop::Running => 0,
            UnwindStop::End => self.ended,
            UnwindStop::FramePointerEnd => self.frame_pointer_ended,
            UnwindStop::ReadError => self.read_errors,
            UnwindStop::NoRule => self.no_rule,
            UnwindStop::NoProgress => self.no_progress,
            UnwindStop::ZeroReturn => self.zero_return,
            UnwindStop::TablesPending => self.tables_pending,
            UnwindStop::Truncated => self.truncated,
        }
    }

    /// Unwinds that stopped before the outermost frame other than at the
    /// depth limit: their stacks end in an `[incomplete: …]` frame.
    pub fn stopped_early(&self) -> u64 {
        UnwindStop::EARLY
            .into_iter()
            .filter(|&stop| stop != UnwindStop::Truncated)
            .map(|stop| self.stops(stop))
            .sum()
    }

    /// Adds every counter of `other` to `self`.
    pub fn add(&mut self, other: &UnwindCounters) {
        self.unwound += other.unwound;
        self.no_tables += other.no_tables;
        self.frame_pointer_steps += other.frame_pointer_steps;
        self.ended += other.ended;
        self.frame_pointer_ended += other.frame_pointer_ended;
        self.read_errors += other.read_errors;
        self.no_rule += other.no_rule;
        self.no_progress += other.no_progress;
        self.zero_return += other.zero_return;
        self.tables_pending += other.tables_pending;
        self.truncated += other.truncated;
        self.python_stacks += other.python_stacks;
        self.python_no_frames += other.python_no_frames;
        self.python_truncated += other.python_truncated;
    }
}

impl CaptureStats {
    /// Adds every counter of `other` to `self`.
    pub fn add(&mut self, other: &CaptureStats) {
        self.recorded += other.recorded;
        self.filtered += other.filtered;
        self.dropped += other.dropped;
        self.user_stack_errors += other.user_stack_errors;
        self.kernel_stack_errors += other.kernel_stack_errors;
        self.stacks_lost += other.stacks_lost;
        self.process_events_lost += other.process_events_lost;
        self.intervals += other.intervals;
        self.interval_ns += other.interval_ns;
        self.unwind.add(&other.unwind);
        self.files.recorded += other.files.recorded;
        self.files.lost += other.files.lost;
        self.files.lookup_failed += other.files.lookup_failed;
        self.unresolved.add(&other.unresolved);
        self.links.linked += other.links.linked;
        self.links.dropped += other.links.dropped;
        self.memory.add(&other.memory);
    }
}
