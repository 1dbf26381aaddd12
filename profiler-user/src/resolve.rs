//! Turns aggregated samples into symbolized [`Profile`]s, one per kind.
//!
//! User addresses are resolved to (file, offset) through the process
//! snapshots — read-only: snapshots are taken and refreshed by
//! [`crate::process`] as samples are drained — and every distinct address
//! is symbolized once per window, in batches per file (and once per file
//! thanks to the symbolizer's cache). Kernel addresses go to the kernel
//! symbolizer.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime};

use profiler_common::{python_frame, UnwindStop};

use crate::aggregate::Aggregated;
use crate::k8s::PodMetadata;
use crate::kind::{Label, ProfileKind};
use crate::locks;
use crate::process::perfmap::{JitFunction, Runtime};
use crate::process::{ModuleId, ProcessTable, PythonProcesses, Resolved, Unresolved};
use crate::profile::{
    CaptureStats, FrameKind, Function, Line, Location, LocationId, Mapping, MappingId, NewSample,
    Process, Profile, ProfileBuilder, UnresolvedLeaves,
};
use crate::sampler::SampleKey;
use crate::symbolize::{Symbolizer, Symbols};
use crate::FastMap;

/// Name the idle task is reported under (as `perf` does).
const IDLE_PROCESS: &str = "swapper";
/// A Python frame whose code object could not be read.
const PYTHON_UNKNOWN: &str = "[python]";
/// Outermost frame of a stack cut at the unwinder's depth limit.
pub const TRUNCATED_FRAME: &str = "[truncated]";

/// The outermost frame that stands for the unknown rest of a user stack
/// the unwinder stopped early, by why it stopped: such a stack is never
/// shown as a whole one. `None` for a whole stack.
pub fn stop_frame(stop: UnwindStop) -> Option<&'static str> {
    Some(match stop {
        UnwindStop::Running | UnwindStop::End | UnwindStop::FramePointerEnd => return None,
        UnwindStop::Truncated => TRUNCATED_FRAME,
        UnwindStop::ReadError => "[incomplete: unreadable stack]",
        UnwindStop::NoRule => "[incomplete: no unwind rule]",
        UnwindStop::NoProgress => "[incomplete: frame did not move up the stack]",
        UnwindStop::ZeroReturn => "[incomplete: zero return address]",
        UnwindStop::TablesPending => "[incomplete: unwind table still loading]",
    })
}
/// Path of the kernel's pseudo-mapping.
const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

/// What every profile of a window shares.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// When the window started.
    pub start_time: SystemTime,
    /// How long it lasted.
    pub duration: Duration,
}

/// What [`profiles`] reads besides the samples: process snapshots, the
/// symbolizer and Kubernetes metadata.
pub struct Sources<'a> {
    /// Memory-map snapshots of the sampled processes.
    pub processes: &'a ProcessTable,
    /// Symbolizes files and the kernel (caches across windows).
    pub symbolizer: &'a mut Symbolizer,
    /// Pod names of containers.
    pub pods: &'a PodMetadata,
    /// Python processes' code objects (`None`: frames not walked).
    pub python: Option<&'a PythonProcesses>,
}

/// One symbolized profile per `(kind, period)` of `kinds`, in that order,
/// from everything aggregated in `window`. A kind without samples still
/// gets its (empty) profile.
pub fn profiles(
    aggregated: Aggregated,
    kinds: &[(ProfileKind, u64)],
    sources: Sources<'_>,
    window: Window,
) -> Vec<Profile> {
    let Sources {
        processes,
        symbolizer,
        pods,
        python,
    } = sources;
    let symbols = SymbolTable::collect(aggregated.samples.keys(), processes, symbolizer);
    let unsnapshotted = names_of_unsnapshotted(aggregated.samples.keys(), processes);
    let mut builders: Vec<Target> = kinds
        .iter()
        .map(|&(kind, _)| {
            let mut builder = ProfileBuilder::new(kind);
            if let Some(stats) = aggregated.stats.get(&kind) {
                builder.add_stats(stats);
            }
            let kernel_mapping = builder.mapping(kernel_mapping());
            Target {
                builder,
                kernel_mapping,
                locations: LocationCache::default(),
            }
        })
        .collect();
    for (key, merged) in aggregated.samples {
        let image = (key.thread.tgid, key.thread.exec_gen);
        let mut labels = key.labels.clone();
        if key.kind.labels_kernel_frames() {
            let names = caller_adjusted(&key.kernel_stack).flat_map(|addr| {
                symbols.kernel[&addr]
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .map(|frame| frame.name.as_str())
            });
            labels.extend(key.kind.kernel_frames_label(&labels, names));
        }
        // The sample's own profile, and the profile derived from it (a
        // user-space lock wait is an off-CPU sample of the locks profile).
        let own = kinds.iter().position(|&(kind, _)| kind == key.kind);
        let derived = derived_sample(&key, &labels, &symbols, image).and_then(|(kind, extra)| {
            let i = kinds.iter().position(|&(k, _)| k == kind)?;
            Some((i, extra))
        });
        let targets = own.map(|i| (i, labels)).into_iter().chain(derived);
        for (i, labels) in targets {
            let target = &mut builders[i];
            let tgid = key.thread.tgid;
            let comm = unsnapshotted.get(&tgid).unwrap_or(&key.thread.comm);
            let process = target
                .builder
                .process(process_of(processes, pods, tgid, comm));
            let stack = stack_of(target, &key, processes, python, &symbols);
            let builder = &mut target.builder;
            if let Some(reason) = key
                .user_stack
                .first()
                .and_then(|&leaf| symbols.unresolved(image, leaf))
            {
                builder.add_stats(&unresolved_stats(
                    reason,
                    merged.values.first().copied().unwrap_or(0),
                ));
            }
            builder.add_sample(NewSample {
                process,
                tid: key.thread.tid,
                thread_name: &key.thread.comm,
                stack,
                labels,
                link: key.link,
                values: &merged.values,
                events: &merged.events,
            });
        }
    }
    builders
        .into_iter()
        .zip(kinds)
        .map(|(target, &(_, period))| {
            target
                .builder
                .build(window.start_time, window.duration, period)
        })
        .collect()
}

/// One profile being built: its builder, its kernel mapping, and the
/// locations of the addresses seen so far.
struct Target {
    builder: ProfileBuilder,
    kernel_mapping: MappingId,
    locations: LocationCache,
}

/// The location of each native address already placed in a profile: an
/// address resolves the same way in every sample of a window (its
/// mapping, build id and symbols are the window's), so it is resolved
/// once, not once per sample it appears in.
#[derive(Default)]
struct LocationCache {
    kernel: FastMap<u64, LocationId>,
    user: FastMap<(Image, u64), LocationId>,
}

/// The locations of `key`'s stack in `builder`: kernel frames, then user
/// frames, leaf first, and a truncation marker outermost. A sample's
/// Python frames take the place of the `_PyEval_EvalFrameDefault` frames
/// that ran them ([`python_groups`]).
fn stack_of(
    target: &mut Target,
    key: &SampleKey,
    processes: &ProcessTable,
    python: Option<&PythonProcesses>,
    symbols: &SymbolTable,
) -> Vec<LocationId> {
    let Target {
        builder,
        kernel_mapping,
        locations,
    } = target;
    let image = (key.thread.tgid, key.thread.exec_gen);
    let mut stack = Vec::with_capacity(key.kernel_stack.len() + key.user_stack.len() + 1);
    for addr in caller_adjusted(&key.kernel_stack) {
        let id = *locations.kernel.entry(addr).or_insert_with(|| {
            kernel_location(builder, *kernel_mapping, addr, &symbols.kernel[&addr])
        });
        stack.push(id);
    }
    let mut user = |builder: &mut ProfileBuilder, addr: u64| {
        *locations
            .user
            .entry((image, addr))
            .or_insert_with(|| user_location(builder, processes, symbols, image, addr))
    };
    let mut groups = python_groups(&key.python_frames);
    // Without the image's evaluation loop (it exec'd or went away), the
    // frames could not be placed: left out.
    let eval = python.and_then(|python| python.eval_range(image.0, image.1));
    let python = python.filter(|_| eval.is_some() && !key.python_frames.is_empty());
    for addr in caller_adjusted(&key.user_stack) {
        let in_eval = eval.is_some_and(|(start, size)| addr.wrapping_sub(start) < size);
        match (in_eval, python) {
            (true, Some(python)) => match groups.next() {
                Some(group) => {
                    for &word in group {
                        stack.push(python_location(builder, python, image, word));
                    }
                }
                None => stack.push(user(builder, addr)),
            },
            _ => stack.push(user(builder, addr)),
        }
    }
    // Python frames of evaluation-loop calls the native unwind did not
    // reach: outermost, as they are.
    if let Some(python) = python {
        for word in groups.flatten() {
            stack.push(python_location(builder, python, image, *word));
        }
    }
    if let Some(name) = key.user_stop.and_then(stop_frame) {
        // Outermost: the frames above the last one are unknown.
        let lines = lines_for(builder, &None, || name.into());
        stack.push(builder.location(Location {
            mapping: None,
            address: 0,
            lines,
            kind: FrameKind::Native,
        }));
    }
    stack
}

/// A sample's Python frames (innermost first) cut into the frames each
/// call of the evaluation loop ran: each ends with the frame that call
/// entered first ([`python_frame::ENTRY`]), the last one possibly without.
fn python_groups(frames: &[u64]) -> impl Iterator<Item = &[u64]> {
    frames
        .split_inclusive(|&word| word & python_frame::ENTRY != 0)
        .filter(|group| !group.is_empty())
}

/// The location of Python frame `word` of `image`: its function, file
/// and line, or a placeholder when its code object could not be read.
fn python_location(
    builder: &mut ProfileBuilder,
    python: &PythonProcesses,
    image: Image,
    word: u64,
) -> LocationId {
    let (code, _, _) = python_frame::decode(word);
    let line = match python.frame(image.0, image.1, word) {
        Some(frame) => Line {
            function: builder.function(Function {
                name: frame.name,
                system_name: None,
                filename: Some(frame.file),
            }),
            line: frame.line,
        },
        None => Line {
            function: builder.function(Function {
                name: PYTHON_UNKNOWN.into(),
                system_name: None,
                filename: None,
            }),
            line: None,
        },
    };
    builder.location(Location {
        mapping: None,
        address: code,
        lines: vec![line],
        kind: FrameKind::Cpython,
    })
}

/// The kind a sample also belongs to, and its labels there: an off-CPU
/// wait whose user stack acquires a lock is a sample of the locks profile
/// ([`crate::locks::user_lock_type`]). `labels` are the sample's own,
/// its wait class among them.
fn derived_sample(
    key: &SampleKey,
    labels: &[Label],
    symbols: &SymbolTable,
    image: Image,
) -> Option<(ProfileKind, Vec<Label>)> {
    if key.kind != ProfileKind::OffCpu {
        return None;
    }
    let class = labels
        .iter()
        .find(|(k, _)| *k == crate::wait::WAIT_CLASS)
        .map(|(_, v)| v.as_str());
    let names = caller_adjusted(&key.user_stack).flat_map(|addr| symbols.user_names(image, addr));
    let lock = locks::user_lock_type(class, names)?;
    Some((
        ProfileKind::Locks,
        vec![
            (locks::LOCK_TYPE, lock.to_owned()),
            (locks::LOCK_SPACE, "user".to_owned()),
        ],
    ))
}

/// One name for each process that has no snapshot (it exited before it
/// could be read), so that all its threads make one process, not one per
/// thread name: its main thread's name (tid = pid) when that thread was
/// sampled, else the first of its threads' names in sort order.
fn names_of_unsnapshotted<'a>(
    keys: impl Iterator<Item = &'a SampleKey>,
    processes: &ProcessTable,
) -> HashMap<u32, String> {
    let mut names: HashMap<u32, (bool, &str)> = HashMap::new();
    for key in keys {
        let thread = &key.thread;
        if thread.tgid == 0 || processes.process(thread.tgid).is_some() {
            continue;
        }
        let candidate = (thread.tid == thread.tgid, thread.comm.as_str());
        let name = names.entry(thread.tgid).or_insert(candidate);
        // The main thread wins; among the others, the smallest name.
        if (candidate.0, std::cmp::Reverse(candidate.1)) > (name.0, std::cmp::Reverse(name.1)) {
            *name = candidate;
        }
    }
    names
        .into_iter()
        .map(|(tgid, (_, name))| (tgid, name.to_owned()))
        .collect()
}

/// The kernel's pseudo-mapping, first in every profile's mapping table.
fn kernel_mapping() -> Mapping {
    Mapping {
        start: 0,
        limit: u64::MAX,
        file_offset: 0,
        path: KERNEL_MAPPING.into(),
        build_id: None,
        kind: FrameKind::Kernel,
    }
}

/// A window's counter of `count` samples whose leaf did not resolve.
fn unresolved_stats(reason: Unresolved, count: u64) -> CaptureStats {
    let mut leaves = UnresolvedLeaves::default();
    *match reason {
        Unresolved::ProcessGone => &mut leaves.process_gone,
        Unresolved::OtherImage => &mut leaves.other_image,
        Unresolved::FileNotOpen => &mut leaves.file_not_open,
        Unresolved::NoMapping => &mut leaves.no_mapping,
    } = count;
    CaptureStats {
        unresolved: leaves,
        ..CaptureStats::default()
    }
}

/// A process image: (tgid, exec generation).
type Image = (u32, u32);

/// Every address of every sample, resolved and symbolized in batches.
struct SymbolTable {
    resolved: FastMap<(Image, u64), Resolved>,
    /// Addresses in no file that a perf map names (JIT code).
    jit: HashMap<(u32, u64), (JitFunction, Runtime)>,
    user: FastMap<(ModuleId, u64), Symbols>,
    kernel: FastMap<u64, Symbols>,
}

impl SymbolTable {
    fn collect<'a>(
        keys: impl Iterator<Item = &'a SampleKey>,
        processes: &ProcessTable,
        symbolizer: &mut Symbolizer,
    ) -> Self {
        let mut resolved = FastMap::default();
        let mut jit = HashMap::new();
        let mut offsets: HashMap<ModuleId, BTreeSet<u64>> = HashMap::new();
        let mut kernel_addrs = BTreeSet::new();
        for key in keys {
            let (tgid, exec_gen) = (key.thread.tgid, key.thread.exec_gen);
            kernel_addrs.extend(caller_adjusted(&key.kernel_stack));
            for addr in caller_adjusted(&key.user_stack) {
                let r = *resolved.entry(((tgid, exec_gen), addr)).or_insert_with(|| {
                    let r = processes.resolve(tgid, exec_gen, addr);
                    if r == Resolved::Unknown(Unresolved::NoMapping) {
                        if let Some(function) = processes.jit_function(tgid, addr) {
                            jit.insert((tgid, addr), function);
                        }
                    }
                    r
                });
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

        let mut user = FastMap::default();
        for (module, offsets) in offsets {
            let offsets: Vec<u64> = offsets.into_iter().collect();
            let file = processes.module(module).open_file();
            let found = symbolizer.user(module, file.as_ref(), &offsets);
            user.extend(offsets.into_iter().map(|o| (module, o)).zip(found));
        }
        let kernel_addrs: Vec<u64> = kernel_addrs.into_iter().collect();
        let found = symbolizer.kernel(&kernel_addrs);
        let kernel = kernel_addrs.into_iter().zip(found).collect();
        Self {
            resolved,
            jit,
            user,
            kernel,
        }
    }

    /// The function names at the user address `addr` of `image`,
    /// innermost (inlined) first; none when it did not resolve.
    fn user_names(&self, image: Image, addr: u64) -> Vec<&str> {
        match self.resolved.get(&(image, addr)) {
            Some(Resolved::Module {
                module,
                file_offset,
                ..
            }) => self.user[&(*module, *file_offset)]
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|frame| frame.name.as_str())
                .collect(),
            Some(Resolved::Unknown(_)) => self
                .jit
                .get(&(image.0, addr))
                .map(|(function, _)| vec![function.name.as_str()])
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Why the user address `addr` of `image` resolved to no file and no
    /// JIT function; `None` when it did.
    fn unresolved(&self, image: Image, addr: u64) -> Option<Unresolved> {
        match self.resolved.get(&(image, addr))? {
            Resolved::Unknown(_) if self.jit.contains_key(&(image.0, addr)) => None,
            Resolved::Unknown(reason) => Some(*reason),
            _ => None,
        }
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
    image: Image,
    addr: u64,
) -> LocationId {
    let resolved = symbols.resolved[&(image, addr)];
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
        Resolved::Unknown(_) => {
            if let Some((function, runtime)) = symbols.jit.get(&(image.0, addr)) {
                return jit_location(builder, function, *runtime, addr);
            }
            (None, lines_for(builder, &None, || "[unknown]".into()))
        }
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

/// A location in JIT code, named by the process's perf map, of the frame
/// type of the runtime that wrote it.
fn jit_location(
    builder: &mut ProfileBuilder,
    function: &JitFunction,
    runtime: Runtime,
    addr: u64,
) -> LocationId {
    let line = Line {
        function: builder.function(Function {
            name: function.name.clone(),
            system_name: None,
            filename: function.file.clone(),
        }),
        line: function.line,
    };
    builder.location(Location {
        mapping: None,
        address: addr,
        lines: vec![line],
        kind: match runtime {
            Runtime::V8 => FrameKind::V8js,
            Runtime::Jvm => FrameKind::Jvm,
            Runtime::Dotnet => FrameKind::Dotnet,
            Runtime::Python => FrameKind::Cpython,
            Runtime::Other => FrameKind::Native,
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
    use crate::aggregate::Merged;
    use crate::profile::CaptureStats;
    use crate::sampler::drain::Thread;
    use crate::sampler::KindStats;

    #[test]
    fn python_frames_group_by_their_evaluation_loop_call() {
        let word = |code, entry| python_frame::encode(code, entry, 0);
        let frames = [
            word(0x10, false),
            word(0x20, true),
            word(0x30, true),
            word(0x40, false),
        ];
        let groups: Vec<&[u64]> = python_groups(&frames).collect();
        assert_eq!(
            groups,
            [&frames[..2], &frames[2..3], &frames[3..]],
            "each group ends with its entry frame; the last may have none"
        );
        assert_eq!(python_groups(&[]).count(), 0);
    }

    #[test]
    fn callers_step_into_the_call_instruction() {
        let adjusted: Vec<u64> = caller_adjusted(&[0x100, 0x200, 0x300]).collect();
        assert_eq!(adjusted, vec![0x100, 0x1ff, 0x2ff]);
    }

    /// One CPU sample of a pid that cannot exist, so nothing resolves.
    fn ghost(comm: &str, user_stack: Vec<u64>, truncated: bool, count: u64) -> Aggregated {
        ghost_stopped(
            comm,
            user_stack,
            truncated.then_some(UnwindStop::Truncated),
            count,
        )
    }

    /// [`ghost`] with a stack the unwinder stopped for `user_stop`.
    fn ghost_stopped(
        comm: &str,
        user_stack: Vec<u64>,
        user_stop: Option<UnwindStop>,
        count: u64,
    ) -> Aggregated {
        let key = SampleKey {
            kind: ProfileKind::Cpu,
            thread: Thread {
                tgid: u32::MAX - 1,
                tid: u32::MAX - 1,
                comm: comm.into(),
                exec_gen: 0,
            },
            user_stack,
            user_stop,
            python_frames: vec![],
            kernel_stack: vec![],
            labels: vec![],
            link: None,
        };
        Aggregated {
            samples: FastMap::from_iter([(
                key,
                Merged {
                    values: vec![count, count * 10],
                    events: vec![],
                },
            )]),
            stats: KindStats::from([(
                ProfileKind::Cpu,
                CaptureStats {
                    recorded: count,
                    ..Default::default()
                },
            )]),
        }
    }

    fn build(aggregated: Aggregated) -> Profile {
        let mut profiles = profiles(
            aggregated,
            &[(ProfileKind::Cpu, 10)],
            Sources {
                processes: &ProcessTable::new(),
                symbolizer: &mut Symbolizer::new(),
                pods: &PodMetadata::empty(),
                python: None,
            },
            Window {
                start_time: SystemTime::UNIX_EPOCH,
                duration: Duration::from_secs(1),
            },
        );
        assert_eq!(profiles.len(), 1);
        profiles.remove(0)
    }

    #[test]
    fn unknown_frames_keep_a_placeholder() {
        let profile = build(ghost("ghost", vec![0x1000, 0x2000], false, 4));
        assert_eq!(profile.samples.len(), 1);
        let sample = &profile.samples[0];
        assert_eq!(sample.stack.len(), 2, "no frame is dropped");
        assert_eq!(sample.values, vec![4, 40]);
        assert_eq!(profile.period, 10);
        assert_eq!(profile.stats.recorded, 4);
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
        let profile = build(ghost("deep", vec![0x1000, 0x2000], true, 1));
        let stack = &profile.samples[0].stack;
        assert_eq!(stack.len(), 3);
        let root = profile.location(*stack.last().unwrap());
        assert_eq!(
            profile.function(root.lines[0].function).name,
            TRUNCATED_FRAME
        );
    }

    #[test]
    fn stacks_stopped_early_end_in_a_frame_naming_why() {
        for stop in UnwindStop::EARLY {
            let profile = build(ghost_stopped("early", vec![0x1000], Some(stop), 1));
            let stack = &profile.samples[0].stack;
            assert_eq!(stack.len(), 2);
            let root = profile.location(*stack.last().unwrap());
            let name = &profile.function(root.lines[0].function).name;
            assert_eq!(Some(name.as_str()), stop_frame(stop));
            assert!(name.starts_with('['), "{name}");
        }
        for whole in [UnwindStop::End, UnwindStop::FramePointerEnd] {
            assert_eq!(stop_frame(whole), None);
        }
    }

    #[test]
    fn an_exited_process_is_one_process_whatever_its_threads_are_named() {
        let mut aggregated = ghost("worker-b", vec![0x1000], false, 1);
        let template = aggregated.samples.keys().next().unwrap().clone();
        for (tid, comm) in [(7, "worker-a"), (u32::MAX - 1, "main"), (9, "worker-c")] {
            let mut key = template.clone();
            key.thread.tid = tid;
            key.thread.comm = comm.into();
            let merged = aggregated.samples.values().next().unwrap().clone();
            aggregated.samples.insert(key, merged);
        }
        let profile = build(aggregated);
        assert_eq!(profile.samples.len(), 4, "threads stay apart");
        assert_eq!(
            profile.processes.len(),
            1,
            "one process: {:?}",
            profile.processes
        );
        assert_eq!(
            profile.processes[0].executable_name, "main",
            "the main thread's name"
        );
        assert_eq!(
            names_of_unsnapshotted(std::iter::empty(), &ProcessTable::new()).len(),
            0
        );
        // Without the main thread: the smallest name.
        let mut no_main = ghost("worker-b", vec![0x1000], false, 1);
        let mut key = no_main.samples.keys().next().unwrap().clone();
        key.thread.tid = 7;
        key.thread.comm = "worker-a".into();
        let mut other = key.clone();
        other.thread.tid = 8;
        other.thread.comm = "worker-b".into();
        no_main.samples = no_main
            .samples
            .into_values()
            .flat_map(|m| [(key.clone(), m.clone()), (other.clone(), m)])
            .collect();
        let names = names_of_unsnapshotted(no_main.samples.keys(), &ProcessTable::new());
        assert_eq!(names[&(u32::MAX - 1)], "worker-a");
    }

    #[test]
    fn every_kind_asked_for_gets_a_profile() {
        let profile = build(Aggregated::default());
        assert!(profile.samples.is_empty());
        assert_eq!(profile.kind, ProfileKind::Cpu);
        assert_eq!(profile.mappings[0].path, KERNEL_MAPPING);
    }
}
