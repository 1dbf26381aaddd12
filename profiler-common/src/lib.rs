//! Plain-old-data types shared by hostprof's eBPF program and its userspace.
//!
//! Everything here is `#[repr(C)]`, has no padding and no pointers, so the
//! kernel side can write it into BPF maps and userspace can read it back
//! byte for byte. Names of maps are shared too, so the two sides cannot drift.
#![no_std]

/// Deepest stack either side records (the kernel's `PERF_MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: usize = 127;

/// Length of a task's `comm` (the kernel's `TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Number of map sets the program alternates between (see [`Config::active_set`]).
pub const MAP_SETS: u32 = 2;

/// Names of the BPF maps and program, as they appear in the object file.
pub mod names {
    /// The perf-event program.
    pub const PROGRAM: &str = "sample_cpu";
    /// [`super::Config`] array, one entry.
    pub const CONFIG: &str = "CONFIG";
    /// Per-CPU [`super::Stat`] counters.
    pub const STATS: &str = "STATS";
    /// Tgids the userspace asked to profile (only read when
    /// [`super::Config::FILTER_PIDS`] is set).
    pub const PID_FILTER: &str = "PID_FILTER";
    /// Tgids already announced on [`NEW_PROCESSES`].
    pub const KNOWN_PROCESSES: &str = "KNOWN_PROCESSES";
    /// Ring buffer of [`super::NewProcess`] events.
    pub const NEW_PROCESSES: &str = "NEW_PROCESSES";
    /// Per-set sample counts, keyed by [`super::SampleKey`].
    pub const COUNTS: [&str; 2] = ["COUNTS_0", "COUNTS_1"];
    /// Per-set stacks, keyed by [`super::StackHash`], valued [`super::Stack`].
    pub const STACKS: [&str; 2] = ["STACKS_0", "STACKS_1"];
}

/// Runtime configuration written by userspace into the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The map set (index into [`names::COUNTS`] / [`names::STACKS`]) that
    /// samples are written to; userspace flips it to drain the other set.
    pub active_set: u32,
    /// Bit set of `Config::*` flags.
    pub flags: u32,
}

impl Config {
    /// Only record processes whose tgid is in `PID_FILTER`.
    pub const FILTER_PIDS: u32 = 1 << 0;
    /// Drop samples of the idle task (pid 0).
    pub const SKIP_IDLE: u32 = 1 << 1;
}

/// 64-bit hash of a stack's frames; `0` means "no stack".
pub type StackHash = u64;

/// Key of the `COUNTS_*` maps: who was running and where.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleKey {
    /// Process id (the kernel's tgid); 0 for the idle task.
    pub tgid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// Hash of the user stack in the set's `STACKS` map, 0 when none.
    pub user_stack: StackHash,
    /// Hash of the kernel stack in the set's `STACKS` map, 0 when none.
    pub kernel_stack: StackHash,
    /// The thread's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// Frames of one stack, innermost first, zero-filled after the last frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stack {
    /// Instruction pointers; the first zero ends the stack.
    pub frames: [u64; MAX_STACK_DEPTH],
}

impl Stack {
    /// The recorded frames, without the zero padding.
    pub fn frames(&self) -> &[u64] {
        let len = self
            .frames
            .iter()
            .position(|&ip| ip == 0)
            .unwrap_or(MAX_STACK_DEPTH);
        &self.frames[..len]
    }
}

/// Event sent on `NEW_PROCESSES` the first time a tgid is sampled, so
/// userspace can snapshot its memory map while the process still exists.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewProcess {
    /// Process id (tgid).
    pub tgid: u32,
}

/// Indices of the per-CPU `STATS` counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Program invocations.
    Invocations = 0,
    /// Samples counted into a `COUNTS_*` map.
    Recorded,
    /// Samples skipped on purpose (pid filter, `--no-idle`).
    Filtered,
    /// Samples lost because the active `COUNTS_*` map was full.
    DroppedCountsFull,
    /// Samples lost because the `CONFIG` map could not be read.
    DroppedNoConfig,
    /// User stack could not be read (`bpf_get_stack` error other than no user context).
    UserStackError,
    /// Kernel stack could not be read.
    KernelStackError,
    /// A stack was read but the active `STACKS_*` map was full.
    StackMapFull,
    /// New-process events lost because the ring buffer was full.
    NewProcessLost,
}

impl Stat {
    /// Number of counters (the `STATS` array's size).
    pub const COUNT: u32 = 9;

    /// Every counter, in index order.
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::Invocations,
        Stat::Recorded,
        Stat::Filtered,
        Stat::DroppedCountsFull,
        Stat::DroppedNoConfig,
        Stat::UserStackError,
        Stat::KernelStackError,
        Stat::StackMapFull,
        Stat::NewProcessLost,
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all types are `#[repr(C)]`, `Copy`, contain only integers and
    // integer arrays, and have no padding (checked by the size tests below).
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SampleKey {}
    unsafe impl aya::Pod for super::Stack {}
    unsafe impl aya::Pod for super::NewProcess {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<Config>(), 8);
        assert_eq!(size_of::<SampleKey>(), 4 + 4 + 8 + 8 + COMM_LEN);
        assert_eq!(size_of::<Stack>(), 8 * MAX_STACK_DEPTH);
        assert_eq!(size_of::<NewProcess>(), 4);
    }

    #[test]
    fn stack_frames_stop_at_first_zero() {
        let mut stack = Stack {
            frames: [0; MAX_STACK_DEPTH],
        };
        assert!(stack.frames().is_empty());
        stack.frames[0] = 0x10;
        stack.frames[1] = 0x20;
        assert_eq!(stack.frames(), &[0x10, 0x20]);
        stack.frames = [7; MAX_STACK_DEPTH];
        assert_eq!(stack.frames().len(), MAX_STACK_DEPTH);
    }

    #[test]
    fn stat_indices_match_all() {
        for (i, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(*stat as usize, i);
        }
    }
}
