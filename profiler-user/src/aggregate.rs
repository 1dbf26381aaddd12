//! Merges drained samples and, when asked, turns them into a symbolized
//! [`Profile`].
//!
//! Raw samples are merged by (thread, stacks) as they are drained, which is
//! cheap; symbolization waits until [`Aggregator::finish`], so each distinct
//! address is symbolized once per profile (and once per module file thanks
//! to the symbolizer's cache).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime};

use profiler_common::TRUNCATED_MARK;

use crate::k8s::PodMetadata;
use crate::process::{ModuleId, ProcessTable, Resolved};
use crate::profile::{
    CaptureStats, FrameKind, Function, Line, Location, LocationId, Mapping, MappingId, Process,
    Profile, ProfileBuilder,
};
use crate::sampler::{Drained, RawSample};
use crate::symbolize::{Symbolizer, Symbols};

/// Name the idle task is reported under (as `perf` does).
const IDLE_PROCESS: &str = "swapper";
/// Outermost frame of a stack cut at the unwinder's depth limit.
pub const TRUNCATED_FRAME: &str = "[truncated]";
/// Path of the kernel's pseudo-mapping.
const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ThreadStacks {
    tgid: u32,
    tid: u32,
    comm: String,
    user: Vec<u64>,
    kernel: Vec<u64>,
}

/// Accumulates drained samples until a profile is wanted.
#[derive(Debug, Default)]
pub struct Aggregator {
    samples: HashMap<ThreadStacks, u64>,
    stats: CaptureStats,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one drain's samples and loss counters.
    pub fn ingest(&mut self, drained: Drained) {
        self.stats.add(&drained.stats);
        for RawSample {
            tgid,
            tid,
            comm,
            user_stack,
            kernel_stack,
            count,
        } in drained.samples
        {
            let key = ThreadStacks {
                tgid,
                tid,
                comm,
                user: user_stack,
                kernel: kernel_stack,
            };
            *self.samples.entry(key).or_default() += count;
        }
    }

    /// Samples so far.
    pub fn total_samples(&self) -> u64 {
        self.samples.values().sum()
    }

    /// Distinct (thread, stack) entries so far.
    pub fn stack_count(&self) -> usize {
        self.samples.len()
    }

    /// Distinct processes so far.
    pub fn process_count(&self) -> usize {
        self.samples
            .keys()
            .map(|k| k.tgid)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Loss counters so far.
    pub fn stats(&self) -> CaptureStats {
        self.stats
    }

    /// Symbolizes everything ingested and builds the profile.
    pub fn finish(
        self,
        processes: &mut ProcessTable,
        symbolizer: &mut Symbolizer,
        pods: &PodMetadata,
        start_time: SystemTime,
        duration: Duration,
        frequency_hz: u32,
    ) -> Profile {
        let symbols = SymbolTable::collect(&self.samples, processes, symbolizer);
        let mut builder = ProfileBuilder::new();
        builder.add_stats(&self.stats);
        let kernel_mapping = builder.mapping(Mapping {
            start: 0,
            limit: u64::MAX,
            file_offset: 0,
            path: KERNEL_MAPPING.into(),
            build_id: None,
            kind: FrameKind::Kernel,
        });
        for (key, count) in self.samples {
            let process = builder.process(process_of(processes, pods, key.tgid, &key.comm));
            let mut stack = Vec::with_capacity(key.kernel.len() + key.user.len());
            for addr in caller_adjusted(&key.kernel) {
                stack.push(kernel_location(
                    &mut builder,
                    kernel_mapping,
                    addr,
                    &symbols.kernel[&addr],
                ));
            }
            let (user, truncated) = split_truncated(&key.user);
            for addr in caller_adjusted(user) {
                stack.push(user_location(
                    &mut builder,
                    processes,
                    &symbols,
                    symbols.resolved[&(key.tgid, addr)],
                    addr,
                ));
            }
            if truncated {
                // Outermost: the frames above the depth limit are unknown.
                let lines = lines_for(&mut builder, &None, || TRUNCATED_FRAME.into());
                stack.push(builder.location(Location {
                    mapping: None,
                    address: 0,
                    lines,
                    kind: FrameKind::Native,
                }));
            }
            builder.add_sample(process, key.tid, &key.comm, stack, count);
        }
        builder.build(start_time, duration, frequency_hz)
    }
}

/// Every address of every sample, resolved and symbolized in batches.
struct SymbolTable {
    resolved: HashMap<(u32, u64), Resolved>,
    user: HashMap<(ModuleId, u64), Symbols>,
    kernel: HashMap<u64, Symbols>,
}

impl SymbolTable {
    fn collect(
        samples: &HashMap<ThreadStacks, u64>,
        processes: &mut ProcessTable,
        symbolizer: &mut Symbolizer,
    ) -> Self {
        let mut resolved = HashMap::new();
        let mut offsets: HashMap<ModuleId, BTreeSet<u64>> = HashMap::new();
        let mut kernel_addrs = BTreeSet::new();
        for key in samples.keys() {
            kernel_addrs.extend(caller_adjusted(&key.kernel));
            for addr in caller_adjusted(split_truncated(&key.user).0) {
                let r = *resolved
                    .entry((key.tgid, addr))
                    .or_insert_with(|| processes.resolve(key.tgid, addr));
                if let Resolved::Module {
                    module,
                    file_offset,
                    ..
                } = r
                {
                    offsets.entry(module).or_default().insert(file_offset);
                }
            }
        }

        let mut user = HashMap::new();
        for (module, offsets) in offsets {
            let offsets: Vec<u64> = offsets.into_iter().collect();
            let path = processes.module(module).symbol_path();
            let found = symbolizer.user(module, path, &offsets);
            user.extend(offsets.into_iter().map(|o| (module, o)).zip(found));
        }
        let kernel_addrs: Vec<u64> = kernel_addrs.into_iter().collect();
        let found = symbolizer.kernel(&kernel_addrs);
        let kernel = kernel_addrs.into_iter().zip(found).collect();
        Self {
            resolved,
            user,
            kernel,
        }
    }
}

/// A user stack without its truncation mark, and whether it had one (the
/// kernel cut it at its depth limit).
pub(crate) fn split_truncated(stack: &[u64]) -> (&[u64], bool) {
    match stack.split_last() {
        Some((&TRUNCATED_MARK, rest)) => (rest, true),
        _ => (stack, false),
    }
}

/// Stack addresses as symbolization wants them: the leaf is the sampled
/// instruction, every caller frame is a return address, so step back one
/// byte into the call instruction (else a call at a function's end would
/// be attributed to the next function, and lines would be off).
fn caller_adjusted(stack: &[u64]) -> impl Iterator<Item = u64> + '_ {
    stack
        .iter()
        .enumerate()
        .map(|(i, &ip)| if i == 0 { ip } else { ip.saturating_sub(1) })
}

fn process_of(processes: &ProcessTable, pods: &PodMetadata, tgid: u32, comm: &str) -> Process {
    if tgid == 0 {
        return Process {
            pid: 0,
            executable_name: IDLE_PROCESS.into(),
            executable_path: None,
            container: None,
            pod: None,
        };
    }
    match processes.process(tgid) {
        Some(info) => Process {
            pid: tgid,
            executable_name: info.executable_name.clone(),
            executable_path: info.executable_path.clone(),
            container: info.container.clone(),
            pod: info.container.as_ref().and_then(|c| pods.container(&c.id)),
        },
        // Exited before it could be snapshotted: the thread name is the best we have.
        None => Process {
            pid: tgid,
            executable_name: comm.to_owned(),
            executable_path: None,
            container: None,
            pod: None,
        },
    }
}

fn kernel_location(
    builder: &mut ProfileBuilder,
    mapping: MappingId,
    addr: u64,
    symbols: &Symbols,
) -> LocationId {
    let lines = lines_for(builder, symbols, || format!("{KERNEL_MAPPING}+{addr:#x}"));
    builder.location(Location {
        mapping: Some(mapping),
        address: addr,
        lines,
        kind: FrameKind::Kernel,
    })
}

fn user_location(
    builder: &mut ProfileBuilder,
    processes: &ProcessTable,
    symbols: &SymbolTable,
    resolved: Resolved,
    addr: u64,
) -> LocationId {
    let (mapping, lines) = match resolved {
        Resolved::Module {
            module,
            file_offset,
            mapping_start,
            mapping_end,
            mapping_file_offset,
        } => {
            let info = processes.module(module);
            let path = info.path.to_string_lossy().into_owned();
            let mapping = builder.mapping(Mapping {
                start: mapping_start,
                limit: mapping_end,
                file_offset: mapping_file_offset,
                path,
                build_id: info.build_id_hex(),
                kind: FrameKind::Native,
            });
            let found = &symbols.user[&(module, file_offset)];
            let lines = lines_for(builder, found, || {
                format!("{}+{file_offset:#x}", file_name(&info.path))
            });
            (Some(mapping), lines)
        }
        Resolved::Vdso => (None, lines_for(builder, &None, || "[vdso]".into())),
        Resolved::Unknown => (None, lines_for(builder, &None, || "[unknown]".into())),
    };
    // The outermost function decides: inlined callees are part of it.
    let rust = match resolved {
        Resolved::Module {
            module,
            file_offset,
            ..
        } => symbols.user[&(module, file_offset)]
            .as_ref()
            .and_then(|frames| frames.last())
            .is_some_and(|frame| frame.rust),
        _ => false,
    };
    builder.location(Location {
        mapping,
        address: addr,
        lines,
        kind: if rust {
            FrameKind::Rust
        } else {
            FrameKind::Native
        },
    })
}

/// Lines for a location: the symbolized frames, or one placeholder frame
/// named by `placeholder` so the frame is never dropped.
fn lines_for(
    builder: &mut ProfileBuilder,
    symbols: &Symbols,
    placeholder: impl FnOnce() -> String,
) -> Vec<Line> {
    match symbols {
        Some(frames) => frames
            .iter()
            .map(|frame| Line {
                function: builder.function(Function {
                    name: frame.name.clone(),
                    system_name: None,
                    filename: frame.file.clone(),
                }),
                line: frame.line,
            })
            .collect(),
        None => vec![Line {
            function: builder.function(Function {
                name: placeholder(),
                system_name: None,
                filename: None,
            }),
            line: None,
        }],
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_step_into_the_call_instruction() {
        let adjusted: Vec<u64> = caller_adjusted(&[0x100, 0x200, 0x300]).collect();
        assert_eq!(adjusted, vec![0x100, 0x1ff, 0x2ff]);
    }

    #[test]
    fn ingest_merges_equal_samples() {
        let sample = |count| RawSample {
            tgid: 1,
            tid: 2,
            comm: "x".into(),
            user_stack: vec![1, 2],
            kernel_stack: vec![],
            count,
        };
        let mut aggregator = Aggregator::new();
        aggregator.ingest(Drained {
            samples: vec![sample(2), sample(3)],
            stats: CaptureStats {
                recorded: 5,
                ..Default::default()
            },
        });
        aggregator.ingest(Drained {
            samples: vec![sample(1)],
            stats: CaptureStats {
                recorded: 1,
                dropped: 2,
                ..Default::default()
            },
        });
        assert_eq!(aggregator.total_samples(), 6);
        assert_eq!(aggregator.samples.len(), 1);
        assert_eq!(aggregator.process_count(), 1);
        assert_eq!(aggregator.stats().recorded, 6);
        assert_eq!(aggregator.stats().dropped, 2);
    }

    #[test]
    fn unknown_frames_keep_a_placeholder() {
        let mut processes = ProcessTable::new();
        let mut symbolizer = Symbolizer::new();
        let mut aggregator = Aggregator::new();
        // A pid that cannot exist: nothing resolves, every frame survives.
        aggregator.ingest(Drained {
            samples: vec![RawSample {
                tgid: u32::MAX - 1,
                tid: u32::MAX - 1,
                comm: "ghost".into(),
                user_stack: vec![0x1000, 0x2000],
                kernel_stack: vec![],
                count: 4,
            }],
            stats: CaptureStats::default(),
        });
        let profile = aggregator.finish(
            &mut processes,
            &mut symbolizer,
            &PodMetadata::empty(),
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(1),
            99,
        );
        assert_eq!(profile.samples.len(), 1);
        let sample = &profile.samples[0];
        assert_eq!(sample.stack.len(), 2, "no frame is dropped");
        assert_eq!(profile.process(sample.process).executable_name, "ghost");
        let names: Vec<&str> = sample
            .stack
            .iter()
            .map(|l| {
                profile
                    .function(profile.location(*l).lines[0].function)
                    .name
                    .as_str()
            })
            .collect();
        assert_eq!(names, vec!["[unknown]", "[unknown]"]);
    }

    #[test]
    fn truncated_stacks_end_in_a_marked_frame() {
        assert_eq!(
            split_truncated(&[1, 2, TRUNCATED_MARK]),
            (&[1, 2][..], true)
        );
        assert_eq!(split_truncated(&[1, 2]), (&[1, 2][..], false));
        assert_eq!(split_truncated(&[]), (&[][..], false));
        let mut aggregator = Aggregator::new();
        aggregator.ingest(Drained {
            samples: vec![RawSample {
                tgid: u32::MAX - 1,
                tid: u32::MAX - 1,
                comm: "deep".into(),
                user_stack: vec![0x1000, 0x2000, TRUNCATED_MARK],
                kernel_stack: vec![],
                count: 1,
            }],
            stats: CaptureStats::default(),
        });
        let profile = aggregator.finish(
            &mut ProcessTable::new(),
            &mut Symbolizer::new(),
            &PodMetadata::empty(),
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(1),
            99,
        );
        let stack = &profile.samples[0].stack;
        assert_eq!(stack.len(), 3);
        let root = profile.location(*stack.last().unwrap());
        assert_eq!(
            profile.function(root.lines[0].function).name,
            TRUNCATED_FRAME
        );
    }
}
