//! The symbolized, aggregated profile: the one type every encoder reads.
//!
//! Tables are interned (each function, mapping and location appears once)
//! and referenced by typed ids, so encoders (pprof, folded stacks, OTLP) only
//! translate; they never deduplicate or symbolize. Build one with
//! [`ProfileBuilder`].

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use crate::container::ContainerRef;
use crate::k8s::PodContainer;
use crate::kind::{Event, Label, ProfileKind, ValueType};
pub use crate::sampler::stats::{
    CaptureStats, FileCounters, LinkCounters, UnresolvedLeaves, UnwindCounters,
};
use crate::trace_link::TraceLink;
use crate::FastMap;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u32);

        impl $name {
            /// Position of the entry in its table.
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }
    };
}

id_type!(
    /// Index into [`Profile::processes`].
    ProcessId
);
id_type!(
    /// Index into [`Profile::mappings`].
    MappingId
);
id_type!(
    /// Index into [`Profile::functions`].
    FunctionId
);
id_type!(
    /// Index into [`Profile::locations`].
    LocationId
);

/// A process that was sampled.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Process {
    /// Process id (tgid); 0 is the kernel's idle task.
    pub pid: u32,
    /// Short executable name (`comm` of the main thread, or the file name of `exe`).
    pub executable_name: String,
    /// Full path of the executable, when it could be read.
    pub executable_path: Option<PathBuf>,
    /// The container it runs in, if any.
    pub container: Option<ContainerRef>,
    /// Kubernetes names of that container, when the API server told.
    pub pod: Option<Arc<PodContainer>>,
}

/// Whether a mapping or frame belongs to the kernel or to user space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Kernel code (vmlinux or a module).
    Kernel,
    /// Native user-space code.
    Native,
    /// User-space code written in Rust.
    Rust,
    /// JavaScript compiled by V8 (Node.js), named by its perf map.
    V8js,
    /// Java compiled by the JVM, named by its perf map.
    Jvm,
    /// .NET code compiled by the CLR, named by its perf map.
    Dotnet,
    /// Python code: frames of CPython's own frame chain, walked in the
    /// kernel (3.11 to 3.13), or `-X perf` trampolines named by a perf map.
    Cpython,
}

/// A file (or the kernel) mapped into memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// First address covered.
    pub start: u64,
    /// One past the last address covered.
    pub limit: u64,
    /// Offset in the file of `start`.
    pub file_offset: u64,
    /// Path of the mapped file as the process saw it, or `[kernel.kallsyms]`.
    pub path: String,
    /// GNU build id as lowercase hex, when the file has one.
    pub build_id: Option<String>,
    /// Kernel or user space.
    pub kind: FrameKind,
}

/// A function (or a placeholder for code that could not be symbolized).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Function {
    /// Human-readable (demangled) name.
    pub name: String,
    /// Name as stored in the binary (mangled), when it differs from `name`.
    pub system_name: Option<String>,
    /// Source file, when debug info has it.
    pub filename: Option<String>,
}

/// One source line of a location; a location has several when calls were inlined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Line {
    /// The function the line belongs to.
    pub function: FunctionId,
    /// Line number, when debug info has it.
    pub line: Option<u32>,
}

/// One instruction address of a stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The mapping the address falls in, when known.
    pub mapping: Option<MappingId>,
    /// The address as seen by the process (for callers: return address - 1).
    pub address: u64,
    /// Lines at the address, innermost (most deeply inlined) first; never empty.
    pub lines: Vec<Line>,
    /// Kernel or user space.
    pub kind: FrameKind,
}

/// Samples that share a thread, a stack and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The sampled process.
    pub process: ProcessId,
    /// Thread id.
    pub tid: u32,
    /// Thread name (`comm`).
    pub thread_name: String,
    /// Frames, leaf first: kernel frames (if any) then user frames.
    pub stack: Vec<LocationId>,
    /// Labels of the kind (e.g. a thread state); empty for CPU samples.
    pub labels: Vec<Label>,
    /// The trace and span the samples ran in, when known.
    pub link: Option<TraceLink>,
    /// One value per [`Profile::sample_types`] entry; `values[0]` is the count.
    pub values: Vec<u64>,
    /// Each event, by time, for kinds that record them (their values add
    /// up to `values`); empty otherwise.
    pub events: Vec<Event>,
}

impl Sample {
    /// The number of samples or events (the first value).
    pub fn count(&self) -> u64 {
        self.values.first().copied().unwrap_or(0)
    }
}

/// A finished, symbolized profile of one kind.
#[derive(Clone, Debug)]
pub struct Profile {
    /// What the profile measures.
    pub kind: ProfileKind,
    /// The values each sample carries, in order (`samples/count`,
    /// `cpu/nanoseconds`, …); the first is a count.
    pub sample_types: Vec<ValueType>,
    /// Index into `sample_types` of the value viewers show first.
    pub default_sample_type: usize,
    /// What the sampling period measures.
    pub period_type: ValueType,
    /// How much of `period_type` one sample stands for (CPU: `1e9 /
    /// frequency` ns); 0 when samples are not taken periodically.
    pub period: u64,
    /// When sampling started.
    pub start_time: SystemTime,
    /// How long sampling ran.
    pub duration: Duration,
    /// Sampled processes.
    pub processes: Vec<Process>,
    /// Mapped files.
    pub mappings: Vec<Mapping>,
    /// Functions.
    pub functions: Vec<Function>,
    /// Locations.
    pub locations: Vec<Location>,
    /// Samples, each distinct (process, tid, thread name, stack, labels) once.
    pub samples: Vec<Sample>,
    /// Losses during capture.
    pub stats: CaptureStats,
}

impl Profile {
    /// Total number of samples (or events): the sum of the first values.
    pub fn total_samples(&self) -> u64 {
        self.total(0)
    }

    /// The sum of value `index` over all samples.
    pub fn total(&self, index: usize) -> u64 {
        self.samples.iter().map(|s| s.values[index]).sum()
    }

    /// The process of `id`.
    pub fn process(&self, id: ProcessId) -> &Process {
        &self.processes[id.index()]
    }

    /// The location of `id`.
    pub fn location(&self, id: LocationId) -> &Location {
        &self.locations[id.index()]
    }

    /// The function of `id`.
    pub fn function(&self, id: FunctionId) -> &Function {
        &self.functions[id.index()]
    }

    /// The mapping of `id`.
    pub fn mapping(&self, id: MappingId) -> &Mapping {
        &self.mappings[id.index()]
    }
}

/// An append-only table that hands out one id per distinct value.
#[derive(Debug)]
struct Interner<T> {
    items: Vec<T>,
    ids: FastMap<T, u32>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            ids: FastMap::default(),
        }
    }
}

impl<T: Clone + Eq + std::hash::Hash> Interner<T> {
    fn intern(&mut self, value: T) -> u32 {
        if let Some(&id) = self.ids.get(&value) {
            return id;
        }
        let id = u32::try_from(self.items.len()).expect("more than 2^32 interned values");
        self.items.push(value.clone());
        self.ids.insert(value, id);
        id
    }
}

/// Key under which samples merge.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SampleKey {
    process: ProcessId,
    tid: u32,
    thread_name: String,
    stack: Vec<LocationId>,
    labels: Vec<Label>,
    link: Option<TraceLink>,
}

/// Values and events of merged samples.
#[derive(Debug, Default)]
struct Merged {
    values: Vec<u64>,
    events: Vec<Event>,
}

/// One sample for [`ProfileBuilder::add_sample`].
#[derive(Clone, Debug)]
pub struct NewSample<'a> {
    /// The sampled process.
    pub process: ProcessId,
    /// Thread id.
    pub tid: u32,
    /// Thread name.
    pub thread_name: &'a str,
    /// Frames, leaf first.
    pub stack: Vec<LocationId>,
    /// Labels of the kind.
    pub labels: Vec<Label>,
    /// The trace and span the samples ran in.
    pub link: Option<TraceLink>,
    /// One value per sample type of the kind.
    pub values: &'a [u64],
    /// Its events, if the kind records them.
    pub events: &'a [Event],
}

/// Builds a [`Profile`], interning tables and merging equal samples.
#[derive(Debug)]
pub struct ProfileBuilder {
    kind: ProfileKind,
    processes: Interner<Process>,
    mappings: Interner<Mapping>,
    functions: Interner<Function>,
    locations: Interner<Location>,
    samples: FastMap<SampleKey, Merged>,
    stats: CaptureStats,
}

impl ProfileBuilder {
    /// An empty builder of a profile of `kind`.
    pub fn new(kind: ProfileKind) -> Self {
        Self {
            kind,
            processes: Interner::default(),
            mappings: Interner::default(),
            functions: Interner::default(),
            locations: Interner::default(),
            samples: FastMap::default(),
            stats: CaptureStats::default(),
        }
    }

    /// Id of `process`, adding it when new.
    pub fn process(&mut self, process: Process) -> ProcessId {
        ProcessId(self.processes.intern(process))
    }

    /// Id of `mapping`, adding it when new.
    pub fn mapping(&mut self, mapping: Mapping) -> MappingId {
        MappingId(self.mappings.intern(mapping))
    }

    /// Id of `function`, adding it when new.
    pub fn function(&mut self, function: Function) -> FunctionId {
        FunctionId(self.functions.intern(function))
    }

    /// Id of `location`, adding it when new.
    pub fn location(&mut self, location: Location) -> LocationId {
        debug_assert!(!location.lines.is_empty(), "a location needs a line");
        LocationId(self.locations.intern(location))
    }

    /// Adds samples of `stack` (leaf first) on thread `tid` carrying
    /// `labels`: `values` (one per sample type of the kind) add up with
    /// those of equal samples, `events` are kept.
    pub fn add_sample(&mut self, sample: NewSample<'_>) {
        debug_assert_eq!(sample.values.len(), self.kind.sample_types().len());
        let key = SampleKey {
            process: sample.process,
            tid: sample.tid,
            thread_name: sample.thread_name.to_owned(),
            stack: sample.stack,
            labels: sample.labels,
            link: sample.link,
        };
        let merged = self.samples.entry(key).or_default();
        if merged.values.is_empty() {
            merged.values = sample.values.to_vec();
        } else {
            for (sum, value) in merged.values.iter_mut().zip(sample.values) {
                *sum += value;
            }
        }
        merged.events.extend_from_slice(sample.events);
    }

    /// Adds loss counters.
    pub fn add_stats(&mut self, stats: &CaptureStats) {
        self.stats.add(stats);
    }

    /// The finished profile; one sample stands for `period` of the kind's
    /// period type.
    pub fn build(self, start_time: SystemTime, duration: Duration, period: u64) -> Profile {
        let mut samples: Vec<Sample> = self
            .samples
            .into_iter()
            .map(|(key, mut merged)| {
                merged.events.sort_unstable();
                Sample {
                    process: key.process,
                    tid: key.tid,
                    thread_name: key.thread_name,
                    stack: key.stack,
                    labels: key.labels,
                    link: key.link,
                    values: merged.values,
                    events: merged.events,
                }
            })
            .collect();
        // Deterministic output: heaviest first, then by identity.
        samples.sort_by(|a, b| {
            b.count()
                .cmp(&a.count())
                .then(a.process.cmp(&b.process))
                .then(a.tid.cmp(&b.tid))
                .then(a.stack.cmp(&b.stack))
                .then(a.labels.cmp(&b.labels))
                .then(a.link.cmp(&b.link))
        });
        Profile {
            kind: self.kind,
            sample_types: self.kind.sample_types().to_vec(),
            default_sample_type: self.kind.default_sample_type(),
            period_type: self.kind.period_type(),
            period,
            start_time,
            duration,
            processes: self.processes.items,
            mappings: self.mappings.items,
            functions: self.functions.items,
            locations: self.locations.items,
            samples,
            stats: self.stats,
        }
    }
}

#[cfg(test)]
impl ProfileBuilder {
    /// Test shorthand: a native location at `address` with one line, of
    /// the function `name` (no file, no line number).
    pub(crate) fn named_location(&mut self, name: &str, address: u64) -> LocationId {
        let function = self.function(Function {
            name: name.into(),
            system_name: None,
            filename: None,
        });
        self.location(Location {
            mapping: None,
            address,
            lines: vec![Line {
                function,
                line: None,
            }],
            kind: FrameKind::Native,
        })
    }

    /// Test shorthand: `count` CPU samples of 10 ms each (100 Hz).
    pub(crate) fn add_cpu(
        &mut self,
        process: ProcessId,
        tid: u32,
        thread_name: &str,
        stack: Vec<LocationId>,
        count: u64,
    ) {
        self.add_sample(NewSample {
            process,
            tid,
            thread_name,
            stack,
            labels: Vec::new(),
            link: None,
            values: &[count, count * 10_000_000],
            events: &[],
        });
    }
}

/// Profiles the encoders' tests share, built in one place.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::time::{Duration, SystemTime};

    use super::*;

    /// A process `pid` running `name` on the host (no container).
    pub(crate) fn host_process(pid: u32, name: &str) -> Process {
        Process {
            pid,
            executable_name: name.into(),
            executable_path: None,
            container: None,
            pod: None,
        }
    }

    /// A small profile: one process, a kernel frame over an inlined user frame.
    pub(crate) fn sample_profile() -> Profile {
        let mut b = ProfileBuilder::new(ProfileKind::Cpu);
        let p = b.process(Process {
            pid: 42,
            executable_name: "app".into(),
            executable_path: Some("/usr/bin/app".into()),
            container: None,
            pod: None,
        });
        let m = b.mapping(Mapping {
            start: 0x1000,
            limit: 0x2000,
            file_offset: 0,
            path: "/usr/bin/app".into(),
            build_id: Some("abcd".into()),
            kind: FrameKind::Native,
        });
        let k = b.mapping(Mapping {
            start: 0,
            limit: u64::MAX,
            file_offset: 0,
            path: "[kernel.kallsyms]".into(),
            build_id: None,
            kind: FrameKind::Kernel,
        });
        let mut f = |name: &str, file: Option<&str>| {
            b.function(Function {
                name: name.into(),
                system_name: None,
                filename: file.map(Into::into),
            })
        };
        let (main, hot, inlined, sys) = (
            f("main", Some("app.c")),
            f("hot", Some("app.c")),
            f("helper", Some("app.c")),
            f("do_syscall_64", None),
        );
        let l_main = b.location(Location {
            mapping: Some(m),
            address: 0x1100,
            lines: vec![Line {
                function: main,
                line: Some(10),
            }],
            kind: FrameKind::Native,
        });
        let l_hot = b.location(Location {
            mapping: Some(m),
            address: 0x1200,
            lines: vec![
                Line {
                    function: inlined,
                    line: Some(3),
                },
                Line {
                    function: hot,
                    line: Some(5),
                },
            ],
            kind: FrameKind::Native,
        });
        let l_sys = b.location(Location {
            mapping: Some(k),
            address: 0xffff_ffff_8100_0000,
            lines: vec![Line {
                function: sys,
                line: None,
            }],
            kind: FrameKind::Kernel,
        });
        b.add_cpu(p, 43, "worker", vec![l_hot, l_main], 7);
        b.add_cpu(p, 42, "app", vec![l_sys, l_main], 2);
        b.add_stats(&CaptureStats {
            recorded: 9,
            dropped: 1,
            ..Default::default()
        });
        b.build(
            SystemTime::UNIX_EPOCH + Duration::from_secs(5),
            Duration::from_secs(2),
            10_000_000,
        )
    }

    /// A profile of names a tenant picks: a process (main thread) named
    /// with a newline and a color escape, a symbol holding an escape, a
    /// kernel-looking `;` and a C1 CSI, and a thread name with a newline.
    pub(crate) fn hostile_profile() -> Profile {
        let mut b = ProfileBuilder::new(ProfileKind::Cpu);
        let p = b.process(Process {
            pid: 7,
            executable_name: "evil\n\x1b[31mred".into(),
            executable_path: Some("/tmp/x\x1b[2Jbin".into()),
            container: None,
            pod: None,
        });
        let main = b.named_location("main", 0x10);
        let evil = b.named_location("evil\x1b[31m_fn", 0x20);
        let split = b.named_location("a;b\u{9b}2J\n1 2", 0x30);
        b.add_cpu(p, 7, "evil\n\x1b[31mred", vec![evil, main], 5);
        b.add_cpu(p, 8, "w\r\nx 9", vec![split, main], 3);
        b.build(SystemTime::UNIX_EPOCH, Duration::from_secs(1), 10_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(name: &str) -> Function {
        Function {
            name: name.into(),
            system_name: None,
            filename: None,
        }
    }

    #[test]
    fn interning_and_merging() {
        let mut b = ProfileBuilder::new(ProfileKind::Cpu);
        let p = b.process(fixtures::host_process(7, "app"));
        let f1 = b.function(function("main"));
        let f2 = b.function(function("main"));
        assert_eq!(f1, f2);
        let loc = |b: &mut ProfileBuilder, address| {
            b.location(Location {
                mapping: None,
                address,
                lines: vec![Line {
                    function: f1,
                    line: None,
                }],
                kind: FrameKind::Native,
            })
        };
        let l1 = loc(&mut b, 0x10);
        let l2 = loc(&mut b, 0x10);
        let l3 = loc(&mut b, 0x20);
        assert_eq!(l1, l2);
        assert_ne!(l1, l3);
        let sample = |tid, thread_name, stack, values: &'static [u64]| NewSample {
            process: p,
            tid,
            thread_name,
            stack,
            labels: Vec::new(),
            link: None,
            values,
            events: &[],
        };
        b.add_sample(sample(7, "app", vec![l1, l3], &[2, 20]));
        b.add_sample(sample(7, "app", vec![l1, l3], &[3, 30]));
        b.add_sample(sample(8, "worker", vec![l3], &[1, 10]));
        b.add_sample(NewSample {
            labels: vec![("state", "sleeping".into())],
            link: None,
            ..sample(8, "worker", vec![l3], &[1, 10])
        });
        let profile = b.build(SystemTime::UNIX_EPOCH, Duration::from_secs(1), 10);
        assert_eq!(profile.functions.len(), 1);
        assert_eq!(profile.locations.len(), 2);
        assert_eq!(profile.samples.len(), 3, "labels keep samples apart");
        assert_eq!(profile.samples[0].values, vec![5, 50]);
        assert_eq!(profile.total_samples(), 7);
        assert_eq!(profile.total(1), 70);
        assert_eq!(profile.period, 10);
        assert_eq!(profile.sample_types, ProfileKind::Cpu.sample_types());
        assert_eq!(
            profile.sample_types[profile.default_sample_type].name,
            "cpu"
        );
    }
}
