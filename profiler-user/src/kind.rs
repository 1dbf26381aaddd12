//! Profile kinds: what a profile measures and the values its samples carry.
//!
//! A kind is a kernel program, a decoder that turns what the program
//! recorded into [`crate::sampler::RawSample`]s, and the value types below.
//! Everything after the sampler (aggregation, symbolization, the
//! [`crate::profile::Profile`] model and every encoder) is generic over
//! kinds: it reads the value types from the profile, never assumes them.
//!
//! By convention a kind's first value type is always a count of events
//! (samples, blocking events, allocations…), so "how many" is `values[0]`
//! for every kind.
//!
//! Adding a kind: its programs in `profiler-ebpf` (a module of their own,
//! sharing `stack.rs` and `unwind.rs`), its maps and counters in
//! `profiler-common`, a variant here (every `match` below), a decoder in
//! `sampler` that turns its drained maps into samples, its period in
//! `profiler::Pipeline::new` and what the kernel needs in `system_info`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value's type and unit, as pprof and OTLP spell them (`cpu`,
/// `nanoseconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueType {
    /// What is measured, e.g. `samples` or `cpu`.
    pub name: &'static str,
    /// Its unit, e.g. `count` or `nanoseconds`.
    pub unit: &'static str,
}

impl ValueType {
    /// A value type named `name` measured in `unit`.
    pub const fn new(name: &'static str, unit: &'static str) -> Self {
        Self { name, unit }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.name, self.unit)
    }
}

/// A sample label: a key and a string value (e.g. an off-CPU thread state),
/// written as a pprof string label and an OTLP sample attribute.
pub type Label = (&'static str, String);

/// One event of a kind that records when each happened (the waits): its
/// time and its values, one per sample type of the kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Event {
    /// When it happened, in nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
    /// One value per sample type.
    pub values: Vec<u64>,
}

/// The label of an off-CPU sample naming the thread's state as it left
/// the CPU: `sleeping`, `disk`, `preempted`, `stopped` or `other`.
pub const THREAD_STATE: &str = "thread.state";

/// What a profile measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProfileKind {
    /// Where the CPUs spend their time: a sample every 1/frequency seconds
    /// of CPU time, on every CPU.
    Cpu,
    /// Where threads wait off the CPU (sleeping, blocked on I/O, locks or
    /// the network, preempted), weighted by how long: intervals from
    /// switch-out to switch-in, sampled by duration.
    OffCpu,
    /// Where threads wait for locks, weighted by how long: kernel locks
    /// from `contention_begin`/`contention_end`, user-space locks from the
    /// off-CPU waits whose stacks acquire one ([`crate::locks`]).
    Locks,
    /// Where resident memory grows: a sample every N page faults on each
    /// CPU (the software `page-faults` event), in the faulting thread,
    /// whole-host and without trapping the allocator.
    PageFaults,
    /// Who allocates heap memory and what is still allocated: the
    /// allocator's calls in selected processes, sampled by bytes (a
    /// Poisson process, mean [`crate::profiler::MemorySampleBytes`]), and
    /// the sampled allocations still live as each window ends.
    Memory,
}

/// Samples of the CPU profile: the sample count, and the CPU time they
/// stand for (count × sampling period), as Go's CPU profiles name them.
const CPU_VALUES: &[ValueType] = &[
    ValueType::new("samples", "count"),
    ValueType::new("cpu", "nanoseconds"),
];

/// Samples of the off-CPU profile, as Go's block profile names its pair:
/// the blocking events and the time blocked, both weighted totals (each
/// kept interval stands for `max(1, P/d)` events and `max(d, P)` ns).
const OFF_CPU_VALUES: &[ValueType] = &[
    ValueType::new("events", "count"),
    ValueType::new("off_cpu", "nanoseconds"),
];

/// Samples of the locks profile, as Go's mutex profile names its pair:
/// the contentions and the delay they caused, weighted totals like
/// off-CPU's.
const LOCK_VALUES: &[ValueType] = &[
    ValueType::new("contentions", "count"),
    ValueType::new("delay", "nanoseconds"),
];

/// Samples of the page-fault profile: the sample count, and the faults
/// they stand for (count × the period of N faults), like the CPU pair.
const PAGE_FAULT_VALUES: &[ValueType] = &[
    ValueType::new("samples", "count"),
    ValueType::new("page_faults", "count"),
];

/// Samples of the memory profile, as Go's heap profiles name them: the
/// allocations made in the window and their bytes, and those still live
/// as it ends (weighted totals: each sampled allocation of `s` bytes
/// stands for `1/(1-exp(-s/R))` of them).
const MEMORY_VALUES: &[ValueType] = &[
    ValueType::new("alloc_objects", "count"),
    ValueType::new("alloc_space", "bytes"),
    ValueType::new("inuse_objects", "count"),
    ValueType::new("inuse_space", "bytes"),
];

impl ProfileKind {
    /// Every kind, in the order outputs list them.
    pub const ALL: &'static [ProfileKind] = &[
        ProfileKind::Cpu,
        ProfileKind::OffCpu,
        ProfileKind::Locks,
        ProfileKind::PageFaults,
        ProfileKind::Memory,
    ];

    /// The kind's name on the command line, in config files and in file
    /// names (`cpu`, `off-cpu`, `locks`, `page-faults`, `memory`).
    pub fn name(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "cpu",
            ProfileKind::OffCpu => "off-cpu",
            ProfileKind::Locks => "locks",
            ProfileKind::PageFaults => "page-faults",
            ProfileKind::Memory => "memory",
        }
    }

    /// The values each sample carries, in order; the first is a count.
    pub fn sample_types(self) -> &'static [ValueType] {
        match self {
            ProfileKind::Cpu => CPU_VALUES,
            ProfileKind::OffCpu => OFF_CPU_VALUES,
            ProfileKind::Locks => LOCK_VALUES,
            ProfileKind::PageFaults => PAGE_FAULT_VALUES,
            ProfileKind::Memory => MEMORY_VALUES,
        }
    }

    /// Index into [`Self::sample_types`] of the value viewers show first.
    pub fn default_sample_type(self) -> usize {
        match self {
            ProfileKind::Cpu
            | ProfileKind::OffCpu
            | ProfileKind::Locks
            | ProfileKind::PageFaults => 1,
            // `inuse_space`, as Go's heap profiles.
            ProfileKind::Memory => 3,
        }
    }

    /// Index into [`Self::sample_types`] of the value flamegraphs, folded
    /// stacks and the terminal summary weigh frames by (CPU: the sample
    /// count, as `perf`'s folded output, and page faults likewise;
    /// off-CPU: the time blocked; locks: the delay; memory: the bytes
    /// allocated, as what is still in use may be nothing).
    pub fn weight(self) -> usize {
        match self {
            ProfileKind::Cpu | ProfileKind::PageFaults => 0,
            ProfileKind::OffCpu | ProfileKind::Locks | ProfileKind::Memory => 1,
        }
    }

    /// What one unit of the sampling period measures.
    pub fn period_type(self) -> ValueType {
        match self {
            ProfileKind::Cpu => ValueType::new("cpu", "nanoseconds"),
            // Sampled by duration with an adaptive period: each sample
            // stands for one event of its weight (Go's block profiles say
            // the same with `contentions/count`, period 1).
            ProfileKind::OffCpu => ValueType::new("events", "count"),
            ProfileKind::Locks => ValueType::new("contentions", "count"),
            // One sample every N faults.
            ProfileKind::PageFaults => ValueType::new("page_faults", "count"),
            // A sample every R bytes on average, as Go's heap profiles.
            ProfileKind::Memory => ValueType::new("space", "bytes"),
        }
    }

    /// What the kind's flamegraph is titled.
    pub fn title(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "hostprof CPU flamegraph",
            ProfileKind::OffCpu => "hostprof off-CPU flamegraph (time blocked)",
            ProfileKind::Locks => "hostprof lock contention flamegraph (delay)",
            ProfileKind::PageFaults => "hostprof page-fault flamegraph",
            ProfileKind::Memory => "hostprof allocation flamegraph (bytes allocated)",
        }
    }

    /// Whether the kind measures waits (off-CPU, locks): samples weighted
    /// by duration, with measured and kept totals ([`crate::summary`]
    /// prints them), rather than one sample per period.
    pub fn measures_waits(self) -> bool {
        match self {
            ProfileKind::Cpu | ProfileKind::PageFaults | ProfileKind::Memory => false,
            ProfileKind::OffCpu | ProfileKind::Locks => true,
        }
    }

    /// A label the kind derives from a sample's symbolized kernel frames
    /// (function names, innermost first) and its own labels, once they are
    /// symbolized: the off-CPU wait class ([`crate::wait`]).
    pub fn kernel_frames_label<'a>(
        self,
        labels: &[Label],
        kernel_frames: impl IntoIterator<Item = &'a str>,
    ) -> Option<Label> {
        match self {
            ProfileKind::Cpu
            | ProfileKind::Locks
            | ProfileKind::PageFaults
            | ProfileKind::Memory => None,
            ProfileKind::OffCpu => {
                let state = labels
                    .iter()
                    .find(|(key, _)| *key == THREAD_STATE)
                    .map(|(_, value)| value.as_str());
                Some((
                    crate::wait::WAIT_CLASS,
                    crate::wait::wait_class(state, kernel_frames).to_owned(),
                ))
            }
        }
    }

    /// Whether [`Self::kernel_frames_label`] labels this kind's samples.
    pub fn labels_kernel_frames(self) -> bool {
        match self {
            ProfileKind::Cpu
            | ProfileKind::Locks
            | ProfileKind::PageFaults
            | ProfileKind::Memory => false,
            ProfileKind::OffCpu => true,
        }
    }
}

impl fmt::Display for ProfileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A profile kind name that hostprof does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a profile kind; the kinds are: {}", known_kinds())]
pub struct UnknownKind {
    /// What was given.
    pub given: String,
}

fn known_kinds() -> String {
    ProfileKind::ALL
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for ProfileKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        ProfileKind::ALL
            .iter()
            .copied()
            .find(|k| k.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownKind {
                given: s.to_owned(),
            })
    }
}

impl Serialize for ProfileKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ProfileKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_kinds() {
        for &kind in ProfileKind::ALL {
            assert_eq!(kind.name().parse::<ProfileKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.name());
        }
        assert_eq!(" CPU ".parse::<ProfileKind>(), Ok(ProfileKind::Cpu));
        assert_eq!("Off-CPU".parse::<ProfileKind>(), Ok(ProfileKind::OffCpu));
        let err = "heap".parse::<ProfileKind>().unwrap_err().to_string();
        assert_eq!(
            err,
            "\"heap\" is not a profile kind; the kinds are: cpu, off-cpu, locks, page-faults, memory"
        );
    }

    #[test]
    fn every_kind_starts_with_a_count_and_has_a_valid_default() {
        for &kind in ProfileKind::ALL {
            let types = kind.sample_types();
            assert_eq!(types[0].unit, "count", "{kind}");
            assert!(kind.default_sample_type() < types.len(), "{kind}");
            assert!(kind.weight() < types.len(), "{kind}");
        }
        assert_eq!(
            ProfileKind::Cpu.sample_types()[ProfileKind::Cpu.default_sample_type()],
            ProfileKind::Cpu.period_type()
        );
        let off = ProfileKind::OffCpu;
        assert_eq!(
            off.sample_types()[off.default_sample_type()].to_string(),
            "off_cpu/nanoseconds"
        );
    }

    #[test]
    fn off_cpu_samples_get_a_wait_class_and_cpu_samples_none() {
        let frames = ["finish_task_switch.isra.0", "__schedule", "pipe_read"];
        assert_eq!(ProfileKind::Cpu.kernel_frames_label(&[], frames), None);
        let sleeping = [("thread.state", "sleeping".to_owned())];
        assert_eq!(
            ProfileKind::OffCpu.kernel_frames_label(&sleeping, frames),
            Some(("wait.class", "pipe".to_owned()))
        );
        let preempted = [("thread.state", "preempted".to_owned())];
        assert_eq!(
            ProfileKind::OffCpu.kernel_frames_label(&preempted, frames),
            Some(("wait.class", "runqueue".to_owned()))
        );
    }
}
