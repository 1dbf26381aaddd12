//! The agent's self-metrics in the Prometheus text format, encoded with
//! `prometheus-client` from a [`Snapshot`] taken at scrape time, so every
//! figure has one source of truth (the pipeline and export counters) and
//! nothing is counted twice.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::AgentStats;
use crate::profiler::PipelineStats;
use crate::unwind::table::KERNEL_ROW_BYTES;

/// Everything the agent reports, as of one scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Sampling, aggregation and symbolization.
    pub pipeline: PipelineStats,
    /// Export.
    pub agent: AgentStats,
    /// Export requests waiting in the queue.
    pub queue_requests: usize,
    /// Bytes of export requests waiting in the queue.
    pub queue_bytes: usize,
    /// The agent process's own resource usage.
    pub own: OwnUsage,
}

/// CPU time and memory of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OwnUsage {
    /// User plus system CPU seconds since start.
    pub cpu_seconds: f64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Where the memory is: resident pages by kind, and the BPF maps.
    pub memory: MemoryParts,
}

/// The agent's memory in disjoint parts whose sum is its footprint
/// (resident set plus BPF maps), as the kernel counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MemoryParts {
    /// Resident anonymous pages (`RssAnon`): heap, stacks, caches,
    /// process snapshots, the export queue.
    pub anonymous: u64,
    /// Resident file-backed pages (`RssFile`): the binary, its libraries,
    /// files mapped to read them.
    pub file: u64,
    /// Resident shared memory (`RssShmem`): the sealed copies of tenants'
    /// files that symbolization maps.
    pub shmem: u64,
    /// Kernel memory of the BPF maps this process holds (their
    /// `memlock`): sample maps, stacks, unwind tables.
    pub bpf_maps: u64,
}

impl MemoryParts {
    /// The resident-page parts from the text of `/proc/PID/status`.
    fn from_status(status: &str) -> Self {
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Self {
            anonymous: kib("RssAnon"),
            file: kib("RssFile"),
            shmem: kib("RssShmem"),
            bpf_maps: 0,
        }
    }

    /// The `memlock` of a BPF map's `fdinfo` text; `None` for any other
    /// file (no `map_type`).
    fn map_memlock(fdinfo: &str) -> Option<u64> {
        fdinfo.lines().find(|line| line.starts_with("map_type:"))?;
        fdinfo
            .lines()
            .find_map(|line| line.strip_prefix("memlock:"))
            .and_then(|value| value.trim().parse().ok())
    }

    /// This process's parts, read from `/proc/self` (zero where
    /// unreadable).
    fn read() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let mut parts = Self::from_status(&status);
        parts.bpf_maps = MAP_FDS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .memlock(std::time::Instant::now(), read_own_fdinfo, scan_own_map_fds);
        parts
    }
}

/// The descriptors of this process's BPF maps, as last found among all its
/// descriptors (by their links: most are files, every module a snapshot
/// opened, and a link is one call, cheaper than an `fdinfo` read). A scrape
/// reads the `fdinfo` of these alone, and looks through every descriptor
/// again only after [`MapFds::RESCAN`] (maps added since, such as a memory
/// profile's, then count) or when one of them is no longer a map's: on
/// the bench's steady host the full look, every 5 s, was 13 % of the
/// agent's CPU.
static MAP_FDS: std::sync::Mutex<MapFds> = std::sync::Mutex::new(MapFds {
    scanned: None,
    fds: Vec::new(),
});

/// See [`MAP_FDS`].
#[derive(Debug)]
struct MapFds {
    scanned: Option<std::time::Instant>,
    fds: Vec<u32>,
}

impl MapFds {
    /// How long the descriptors found stand for a full look.
    const RESCAN: std::time::Duration = std::time::Duration::from_secs(60);

    /// The summed `memlock` of the maps: the `fdinfo` text of each
    /// descriptor from `fdinfo`, the map descriptors from `scan` when due
    /// or when one read is not a map's.
    fn memlock(
        &mut self,
        now: std::time::Instant,
        fdinfo: impl Fn(u32) -> Option<String>,
        scan: impl Fn() -> Vec<u32>,
    ) -> u64 {
        // None found (a scrape before the programs loaded): look again.
        let due = self.fds.is_empty()
            || self
                .scanned
                .is_none_or(|at| now.saturating_duration_since(at) >= Self::RESCAN);
        if !due {
            let sum: Option<u64> = self
                .fds
                .iter()
                .map(|&fd| MemoryParts::map_memlock(&fdinfo(fd)?))
                .sum();
            if let Some(sum) = sum {
                return sum;
            }
        }
        self.fds = scan();
        self.scanned = Some(now);
        self.fds
            .iter()
            .filter_map(|&fd| MemoryParts::map_memlock(&fdinfo(fd)?))
            .sum()
    }
}

fn read_own_fdinfo(fd: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()
}

/// This process's descriptors whose link names a BPF map.
fn scan_own_map_fds() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-map")
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

impl OwnUsage {
    /// Reads this process's usage (`getrusage`, `/proc/self/statm`,
    /// `status` and `fdinfo`); zero where unavailable.
    pub fn read() -> Self {
        // SAFETY: sysconf has no preconditions.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let resident_pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        Self {
            cpu_seconds: crate::overhead::process_cpu_time().as_secs_f64(),
            rss_bytes: resident_pages * page,
            memory: MemoryParts::read(),
        }
    }
}

/// A source of snapshots, called on every scrape.
pub type SnapshotFn = dyn Fn() -> Snapshot + Send + Sync;

/// The metric registry of one agent.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Metrics named `hostprof_*` whose values come from `snapshot`.
    pub fn new(snapshot: Arc<SnapshotFn>) -> Self {
        let mut registry = Registry::with_prefix("hostprof");
        registry.register_collector(Box::new(SnapshotCollector(snapshot)));
        Self { registry }
    }

    /// The Prometheus text exposition of the current values.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

struct SnapshotCollector(Arc<SnapshotFn>);

impl std::fmt::Debug for SnapshotCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotCollector")
    }
}

/// Encodes one metric with its descriptor.
fn emit(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: impl EncodeMetric,
) -> std::fmt::Result {
    let metric_type = metric.metric_type();
    metric.encode(encoder.encode_descriptor(name, help, unit, metric_type)?)
}

/// Writes one counter family, a counter per value of `label`.
fn emit_counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for &(value_of_label, value) in values {
        ConstCounter::new(value).encode(family.encode_family(&[(label, value_of_label)])?)?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = (self.0)();
        let p = &s.pipeline;
        let a = &s.agent;
        emit(
            &mut e,
            "samples",
            "CPU samples collected",
            None,
            ConstCounter::new(p.samples),
        )?;
        emit(
            &mut e,
            "samples_filtered",
            "Samples skipped on purpose (pid filter, idle excluded)",
            None,
            ConstCounter::new(p.capture.filtered),
        )?;
        emit_counters(
            &mut e,
            "samples_dropped",
            "Samples lost or degraded, by reason (stack errors keep the sample without that stack)",
            "reason",
            &[
                ("map_full", p.capture.dropped),
                ("user_stack_error", p.capture.user_stack_errors),
                ("kernel_stack_error", p.capture.kernel_stack_errors),
                ("stack_not_stored", p.capture.stacks_lost),
            ],
        )?;
        emit(
            &mut e,
            "off_cpu_intervals",
            "Off-CPU intervals the kernel measured (switch-out to switch-in), kept or not",
            None,
            ConstCounter::new(p.off_cpu_waits.measured),
        )?;
        emit(
            &mut e,
            "off_cpu_intervals_kept",
            "Off-CPU intervals kept and unwound (the budget's share of those measured)",
            None,
            ConstCounter::new(p.off_cpu_waits.kept),
        )?;
        emit(
            &mut e,
            "off_cpu_blocked_seconds",
            "Total time of the off-CPU intervals measured",
            None,
            ConstCounter::new(p.off_cpu_waits.nanos as f64 / 1e9),
        )?;
        emit(
            &mut e,
            "kernel_lock_contentions",
            "Kernel-lock contentions the kernel measured (contention_begin to _end), kept or not",
            None,
            ConstCounter::new(p.kernel_lock_waits.measured),
        )?;
        emit(
            &mut e,
            "kernel_lock_contentions_kept",
            "Kernel-lock contentions kept and unwound",
            None,
            ConstCounter::new(p.kernel_lock_waits.kept),
        )?;
        emit(
            &mut e,
            "kernel_lock_wait_seconds",
            "Total time of the kernel-lock contentions measured",
            None,
            ConstCounter::new(p.kernel_lock_waits.nanos as f64 / 1e9),
        )?;
        emit(
            &mut e,
            "memory_allocation_calls",
            "Allocation calls in the processes the memory profile probes, sampled or not",
            None,
            ConstCounter::new(p.capture.memory.calls),
        )?;
        emit(
            &mut e,
            "memory_allocation_bytes",
            "Bytes those allocation calls asked for",
            None,
            ConstCounter::new(p.capture.memory.bytes),
        )?;
        emit_counters(
            &mut e,
            "memory_tracking_losses",
            "Memory profile: sampled allocations not tracked as live (the live table was full: in alloc_*, never in inuse_*), frees of tracked ones sent late (deferred) or lost (inuse_* may still count them), forks of probed processes not followed (the child inherits nothing)",
            "kind",
            &[
                ("untracked", p.capture.memory.untracked),
                ("free_deferred", p.capture.memory.frees_deferred),
                ("free_lost", p.capture.memory.frees_lost),
                ("fork_lost", p.capture.memory.forks_lost),
            ],
        )?;
        emit(
            &mut e,
            "process_events_lost",
            "New-process notifications lost",
            None,
            ConstCounter::new(p.capture.process_events_lost),
        )?;
        emit(
            &mut e,
            "stacks",
            "Distinct (thread, stack) entries in the current profile",
            None,
            ConstGauge::new(p.stacks),
        )?;
        emit(
            &mut e,
            "processes",
            "Processes whose memory maps are held",
            None,
            ConstGauge::new(p.processes),
        )?;
        emit(
            &mut e,
            "symbol_cache_hits",
            "Symbolization lookups answered from the cache",
            None,
            ConstCounter::new(p.symbol_cache.hits),
        )?;
        emit(
            &mut e,
            "symbol_cache_misses",
            "Symbolization lookups that read the binary",
            None,
            ConstCounter::new(p.symbol_cache.misses),
        )?;
        emit(
            &mut e,
            "symbol_files_copied",
            "Sealed copies of mapped files made to symbolize them",
            None,
            ConstCounter::new(p.symbol_cache.files_copied),
        )?;
        emit(
            &mut e,
            "symbol_copied",
            "Bytes copied into those copies",
            Some(&Unit::Bytes),
            ConstCounter::new(p.symbol_cache.bytes_copied),
        )?;
        emit(
            &mut e,
            "symbol_copy",
            "Time spent making those copies",
            Some(&Unit::Seconds),
            ConstCounter::new(p.symbol_cache.copy_nanos as f64 / 1e9),
        )?;
        emit(
            &mut e,
            "symbol_files_unreadable",
            "Files left unsymbolized: not opened, not ELF, or changed while read",
            None,
            ConstCounter::new(p.symbol_cache.files_unreadable),
        )?;
        emit(
            &mut e,
            "symbol_files_without_lines",
            "Files symbolized without source lines: debug info past the copy limit",
            None,
            ConstCounter::new(p.symbol_cache.debug_left_out),
        )?;
        emit(
            &mut e,
            "symbol_files_from_debug_files",
            "Stripped files named from a separate debug file's symbol table (no source lines)",
            None,
            ConstCounter::new(p.symbol_cache.debug_files),
        )?;
        encode_resolution(&mut e, p)?;
        encode_unwind(&mut e, p)?;
        encode_overhead(&mut e, p)?;
        encode_drains(&mut e, p)?;
        emit(
            &mut e,
            "profiles_queued",
            "Profiles built and queued for export",
            None,
            ConstCounter::new(a.queued_profiles),
        )?;
        emit(
            &mut e,
            "profiles_exported",
            "Profiles the collector accepted",
            None,
            ConstCounter::new(a.sent.exported_profiles),
        )?;
        emit(
            &mut e,
            "profiles_rejected",
            "Profiles the collector rejected (partial_success)",
            None,
            ConstCounter::new(a.sent.rejected_profiles),
        )?;
        emit(
            &mut e,
            "profiles_dropped",
            "Profiles dropped because the export queue was full or shutdown timed out",
            None,
            ConstCounter::new(a.sent.dropped.profiles),
        )?;
        emit(
            &mut e,
            "profiles_failed",
            "Profiles given up after a non-retryable export error",
            None,
            ConstCounter::new(a.sent.failed_profiles),
        )?;
        emit(
            &mut e,
            "export_failures",
            "Export attempts that failed",
            None,
            ConstCounter::new(a.sent.failed_attempts),
        )?;
        emit(
            &mut e,
            "export_sent",
            "Bytes of export requests the collector accepted",
            Some(&Unit::Bytes),
            ConstCounter::new(a.sent.bytes_sent),
        )?;
        emit(
            &mut e,
            "encode",
            "Time spent building export requests",
            Some(&Unit::Seconds),
            ConstCounter::new(a.encode_nanos as f64 / 1e9),
        )?;
        emit(
            &mut e,
            "encodes",
            "Export requests built",
            None,
            ConstCounter::new(a.encodes),
        )?;
        emit(
            &mut e,
            "queue_requests",
            "Export requests waiting",
            None,
            ConstGauge::new(s.queue_requests),
        )?;
        emit(
            &mut e,
            "queue",
            "Bytes of export requests waiting",
            Some(&Unit::Bytes),
            ConstGauge::new(s.queue_bytes),
        )?;
        emit(
            &mut e,
            "cpu",
            "CPU time of the agent process (user + system)",
            Some(&Unit::Seconds),
            ConstCounter::new(s.own.cpu_seconds),
        )?;
        emit(
            &mut e,
            "resident_memory",
            "Resident memory of the agent process",
            Some(&Unit::Bytes),
            ConstGauge::new(s.own.rss_bytes),
        )?;
        let m = &s.own.memory;
        let mut family = e.encode_descriptor(
            "memory",
            "The agent's memory by part, as the kernel counts it; the parts are disjoint and add up to its footprint (anonymous: heap, caches, queue; file: binary and mapped files; shmem: sealed copies symbolization maps; bpf_maps: the BPF maps' kernel memory, unwind tables included)",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for (component, bytes) in [
            ("anonymous", m.anonymous),
            ("file", m.file),
            ("shmem", m.shmem),
            ("bpf_maps", m.bpf_maps),
        ] {
            ConstGauge::new(bytes).encode(family.encode_family(&[("component", component)])?)?;
        }
        Ok(())
    }
}

/// How user frames were resolved to files: what the kernel recorded of
/// them, and the samples whose leaf resolved to none.
fn encode_resolution(e: &mut DescriptorEncoder, p: &PipelineStats) -> std::fmt::Result {
    let files = &p.capture.files;
    emit_counters(
        e,
        "recorded_files",
        "File mappings of sampled user frames the kernel looked up (recorded: sent; lost: ring buffer or per-process state full; lookup_failed: no mapping found)",
        "outcome",
        &[
            ("recorded", files.recorded),
            ("lost", files.lost),
            ("lookup_failed", files.lookup_failed),
        ],
    )?;
    let r = &p.capture.unresolved;
    emit_counters(
        e,
        "unresolved_leaves",
        "Samples whose leaf user frame resolved to no file, by why (process_gone: exited before its maps were read; other_image: sampled before an exec; file_not_open: no live process mapped the file when read; no_mapping: JIT code without a perf map)",
        "reason",
        &[
            ("process_gone", r.process_gone),
            ("other_image", r.other_image),
            ("file_not_open", r.file_not_open),
            ("no_mapping", r.no_mapping),
        ],
    )?;
    let links = &p.capture.links;
    emit_counters(
        e,
        "trace_link_samples",
        "Samples that ran in a known trace span (linked: carry their trace and span; dropped: their process already had --max-links-per-process distinct links in the window, so they carry none)",
        "outcome",
        &[("linked", links.linked), ("dropped", links.dropped)],
    )
}

/// The CPU budget (`--max-cpu`) and the sampling frequency it set.
fn encode_overhead(e: &mut DescriptorEncoder, p: &PipelineStats) -> std::fmt::Result {
    let o = &p.overhead;
    if o.frequency_hz == 0 {
        return Ok(()); // no budget: the frequency is the configured one
    }
    emit(
        e,
        "sampling_frequency_hz",
        "The CPU profile's sampling frequency now, set by --max-cpu (each sample's period follows it)",
        None,
        ConstGauge::new(u64::from(o.frequency_hz)),
    )?;
    emit(
        e,
        "sampling_frequency_changes",
        "Times --max-cpu changed the CPU profile's sampling frequency",
        None,
        ConstCounter::new(o.frequency_changes),
    )?;
    emit(
        e,
        "own_cpu_ratio",
        "hostprof's own CPU use (threads and kernel programs) over the last --max-cpu decision, in cores",
        None,
        ConstGauge::new(o.cpu_share),
    )?;
    emit(
        e,
        "max_cpu_ratio",
        "The CPU budget (--max-cpu), in cores",
        None,
        ConstGauge::new(o.max_cpu_share),
    )
}

/// Drains of the kernel's maps and the interval between them.
fn encode_drains(e: &mut DescriptorEncoder, p: &PipelineStats) -> std::fmt::Result {
    let d = &p.drains;
    emit_counters(
        e,
        "drains",
        "Drains of the kernel's sample maps, by cause (scheduled: due by the 1-4 s schedule; early: a CPU filled its share of the maps first; window: a window ended)",
        "cause",
        &[
            ("scheduled", d.scheduled),
            ("early", d.early),
            ("window", d.window),
        ],
    )?;
    emit(
        e,
        "drain_interval",
        "The interval between scheduled drains now: longer while the maps stay nearly empty",
        Some(&Unit::Seconds),
        ConstGauge::new(d.interval.as_secs_f64()),
    )
}

/// The user-stack unwinder's counters and the unwind tables' state.
fn encode_unwind(e: &mut DescriptorEncoder, p: &PipelineStats) -> std::fmt::Result {
    let u = &p.capture.unwind;
    let t = &p.unwind_tables;
    emit_counters(
        e,
        "unwind_samples",
        "Samples with a user stack, by how it was unwound (frame_pointers: the process had no tables loaded yet)",
        "method",
        &[("tables", u.unwound), ("frame_pointers", u.no_tables)],
    )?;
    emit_counters(
        e,
        "unwind_stops",
        "User-stack unwinds by why they ended, with tables or (before a process has them) frame pointers (end: a frame its row marks outermost, a planted return (makecontext), or a zero return address rows alone found; frame_pointer_end: a zero frame pointer read from a save slot; both are whole stacks. The others end in an [incomplete: ...] frame: read_error: unreadable stack memory; no_rule: neither a row nor a frame pointer applied; no_progress: a frame did not move up the stack; zero_return: a zero return address after a frame-pointer step or from a signal frame; tables_pending: a file whose table was still being built; truncated: the depth limit)",
        "reason",
        &[
            ("end", u.ended),
            ("frame_pointer_end", u.frame_pointer_ended),
            ("read_error", u.read_errors),
            ("no_rule", u.no_rule),
            ("no_progress", u.no_progress),
            ("zero_return", u.zero_return),
            ("tables_pending", u.tables_pending),
            ("truncated", u.truncated),
        ],
    )?;
    emit_counters(
        e,
        "python_stacks",
        "Samples of Python processes by their Python frames (walked; no_frames: a thread running no Python code, unreadable frames, or no room left; walked + no_frames is every such sample; truncated: those of walked cut at the frame limit)",
        "outcome",
        &[
            ("walked", u.python_stacks),
            ("no_frames", u.python_no_frames),
            ("truncated", u.python_truncated),
        ],
    )?;
    emit(
        e,
        "unwind_frame_pointer_steps",
        "Frames stepped with frame pointers inside table unwinds (code without tables, or rules tables cannot encode)",
        None,
        ConstCounter::new(u.frame_pointer_steps),
    )?;
    let row_bytes = KERNEL_ROW_BYTES as u64;
    emit(
        e,
        "unwind_table",
        "Kernel memory used by unwind table rows",
        Some(&Unit::Bytes),
        ConstGauge::new(u64::from(t.registry.rows_used) * row_bytes),
    )?;
    emit(
        e,
        "unwind_table_budget",
        "Kernel memory reserved for unwind table rows (0 with the frame-pointer unwinder)",
        Some(&Unit::Bytes),
        ConstGauge::new(u64::from(t.registry.rows_capacity) * row_bytes),
    )?;
    emit(
        e,
        "unwind_table_files",
        "Files whose unwind tables are loaded in the kernel",
        None,
        ConstGauge::new(t.registry.files_loaded),
    )?;
    emit(
        e,
        "unwind_table_processes",
        "Processes unwound with tables",
        None,
        ConstGauge::new(t.registry.processes),
    )?;
    emit(
        e,
        "unwind_tables_queued",
        "Unwind tables waiting to be built",
        None,
        ConstGauge::new(t.queued),
    )?;
    emit(
        e,
        "unwind_tables_built",
        "Unwind tables built and loaded",
        None,
        ConstCounter::new(t.tables_built),
    )?;
    emit(
        e,
        "unwind_table_build_errors",
        "Files whose unwind tables could not be built or loaded (no CFI, unreadable, not ELF)",
        None,
        ConstCounter::new(t.build_errors),
    )?;
    emit(
        e,
        "unwind_table_evictions",
        "Unwind tables evicted to make room within the budget",
        None,
        ConstCounter::new(t.registry.evictions),
    )?;
    emit(
        e,
        "unwind_table_files_unreferenced",
        "Unwind tables kept loaded with no process using them, for the next one",
        None,
        ConstGauge::new(t.registry.files_unreferenced),
    )?;
    emit(
        e,
        "unwind_table_reuses",
        "Processes whose file's unwind table was already built (a rebuild saved)",
        None,
        ConstCounter::new(t.registry.reuses),
    )?;
    emit(
        e,
        "unwind_table_out_of_room",
        "Unwind tables refused for lack of room within the budget",
        None,
        ConstCounter::new(t.registry.out_of_room),
    )?;
    emit(
        e,
        "unwind_table_build",
        "Time spent building and loading unwind tables (loader thread)",
        Some(&Unit::Seconds),
        ConstCounter::new(t.busy.as_secs_f64()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiler::WaitTotals;

    #[test]
    fn renders_every_metric_from_the_snapshot() {
        let mut snapshot = Snapshot::default();
        snapshot.pipeline.samples = 1234;
        snapshot.pipeline.capture.user_stack_errors = 7;
        snapshot.pipeline.stacks = 42;
        snapshot.pipeline.off_cpu_waits = WaitTotals {
            measured: 5000,
            nanos: 2_500_000_000,
            kept: 400,
        };
        snapshot.pipeline.kernel_lock_waits = WaitTotals {
            measured: 70,
            nanos: 250_000_000,
            kept: 7,
        };
        snapshot.agent.sent.exported_profiles = 3;
        snapshot.agent.sent.bytes_sent = 4096;
        snapshot.agent.sent.dropped.profiles = 2;
        snapshot.queue_bytes = 100;
        snapshot.pipeline.capture.files.recorded = 71;
        snapshot.pipeline.capture.unresolved.process_gone = 8;
        snapshot.pipeline.capture.links.linked = 33;
        snapshot.pipeline.capture.memory.calls = 600;
        snapshot.pipeline.capture.memory.untracked = 4;
        let unwind = &mut snapshot.pipeline.capture.unwind;
        unwind.unwound = 900;
        unwind.no_tables = 100;
        unwind.frame_pointer_steps = 12;
        unwind.ended = 880;
        unwind.read_errors = 5;
        unwind.no_rule = 4;
        unwind.no_progress = 2;
        unwind.truncated = 9;
        let tables = &mut snapshot.pipeline.unwind_tables;
        tables.registry.processes = 17;
        tables.registry.files_loaded = 31;
        tables.registry.rows_used = 1000;
        tables.registry.rows_capacity = 8 << 20;
        tables.registry.evictions = 6;
        tables.registry.out_of_room = 1;
        tables.queued = 3;
        tables.tables_built = 40;
        tables.build_errors = 2;
        tables.busy = std::time::Duration::from_millis(1250);
        snapshot.own = OwnUsage {
            cpu_seconds: 1.5,
            rss_bytes: 10 << 20,
            memory: MemoryParts {
                anonymous: 6 << 20,
                file: 3 << 20,
                shmem: 1 << 20,
                bpf_maps: 12 << 20,
            },
        };
        let without_budget = Metrics::new(Arc::new(move || snapshot)).render();
        assert!(
            !without_budget.contains("sampling_frequency"),
            "no budget, no frequency metrics:\n{without_budget}"
        );
        snapshot.pipeline.overhead = crate::profiler::OverheadStats {
            max_cpu_share: 0.0025,
            cpu_share: 0.002,
            frequency_hz: 42,
            lowest_frequency_hz: 23,
            frequency_changes: 5,
        };
        snapshot.pipeline.drains = crate::profiler::DrainCounts {
            scheduled: 30,
            early: 2,
            window: 6,
            interval: std::time::Duration::from_secs(4),
        };
        let text = Metrics::new(Arc::new(move || snapshot)).render();
        for line in [
            "hostprof_drains_total{cause=\"scheduled\"} 30",
            "hostprof_drains_total{cause=\"early\"} 2",
            "hostprof_drains_total{cause=\"window\"} 6",
            "hostprof_drain_interval_seconds 4.0",
            "hostprof_samples_total 1234",
            "hostprof_samples_dropped_total{reason=\"user_stack_error\"} 7",
            "hostprof_samples_dropped_total{reason=\"map_full\"} 0",
            "hostprof_stacks 42",
            "hostprof_off_cpu_intervals_total 5000",
            "hostprof_off_cpu_blocked_seconds_total 2.5",
            "hostprof_kernel_lock_contentions_total 70",
            "hostprof_off_cpu_intervals_kept_total 400",
            "hostprof_kernel_lock_contentions_kept_total 7",
            "hostprof_kernel_lock_wait_seconds_total 0.25",
            "hostprof_profiles_exported_total 3",
            "hostprof_profiles_dropped_total 2",
            "hostprof_export_sent_bytes_total 4096",
            "hostprof_queue_bytes 100",
            "hostprof_cpu_seconds_total 1.5",
            "hostprof_resident_memory_bytes 10485760",
            "# TYPE hostprof_memory_bytes gauge",
            "hostprof_memory_bytes{component=\"anonymous\"} 6291456",
            "hostprof_memory_bytes{component=\"file\"} 3145728",
            "hostprof_memory_bytes{component=\"shmem\"} 1048576",
            "hostprof_memory_bytes{component=\"bpf_maps\"} 12582912",
            "# TYPE hostprof_symbol_cache_hits counter",
            "hostprof_symbol_files_unreadable_total 0",
            "hostprof_recorded_files_total{outcome=\"recorded\"} 71",
            "hostprof_recorded_files_total{outcome=\"lost\"} 0",
            "hostprof_unresolved_leaves_total{reason=\"process_gone\"} 8",
            "hostprof_unresolved_leaves_total{reason=\"file_not_open\"} 0",
            "hostprof_trace_link_samples_total{outcome=\"linked\"} 33",
            "hostprof_memory_allocation_calls_total 600",
            "hostprof_memory_allocation_bytes_total 0",
            "hostprof_memory_tracking_losses_total{kind=\"untracked\"} 4",
            "hostprof_memory_tracking_losses_total{kind=\"free_lost\"} 0",
            "hostprof_trace_link_samples_total{outcome=\"dropped\"} 0",
            "hostprof_unwind_samples_total{method=\"tables\"} 900",
            "hostprof_unwind_samples_total{method=\"frame_pointers\"} 100",
            "hostprof_unwind_stops_total{reason=\"end\"} 880",
            "hostprof_unwind_stops_total{reason=\"read_error\"} 5",
            "hostprof_unwind_stops_total{reason=\"no_rule\"} 4",
            "hostprof_unwind_stops_total{reason=\"zero_return\"} 0",
            "hostprof_unwind_stops_total{reason=\"frame_pointer_end\"} 0",
            "hostprof_unwind_stops_total{reason=\"tables_pending\"} 0",
            "hostprof_unwind_stops_total{reason=\"no_progress\"} 2",
            "hostprof_unwind_stops_total{reason=\"truncated\"} 9",
            "hostprof_unwind_frame_pointer_steps_total 12",
            "hostprof_unwind_table_bytes 8000",
            "hostprof_unwind_table_budget_bytes 67108864",
            "# UNIT hostprof_unwind_table_budget_bytes bytes",
            "hostprof_unwind_table_files 31",
            "hostprof_unwind_table_processes 17",
            "hostprof_unwind_tables_queued 3",
            "# TYPE hostprof_unwind_tables_queued gauge",
            "hostprof_unwind_tables_built_total 40",
            "hostprof_unwind_table_build_errors_total 2",
            "hostprof_unwind_table_evictions_total 6",
            "hostprof_unwind_table_out_of_room_total 1",
            "hostprof_unwind_table_build_seconds_total 1.25",
            "# TYPE hostprof_unwind_table_build_seconds counter",
            "hostprof_sampling_frequency_hz 42",
            "hostprof_sampling_frequency_changes_total 5",
            "hostprof_own_cpu_ratio 0.002",
            "hostprof_max_cpu_ratio 0.0025",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn own_usage_is_read() {
        let usage = OwnUsage::read();
        assert!(usage.rss_bytes > 0);
        assert!(usage.cpu_seconds >= 0.0);
        let m = usage.memory;
        assert!(m.anonymous > 0 && m.file > 0, "{m:?}");
        // The parts of the resident set add up to it (both read a moment
        // apart: a few pages may differ).
        let resident = m.anonymous + m.file + m.shmem;
        assert!(
            resident.abs_diff(usage.rss_bytes) < 4 << 20,
            "{m:?} {usage:?}"
        );
    }

    /// The map descriptors found stand until due again or until one of
    /// them is no longer a map's; then every descriptor is looked at.
    #[test]
    fn map_descriptors_are_looked_for_again_when_due_or_stale() {
        use std::cell::Cell;
        use std::time::{Duration, Instant};
        let map = |memlock: u64| format!("map_type:\t1\nmemlock:\t{memlock}\n");
        let is_map = Cell::new(true);
        let fdinfo = |fd: u32| match fd {
            3 => Some(map(100)),
            4 if is_map.get() => Some(map(20)),
            4 => Some("pos:\t0\nflags:\t0100000\n".to_owned()),
            _ => None,
        };
        let scans = Cell::new(0);
        let scan = || {
            scans.set(scans.get() + 1);
            if is_map.get() {
                vec![3, 4]
            } else {
                vec![3]
            }
        };
        let start = Instant::now();
        let mut fds = MapFds {
            scanned: None,
            fds: Vec::new(),
        };
        assert_eq!(fds.memlock(start, fdinfo, scan), 120);
        assert_eq!(
            fds.memlock(start + Duration::from_secs(5), fdinfo, scan),
            120
        );
        assert_eq!(scans.get(), 1, "the descriptors found stand");
        is_map.set(false); // descriptor 4 closed, its number reused by a file
        assert_eq!(
            fds.memlock(start + Duration::from_secs(10), fdinfo, scan),
            100
        );
        assert_eq!(scans.get(), 2, "a stale descriptor: looked for again");
        assert_eq!(fds.memlock(start + MapFds::RESCAN * 2, fdinfo, scan), 100);
        assert_eq!(scans.get(), 3, "due");
        let mut none = MapFds {
            scanned: None,
            fds: Vec::new(),
        };
        assert_eq!(none.memlock(start, fdinfo, Vec::new), 0);
        assert_eq!(
            none.memlock(start, fdinfo, scan),
            100,
            "none found: looked for again"
        );
    }

    #[test]
    fn memory_parts_are_parsed() {
        let status = "Name:\thostprof\nVmRSS:\t   50000 kB\nRssAnon:\t   30000 kB\n\
                      RssFile:\t   19000 kB\nRssShmem:\t    1000 kB\n";
        let parts = MemoryParts::from_status(status);
        assert_eq!(
            (parts.anonymous, parts.file, parts.shmem),
            (30000 * 1024, 19000 * 1024, 1000 * 1024)
        );
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1052\n\
                   map_type:\t1\nkey_size:\t4\nvalue_size:\t8\nmax_entries:\t64\n\
                   map_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t1344\nmap_id:\t7\n";
        assert_eq!(MemoryParts::map_memlock(map), Some(1344));
        let program = "pos:\t0\nflags:\t02000002\nprog_type:\t7\nmemlock:\t4096\n";
        assert_eq!(
            MemoryParts::map_memlock(program),
            None,
            "a program is no map"
        );
        assert_eq!(MemoryParts::map_memlock("pos:\t0\nflags:\t0100000\n"), None);
    }
}
