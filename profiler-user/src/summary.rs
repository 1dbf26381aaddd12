//! The short text report printed after a capture: totals, losses, how
//! user stacks were unwound and the functions that spent the most CPU
//! themselves (self time).

use std::collections::HashMap;
use std::fmt;
use std::io::Write;

use serde::Serialize;

use crate::kind::ProfileKind;
use crate::locks;
use crate::overhead::OverheadStats;
use crate::profile::{FrameKind, LinkCounters, Profile, Sample, UnresolvedLeaves, UnwindCounters};
use crate::symbolize::CacheStats;
use crate::text::escape;
use crate::unwind::loader::LoaderStats;
use crate::unwind::table::KERNEL_ROW_BYTES;

/// A function and the samples whose leaf frame it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FunctionShare {
    /// Function name as printed: control characters escaped
    /// ([`crate::text::escape`]), here and in the JSON report alike.
    pub name: String,
    /// Samples with this function as the innermost frame.
    pub self_samples: u64,
}

/// Totals and top functions of a profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The profile's kind.
    pub kind: ProfileKind,
    /// All samples, in the unit of the kind's weight (CPU: samples;
    /// off-CPU: nanoseconds blocked).
    pub samples: u64,
    /// Off-CPU intervals the kernel measured (0 for other kinds).
    pub intervals: u64,
    /// Of those, the intervals kept and unwound.
    pub kept: u64,
    /// Page-fault profile: the faults the samples stand for, and the
    /// period (one sample every that many faults on a CPU); `None` for
    /// other kinds.
    pub page_faults: Option<(u64, u64)>,
    /// Distinct processes.
    pub processes: usize,
    /// Samples lost in the kernel.
    pub dropped: u64,
    /// Stacks that could not be read or stored.
    pub stack_errors: u64,
    /// Samples whose leaf user frame resolved to no file, by why.
    pub unresolved: UnresolvedLeaves,
    /// Samples with a trace link, and those whose link was dropped.
    pub links: LinkCounters,
    /// Distinct trace links (spans) in the profile.
    pub spans: usize,
    /// How user stacks were unwound.
    pub unwind: UnwindCounters,
    /// The unwind tables at the end of the capture; `None` unless the
    /// table unwinder was in use (see [`Summary::with_unwind_tables`]).
    pub unwind_tables: Option<LoaderStats>,
    /// Functions by self samples, most first.
    pub top: Vec<FunctionShare>,
    /// Memory profile: its totals and leak view; `None` for other kinds.
    pub memory: Option<MemorySummary>,
}

/// The memory profile's totals and what was still held at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemorySummary {
    /// Allocation calls in the probed processes (all, sampled or not).
    pub calls: u64,
    /// The bytes they asked for (exact, counted in the kernel).
    pub bytes: u64,
    /// Sampled allocations.
    pub sampled: u64,
    /// Mean bytes between two samples.
    pub mean: u64,
    /// Bytes allocated, estimated from the samples (`alloc_space`).
    pub alloc_bytes: u64,
    /// Bytes still allocated at the end (`inuse_space`), of allocations
    /// made while hostprof ran.
    pub inuse_bytes: u64,
    /// Allocations still live at the end (`inuse_objects`).
    pub inuse_objects: u64,
    /// Sampled allocations not tracked (the live table was full).
    pub untracked: u64,
    /// Frees of tracked allocations lost.
    pub frees_lost: u64,
    /// Forks of probed processes not followed.
    pub forks_lost: u64,
    /// Where the most bytes still held were allocated, most first.
    pub held: Vec<Held>,
}

/// Bytes still held at the end of a capture, by where they were allocated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Held {
    /// The innermost function outside the allocator, escaped.
    pub name: String,
    /// Bytes it holds (`inuse_space`).
    pub bytes: u64,
    /// Allocations (`inuse_objects`).
    pub objects: u64,
    /// Age of the oldest of them, in seconds.
    pub oldest_seconds: u64,
}

/// The innermost frame of `sample` outside the allocator (`malloc`,
/// `operator new`, Rust's allocation wrappers): where it allocated.
fn allocated_in<'a>(profile: &'a Profile, sample: &Sample) -> &'a str {
    sample
        .stack
        .iter()
        .flat_map(|&id| &profile.location(id).lines)
        .map(|line| profile.function(line.function).name.as_str())
        .find(|name| !crate::sampler::is_allocator_frame(name))
        .unwrap_or("[allocator]")
}

impl MemorySummary {
    fn new(profile: &Profile, top_n: usize) -> Self {
        let mut held: HashMap<&str, Held> = HashMap::new();
        for sample in profile.samples.iter().filter(|s| s.values[3] > 0) {
            let name = allocated_in(profile, sample);
            let oldest = sample
                .labels
                .iter()
                .find(|(key, _)| *key == crate::sampler::heap::OLDEST_AGE)
                .and_then(|(_, value)| value.parse().ok())
                .unwrap_or(0);
            let entry = held.entry(name).or_insert_with(|| Held {
                name: escape(name).into_owned(),
                bytes: 0,
                objects: 0,
                oldest_seconds: 0,
            });
            entry.bytes += sample.values[3];
            entry.objects += sample.values[2];
            entry.oldest_seconds = entry.oldest_seconds.max(oldest);
        }
        let mut held: Vec<Held> = held.into_values().collect();
        held.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
        held.truncate(top_n);
        let stats = &profile.stats;
        Self {
            calls: stats.memory.calls,
            bytes: stats.memory.bytes,
            sampled: stats.recorded,
            mean: profile.period,
            alloc_bytes: profile.total(1),
            inuse_bytes: profile.total(3),
            inuse_objects: profile.total(2),
            untracked: stats.memory.untracked,
            frees_lost: stats.memory.frees_lost,
            forks_lost: stats.memory.forks_lost,
            held,
        }
    }
}

impl Summary {
    /// Summarizes `profile`, keeping the `top_n` heaviest functions: by
    /// self time for CPU, by time blocked in the innermost user function
    /// (and wait class) for off-CPU.
    pub fn new(profile: &Profile, top_n: usize) -> Self {
        let weight = profile.kind.weight();
        let mut self_samples: HashMap<String, u64> = HashMap::new();
        for sample in &profile.samples {
            if sample.values[weight] == 0 {
                continue; // a memory profile's in-use sample
            }
            let name = match profile.kind {
                ProfileKind::Cpu | ProfileKind::PageFaults => {
                    frame_name(profile, sample, false).to_owned()
                }
                ProfileKind::Memory => allocated_in(profile, sample).to_owned(),
                ProfileKind::OffCpu => {
                    let class = sample
                        .labels
                        .iter()
                        .find(|(key, _)| *key == crate::wait::WAIT_CLASS)
                        .map_or("other", |(_, value)| value.as_str());
                    format!("{} [{class}]", frame_name(profile, sample, true))
                }
                ProfileKind::Locks => lock_name(profile, sample),
            };
            *self_samples.entry(name).or_default() += sample.values[weight];
        }
        let mut top: Vec<FunctionShare> = self_samples
            .into_iter()
            .map(|(name, self_samples)| FunctionShare {
                name: escape(&name).into_owned(),
                self_samples,
            })
            .collect();
        top.sort_by(|a, b| {
            b.self_samples
                .cmp(&a.self_samples)
                .then(a.name.cmp(&b.name))
        });
        top.truncate(top_n);
        let stats = &profile.stats;
        Self {
            kind: profile.kind,
            samples: profile.total(weight),
            intervals: stats.intervals,
            kept: stats.recorded,
            page_faults: (profile.kind == ProfileKind::PageFaults)
                .then(|| (profile.total(1), profile.period)),
            processes: profile.processes.len(),
            dropped: stats.dropped,
            stack_errors: stats.user_stack_errors + stats.kernel_stack_errors + stats.stacks_lost,
            unresolved: stats.unresolved,
            links: stats.links,
            spans: profile
                .samples
                .iter()
                .filter_map(|s| s.link)
                .collect::<std::collections::HashSet<_>>()
                .len(),
            unwind: stats.unwind,
            unwind_tables: None,
            top,
            memory: (profile.kind == ProfileKind::Memory)
                .then(|| MemorySummary::new(profile, top_n)),
        }
    }

    /// Adds the unwind lines, from the table loader's stats at the end of
    /// the capture; they are left out when the table unwinder was not in
    /// use (no table budget).
    pub fn with_unwind_tables(mut self, tables: LoaderStats) -> Self {
        self.unwind_tables = (tables.registry.rows_capacity > 0).then_some(tables);
        self
    }
}

/// The function of the leaf frame of `sample` (innermost line: with
/// inlining, the inlined callee), or with `user` of its innermost
/// user-space frame when it has one.
fn frame_name<'a>(profile: &'a Profile, sample: &Sample, user: bool) -> &'a str {
    let location = |id| profile.location(id);
    let chosen = if user {
        sample
            .stack
            .iter()
            .find(|&&id| location(id).kind != FrameKind::Kernel)
            .or(sample.stack.first())
    } else {
        sample.stack.first()
    };
    chosen.map_or("[no stack]", |&id| {
        let line = &location(id).lines[0];
        profile.function(line.function).name.as_str()
    })
}

/// A lock by its type and where it was taken: `mutex in vm_mmap_pgoff`
/// (the innermost frame outside the lock's code, among kernel frames for
/// a kernel lock and user frames for a user-space one).
fn lock_name(profile: &Profile, sample: &Sample) -> String {
    let label = |key: &str| {
        sample
            .labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    };
    let lock = label(locks::LOCK_TYPE).unwrap_or("other");
    let user = label(locks::LOCK_SPACE) == Some("user");
    let names = sample
        .stack
        .iter()
        .map(|&id| profile.location(id))
        .filter(|location| (location.kind != FrameKind::Kernel) == user)
        .flat_map(|location| &location.lines)
        .map(|line| profile.function(line.function).name.as_str());
    format!(
        "{lock} in {}",
        locks::acquired_in(names).unwrap_or("[lock code]")
    )
}

/// What `hostprof record --stats-json` writes: the summary of every
/// profile of a capture, for scripts and benchmarks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaptureReport {
    /// Seconds spent sampling.
    pub sampling_seconds: f64,
    /// Seconds spent after sampling: the last drain, symbolization and
    /// building the profiles.
    pub finishing_seconds: f64,
    /// What symbolization read: cache counters, copies of mapped files,
    /// files left unsymbolized.
    pub symbolization: CacheStats,
    /// One summary per profile kind, in the order of `--profiles`.
    pub profiles: Vec<Summary>,
    /// What `--max-cpu` did: the cost it measured and the frequencies it
    /// set (all zero without a budget).
    pub overhead: OverheadStats,
}

impl CaptureReport {
    /// Writes the report as pretty-printed JSON.
    pub fn write_json(&self, mut out: impl Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut out, self)?;
        writeln!(out)?;
        out.flush()
    }
}

/// `bytes` in B, KiB, MiB or GiB, one decimal where it is not whole.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

/// The `unresolved` line, when a leaf user frame resolved to no file.
fn write_unresolved(f: &mut fmt::Formatter<'_>, u: &UnresolvedLeaves) -> fmt::Result {
    if u.total() == 0 {
        return Ok(());
    }
    write!(f, "unresolved       {} samples' leaf:", u.total())?;
    let reasons = [
        (u.process_gone, "process exited before it was read"),
        (u.other_image, "sampled in another image (exec)"),
        (u.file_not_open, "file never opened"),
        (u.no_mapping, "in no file (JIT without perf map)"),
    ];
    let mut first = true;
    for (count, why) in reasons {
        if count > 0 {
            write!(f, "{} {count} {why}", if first { "" } else { "," })?;
            first = false;
        }
    }
    writeln!(f)
}

/// The `trace links` line, when samples ran in known spans.
fn write_links(f: &mut fmt::Formatter<'_>, links: &LinkCounters, spans: usize) -> fmt::Result {
    if links.linked + links.dropped == 0 {
        return Ok(());
    }
    write!(
        f,
        "trace links      {} samples in {spans} spans",
        links.linked
    )?;
    if links.dropped > 0 {
        write!(
            f,
            ", {} without their link (over --max-links-per-process)",
            links.dropped
        )?;
    }
    writeln!(f)
}

/// The `unwound stacks` and `unwind tables` lines.
fn write_unwind(f: &mut fmt::Formatter<'_>, u: &UnwindCounters, t: &LoaderStats) -> fmt::Result {
    let user_stacks = u.unwound + u.no_tables;
    // Rounded down: 100 % only when every stack was.
    let percent = (u.unwound * 100).checked_div(user_stacks).unwrap_or(0);
    write!(
        f,
        "unwound stacks   {} of {} user stacks from tables ({} %), {} truncated",
        u.unwound, user_stacks, percent, u.truncated
    )?;
    let stopped_early = u.stopped_early();
    if stopped_early > 0 {
        write!(f, ", {stopped_early} stopped early")?;
    }
    writeln!(f)?;
    if u.python_stacks + u.python_no_frames > 0 {
        writeln!(
            f,
            "python stacks    {} samples with Python frames, {} without, {} truncated",
            u.python_stacks, u.python_no_frames, u.python_truncated
        )?;
    }
    let row_bytes = KERNEL_ROW_BYTES as u64;
    write!(
        f,
        "unwind tables    {} files, {} of {}, built in {:.2} s",
        t.registry.files_loaded,
        human_bytes(u64::from(t.registry.rows_used) * row_bytes),
        human_bytes(u64::from(t.registry.rows_capacity) * row_bytes),
        t.busy.as_secs_f64()
    )?;
    if t.build_errors > 0 {
        write!(f, ", {} without tables", t.build_errors)?;
    }
    let left_out = t.registry.evictions + t.registry.out_of_room;
    if left_out > 0 {
        write!(f, ", {left_out} evicted or refused for room")?;
    }
    writeln!(f)
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.measures_waits() {
            return self.fmt_waits(f);
        }
        if let Some(memory) = &self.memory {
            return self.fmt_memory(f, memory);
        }
        writeln!(f, "samples          {}", self.samples)?;
        if let Some((faults, period)) = self.page_faults {
            writeln!(
                f,
                "page faults      {faults} (a sample every {period} on a CPU)"
            )?;
        }
        self.write_counts(f)?;
        if let Some(tables) = &self.unwind_tables {
            write_unwind(f, &self.unwind, tables)?;
        }
        if self.top.is_empty() {
            return Ok(());
        }
        writeln!(f)?;
        writeln!(f, "{:>8} {:>6}  function (self)", "samples", "share")?;
        for share in &self.top {
            writeln!(
                f,
                "{:>8} {:>5.1}%  {}",
                share.self_samples,
                self.percent(share),
                share.name
            )?;
        }
        Ok(())
    }
}

impl Summary {
    /// The lines every kind has: processes, losses, unresolved leaves and
    /// trace links.
    fn write_counts(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "processes        {}", self.processes)?;
        writeln!(f, "dropped samples  {}", self.dropped)?;
        writeln!(f, "stack errors     {}", self.stack_errors)?;
        write_unresolved(f, &self.unresolved)?;
        write_links(f, &self.links, self.spans)
    }

    /// The share of the total `share` holds, in percent.
    fn percent(&self, share: &FunctionShare) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            share.self_samples as f64 * 100.0 / self.samples as f64
        }
    }

    /// The memory profile's section: calls and bytes, the estimates, where
    /// the most bytes were allocated, and what was still held at the end.
    fn fmt_memory(&self, f: &mut fmt::Formatter<'_>, m: &MemorySummary) -> fmt::Result {
        writeln!(
            f,
            "allocations      {} calls, {} asked for; {} sampled (one per {} on average)",
            m.calls,
            human_bytes(m.bytes),
            m.sampled,
            human_bytes(m.mean)
        )?;
        writeln!(
            f,
            "allocated        ~{} (estimated from the samples)",
            human_bytes(m.alloc_bytes)
        )?;
        writeln!(
            f,
            "in use at end    ~{} in ~{} allocations (made while hostprof ran)",
            human_bytes(m.inuse_bytes),
            m.inuse_objects
        )?;
        if m.untracked + m.frees_lost > 0 {
            writeln!(
                f,
                "not tracked      {} sampled allocations (live table full), {} frees lost",
                m.untracked, m.frees_lost
            )?;
        }
        if m.forks_lost > 0 {
            writeln!(
                f,
                "forks lost       {} children of probed processes inherited nothing \
                 (event ring full)",
                m.forks_lost
            )?;
        }
        self.write_counts(f)?;
        if !self.top.is_empty() {
            writeln!(f)?;
            writeln!(f, "{:>10} {:>6}  allocated in", "bytes", "share")?;
            for share in &self.top {
                writeln!(
                    f,
                    "{:>10} {:>5.1}%  {}",
                    human_bytes(share.self_samples),
                    self.percent(share),
                    share.name
                )?;
            }
        }
        if !m.held.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "{:>10} {:>8}  still held at the end, allocated in",
                "in use", "oldest"
            )?;
            for held in &m.held {
                writeln!(
                    f,
                    "{:>10} {:>7}s  {}",
                    human_bytes(held.bytes),
                    held.oldest_seconds,
                    held.name
                )?;
            }
        }
        Ok(())
    }

    /// The section of a kind that measures waits: off-CPU, time blocked,
    /// intervals, and where threads blocked the longest; locks, the delay,
    /// contentions and the most contended locks.
    fn fmt_waits(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = |ns: u64| ns as f64 / 1e9;
        let (total, waits, measured, heading) = if self.kind == ProfileKind::Locks {
            (
                "lock delay",
                "contentions",
                "kernel-lock waits measured",
                "lock (type in where it was taken)",
            )
        } else {
            (
                "off-CPU time",
                "intervals",
                "measured",
                "blocked in (innermost user function) [wait class]",
            )
        };
        writeln!(f, "{total:<16} {:.3} s", seconds(self.samples))?;
        writeln!(
            f,
            "{waits:<16} {} {measured}, {} kept and unwound",
            self.intervals, self.kept
        )?;
        self.write_counts(f)?;
        if self.top.is_empty() {
            return Ok(());
        }
        writeln!(f)?;
        writeln!(f, "{:>9} {:>6}  {heading}", "seconds", "share")?;
        for share in &self.top {
            writeln!(
                f,
                "{:>9.3} {:>5.1}%  {}",
                seconds(share.self_samples),
                self.percent(share),
                share.name
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::profile::fixtures::host_process;
    use crate::profile::ProfileBuilder;

    #[test]
    fn top_functions_by_self_samples() {
        let mut b = ProfileBuilder::new(crate::kind::ProfileKind::Cpu);
        let p = b.process(host_process(1, "app"));
        let main = b.named_location("main", 1);
        let hot = b.named_location("hot", 2);
        let cold = b.named_location("cold", 3);
        b.add_cpu(p, 1, "app", vec![hot, main], 9);
        b.add_cpu(p, 1, "app", vec![cold, main], 1);
        let profile = b.build(SystemTime::UNIX_EPOCH, Duration::from_secs(1), 10_000_000);
        let summary = Summary::new(&profile, 1);
        assert_eq!(summary.samples, 10);
        assert_eq!(
            summary.top,
            vec![FunctionShare {
                name: "hot".into(),
                self_samples: 9
            }]
        );
        let text = summary.to_string();
        assert!(text.contains("90.0%  hot"), "{text}");
        assert!(!text.contains("unwind"), "{text}");
    }

    #[test]
    fn off_cpu_summary_names_the_blocking_user_function_and_wait_class() {
        use crate::profile::{Function, Line, Location, NewSample};
        let mut b = ProfileBuilder::new(ProfileKind::OffCpu);
        let p = b.process(host_process(1, "app"));
        let function = b.function(Function {
            name: "__schedule".into(),
            system_name: None,
            filename: None,
        });
        let schedule = b.location(Location {
            mapping: None,
            address: 0xffff_ffff_8100_0000,
            lines: vec![Line {
                function,
                line: None,
            }],
            kind: FrameKind::Kernel,
        });
        let sleepy = b.named_location("sleepy", 1);
        let main = b.named_location("main", 2);
        for (stack, class, ns) in [
            (vec![schedule, sleepy, main], "sleep", 3_000_000_000),
            (vec![schedule], "other", 1_000_000_000),
        ] {
            b.add_sample(NewSample {
                process: p,
                tid: 1,
                thread_name: "app",
                stack,
                labels: vec![("wait.class", class.into())],
                link: None,
                values: &[7, ns],
                events: &[],
            });
        }
        let profile = b.build(SystemTime::UNIX_EPOCH, Duration::from_secs(1), 1);
        let summary = Summary::new(&profile, 5);
        assert_eq!(summary.samples, 4_000_000_000, "weighted by time");
        let text = summary.to_string();
        assert!(text.starts_with("off-CPU time     4.000 s\n"), "{text}");
        assert!(
            text.contains("    3.000  75.0%  sleepy [sleep]\n"),
            "{text}"
        );
        assert!(
            text.contains("    1.000  25.0%  __schedule [other]\n"),
            "{text}"
        );
    }

    #[test]
    fn locks_summary_names_each_lock_by_type_and_where_it_was_taken() {
        use crate::profile::{Function, Line, Location, NewSample};
        let mut b = ProfileBuilder::new(ProfileKind::Locks);
        let p = b.process(host_process(1, "app"));
        let mut kernel = |name: &str, address| {
            let function = b.function(Function {
                name: name.into(),
                system_name: None,
                filename: None,
            });
            b.location(Location {
                mapping: None,
                address,
                lines: vec![Line {
                    function,
                    line: None,
                }],
                kind: FrameKind::Kernel,
            })
        };
        let slowpath = kernel("rwsem_down_write_slowpath", 0xffff_ffff_8100_0000);
        let down = kernel("down_write_killable", 0xffff_ffff_8100_1000);
        let mmap = kernel("vm_mmap_pgoff", 0xffff_ffff_8100_2000);
        let futex = kernel("futex_wait", 0xffff_ffff_8100_3000);
        let lll = b.named_location("__lll_lock_wait", 1);
        let lock = b.named_location("___pthread_mutex_lock", 2);
        let take = b.named_location("take_mutex", 3);
        let mapper = b.named_location("map_function", 4);
        for (stack, space, lock, ns) in [
            (
                vec![slowpath, down, mmap, mapper],
                "kernel",
                "rwsem:write",
                1_000_000_000,
            ),
            (
                vec![futex, lll, lock, take],
                "user",
                "pthread_mutex",
                3_000_000_000,
            ),
        ] {
            b.add_sample(NewSample {
                process: p,
                tid: 1,
                thread_name: "app",
                stack,
                labels: vec![
                    (locks::LOCK_TYPE, lock.into()),
                    (locks::LOCK_SPACE, space.into()),
                ],
                link: None,
                values: &[5, ns],
                events: &[],
            });
        }
        let profile = b.build(SystemTime::UNIX_EPOCH, Duration::from_secs(1), 1);
        let text = Summary::new(&profile, 5).to_string();
        assert!(text.starts_with("lock delay       4.000 s\n"), "{text}");
        assert!(
            text.contains("    3.000  75.0%  pthread_mutex in take_mutex\n"),
            "{text}"
        );
        assert!(
            text.contains("    1.000  25.0%  rwsem:write in vm_mmap_pgoff\n"),
            "{text}"
        );
    }

    #[test]
    fn hostile_function_names_print_escaped() {
        let profile = crate::profile::fixtures::hostile_profile();
        let summary = Summary::new(&profile, 10);
        let text = summary.to_string();
        assert!(text.contains("62.5%  evil\\x1b[31m_fn\n"), "{text}");
        assert!(text.contains("37.5%  a;b\\u{9b}2J\\n1 2\n"), "{text}");
        assert_eq!(text.lines().count(), 8, "{text}");
        assert!(!text.chars().any(|c| c != '\n' && crate::text::is_unsafe(c)));
        let mut json = Vec::new();
        CaptureReport {
            sampling_seconds: 1.0,
            finishing_seconds: 0.0,
            symbolization: CacheStats::default(),
            profiles: vec![summary],
            overhead: OverheadStats::default(),
        }
        .write_json(&mut json)
        .unwrap();
        let json = String::from_utf8(json).unwrap();
        assert!(!json.chars().any(|c| c != '\n' && crate::text::is_unsafe(c)));
        assert!(json.contains(r#""name": "evil\\x1b[31m_fn""#), "{json}");
    }

    fn summary_with(unwind: UnwindCounters, tables: LoaderStats) -> Summary {
        Summary {
            kind: ProfileKind::Cpu,
            samples: 1300,
            intervals: 0,
            kept: 0,
            page_faults: None,
            processes: 4,
            dropped: 0,
            stack_errors: 0,
            unresolved: UnresolvedLeaves::default(),
            links: LinkCounters::default(),
            spans: 0,
            unwind,
            unwind_tables: None,
            top: Vec::new(),
            memory: None,
        }
        .with_unwind_tables(tables)
    }

    #[test]
    fn unresolved_leaves_are_reported_by_reason_when_there_are_any() {
        let mut summary = summary_with(UnwindCounters::default(), tables(0, 0));
        assert!(!summary.to_string().contains("unresolved"));
        summary.unresolved = UnresolvedLeaves {
            process_gone: 3,
            file_not_open: 2,
            ..UnresolvedLeaves::default()
        };
        assert!(
            summary.to_string().contains(
                "unresolved       5 samples' leaf: 3 process exited before it was read, \
                 2 file never opened\n"
            ),
            "{summary}"
        );
    }

    #[test]
    fn trace_links_are_reported_when_samples_ran_in_spans() {
        let mut summary = summary_with(UnwindCounters::default(), tables(0, 0));
        assert!(!summary.to_string().contains("trace links"));
        summary.links.linked = 40;
        summary.spans = 2;
        assert!(
            summary
                .to_string()
                .contains("trace links      40 samples in 2 spans\n"),
            "{summary}"
        );
        summary.links.dropped = 7;
        assert!(
            summary
                .to_string()
                .contains(", 7 without their link (over --max-links-per-process)"),
            "{summary}"
        );
    }

    fn tables(rows_used: u32, rows_capacity: u32) -> LoaderStats {
        let mut tables = LoaderStats::default();
        tables.registry.files_loaded = 12;
        tables.registry.rows_used = rows_used;
        tables.registry.rows_capacity = rows_capacity;
        tables.busy = Duration::from_millis(410);
        tables
    }

    #[test]
    fn unwind_lines_with_tables() {
        let unwind = UnwindCounters {
            unwound: 1234,
            no_tables: 66,
            truncated: 3,
            ..Default::default()
        };
        // 3.4 MiB of rows in a 64 MiB budget.
        let summary = summary_with(unwind, tables(445_645, 8 << 20));
        assert_eq!(
            summary.to_string(),
            "samples          1300\n\
             processes        4\n\
             dropped samples  0\n\
             stack errors     0\n\
             unwound stacks   1234 of 1300 user stacks from tables (94 %), 3 truncated\n\
             unwind tables    12 files, 3.4 MiB of 64 MiB, built in 0.41 s\n"
        );
    }

    #[test]
    fn unwind_lines_report_early_stops_and_table_trouble() {
        let unwind = UnwindCounters {
            unwound: 10,
            read_errors: 1,
            no_rule: 2,
            ..Default::default()
        };
        let mut stats = tables(16, 1 << 17);
        stats.build_errors = 2;
        stats.registry.evictions = 1;
        let text = summary_with(unwind, stats).to_string();
        assert!(
            text.contains(
                "10 of 10 user stacks from tables (100 %), 0 truncated, 3 stopped early\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "12 files, 128 B of 1 MiB, built in 0.41 s, 2 without tables, 1 evicted or refused for room\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn no_unwind_lines_without_a_table_budget() {
        let unwind = UnwindCounters {
            no_tables: 100,
            ..Default::default()
        };
        let summary = summary_with(unwind, LoaderStats::default());
        assert_eq!(summary.unwind_tables, None);
        assert!(!summary.to_string().contains("unwind"));
    }

    #[test]
    fn the_capture_report_is_json_with_every_figure() {
        let report = CaptureReport {
            sampling_seconds: 10.0,
            finishing_seconds: 0.5,
            symbolization: CacheStats {
                files_unreadable: 2,
                ..CacheStats::default()
            },
            profiles: vec![summary_with(UnwindCounters::default(), tables(100, 1000))],
            overhead: OverheadStats {
                frequency_hz: 49,
                lowest_frequency_hz: 24,
                frequency_changes: 3,
                ..OverheadStats::default()
            },
        };
        let mut out = Vec::new();
        report.write_json(&mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["sampling_seconds"], 10.0);
        assert_eq!(json["overhead"]["frequency_hz"], 49);
        assert_eq!(json["overhead"]["lowest_frequency_hz"], 24);
        assert_eq!(json["overhead"]["frequency_changes"], 3);
        assert_eq!(json["symbolization"]["files_unreadable"], 2);
        let profile = &json["profiles"][0];
        assert_eq!(profile["kind"], "cpu");
        assert_eq!(profile["samples"], 1300);
        assert_eq!(profile["unwind"]["ended"], 0);
        let tables = &profile["unwind_tables"];
        assert_eq!(tables["registry"]["rows_used"], 100);
        assert_eq!(tables["registry"]["files_loaded"], 12);
        assert_eq!(tables["busy"], 0.41);
    }

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(3 << 30), "3 GiB");
    }
}
