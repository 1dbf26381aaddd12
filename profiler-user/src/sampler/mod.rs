//! The kernel side, seen from userspace: loads the eBPF object, attaches
//! the programs of each kind asked for (CPU: a CPU-clock perf event on
//! every online CPU; off-CPU: `tp_btf/sched_switch` and `sched_exit_tp` or
//! a kprobe on each `finish_task_switch*`; locks: `tp_btf/contention_begin`
//! and `contention_end`, and the off-CPU programs for user-space locks),
//! and drains their maps.
//!
//! Pure bookkeeping lives in [`drain`], [`off_cpu`] and [`policy`]; the
//! syscalls are made here and in the submodules that own a kind's maps
//! ([`waits`], `process_events`).

mod allocator;
mod bounded;
mod bpf_calls;
pub mod drain;
pub mod heap;
pub mod kernel_btf;
pub mod kernel_names;
mod memory;
pub mod off_cpu;
pub mod policy;
mod process_events;
mod process_maps;
#[cfg(test)]
mod scale;
mod schedule;
pub mod stats;
pub mod trace_context;
mod unwind_maps;
pub mod unwinder;
mod waits;

use std::collections::HashMap as StdHashMap;
use std::io;
use std::time::{Duration, SystemTime};

use aya::maps::{
    Array, HashMap, IterableMap, MapData, MapError, PerCpuArray, ProgramArray, RingBuf,
};
use aya::programs::perf_event::{
    PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
};
use aya::programs::{BtfTracePoint, KProbe, PerfEvent, ProgramError, ProgramFd};
use aya::{Btf, BtfError, Ebpf, EbpfError, EbpfLoader};
use profiler_common::{
    kernel_kind, names, Config, DeepStack, Features, FileOffsets, SampleKey as KernelKey, Stack,
    StackHash, Stat, UNWIND_CHUNK_ROWS,
};

pub use allocator::is_allocator_frame;
pub use drain::{Drained, KindStats, MapSet, RawSample, SampleKey};
pub use kernel_names::{KernelCodeNames, KernelNamesProgram};
pub use memory::AttachError as MemoryAttachError;
pub use off_cpu::{InvalidOffCpuRate, OffCpuRate};
pub use policy::{
    Frequency, InvalidFrequency, InvalidMaxCpu, InvalidMemorySampleBytes, InvalidPageFaultPeriod,
    MaxCpu, MemorySampleBytes, PageFaultPeriod, SamplingPolicy, Target,
};
pub use process_events::{
    ns_per_tick, ExecGenerations, ExecState, FileMapping, KernelExecGenerations, Leader,
    ProcessEvent, ProcessEvents,
};
pub use process_maps::{KernelPythonProcesses, KernelThreadContexts, ProcessMap};
pub use schedule::{DrainCause, DrainCounts, DrainSchedule};
pub use unwind_maps::{KernelUnwindMaps, UnwindMaps};
pub use waits::has_contention_tracepoints;

use crate::kind::ProfileKind;
use unwinder::Unwinder;

use drain::StatCounters;

/// The compiled eBPF object, built by this crate's build script.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

/// Errors from loading, attaching or draining the kernel program.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// The object could not be loaded (verifier, permissions, missing BTF).
    #[error(
        "could not load the eBPF program (hostprof needs root or CAP_BPF+CAP_PERFMON \
         and a kernel with BTF; run `hostprof system-info` to see what is missing)"
    )]
    Load(#[source] EbpfError),
    /// The program was not in the object (a build problem).
    #[error("the eBPF object has no program or map named {0:?}; rebuild hostprof")]
    Missing(&'static str),
    /// The program could not be loaded or attached.
    #[error("could not {action}")]
    Program {
        /// What was being done.
        action: String,
        /// Why it failed.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("BPF map {map} failed")]
    Map {
        /// The map's name.
        map: &'static str,
        /// Why it failed.
        #[source]
        source: MapError,
    },
    /// A drained map could not be read and emptied (batched
    /// lookup-and-delete, Linux 5.6+).
    #[error("could not read and empty the BPF map {map}")]
    Drain {
        /// The map's name.
        map: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A drained map's key or value size is not what this build reads.
    #[error(
        "the BPF map {map} is not laid out as this hostprof reads it; the eBPF object \
         embedded in the binary comes from another build: rebuild hostprof (`cargo build`)"
    )]
    Layout {
        /// The map's name.
        map: &'static str,
        /// What differs.
        #[source]
        source: io::Error,
    },
    /// BPF run-time statistics could not be turned on (for `--max-cpu`).
    #[error(
        "could not turn on BPF run-time statistics (BPF_ENABLE_STATS, Linux 5.8+), which \
         --max-cpu reads the cost of hostprof's kernel programs from"
    )]
    Stats(#[source] aya::sys::SyscallError),
    /// The set of online CPUs could not be read.
    #[error("could not read the online CPUs from {path}")]
    OnlineCpus {
        /// The file read.
        path: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The new-process ring buffer could not be registered with the runtime.
    #[error("could not poll the new-process ring buffer")]
    Poll(#[source] io::Error),
    /// The kernel's BTF, which the off-CPU switch-out program attaches
    /// through, could not be read.
    #[error(
        "the off-CPU profile needs the kernel's BTF (/sys/kernel/btf/vmlinux, \
         CONFIG_DEBUG_INFO_BTF=y); run `hostprof system-info`, or drop off-cpu from --profiles"
    )]
    Btf(#[source] BtfError),
    /// Neither switch-in hook exists: no `sched_exit_tp` tracepoint and
    /// no `finish_task_switch*` symbol.
    #[error(
        "the off-CPU profile needs the sched_exit_tp tracepoint (Linux 6.16+) or a kprobe on \
         finish_task_switch, and this kernel has neither; run `hostprof system-info`, or drop \
         off-cpu from --profiles"
    )]
    NoSwitchIn,
    /// /proc/kallsyms could not be read.
    #[error("could not read /proc/kallsyms to find finish_task_switch")]
    Kallsyms(#[source] io::Error),
    /// The kernel has no lock-contention tracepoints.
    #[error(
        "the locks profile needs the kernel's contention_begin and contention_end \
         tracepoints (Linux 5.19+, with BTF), and this kernel has none; run `hostprof \
         system-info`, or drop locks from --profiles"
    )]
    NoContentionTracepoints,
}

/// A loader for the object.
fn loader() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    // The off-CPU task storage has no userspace API in aya; it is only
    // created, never read from here.
    loader.allow_unsupported_maps();
    loader
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> SamplerError {
    move |source| SamplerError::Map { map, source }
}

/// Entries of a map whose kind is off: a token (an LRU map wants some per
/// CPU list).
const OFF_MAP_ENTRIES: u32 = 64;

/// Entries of each `DEEP_STACKS_*` map: stacks deeper than 127 frames are
/// few, and each takes 4 KiB as it is added (the kernel program counts
/// one as four short ones towards a drain request).
const DEEP_STACKS_ROOM: u32 = 4_096;

/// Capacity of a map that gets at most `per_cpu` entries per second on
/// each CPU: room for four seconds on every CPU (each distinct at worst),
/// at least 16 Ki.
fn map_capacity(cpus: usize, per_cpu: u64) -> u32 {
    let per_drain = cpus as u64 * per_cpu * 4;
    per_drain.clamp(16_384, 1 << 20) as u32
}

/// Entries of the LRU maps keyed by process or thread whose eviction costs
/// only work (`KNOWN_PROCESSES`, `PYTHON_THREADS`), for a host with
/// `tasks` threads on `cpus` CPUs. An LRU map is allocated whole at load
/// (~80 bytes an entry and per-CPU free lists), so it is sized to the host
/// rather than to the largest: twice the host's threads at start, at least
/// 128 a CPU (so each CPU's free list is not starved), 2 Ki to 16 Ki. A
/// host that grows past it only evicts: an evicted process is announced
/// again, an evicted Python thread searched again. `EXEC_GEN` keeps its
/// 16 Ki: every exec and exit adds to it, and an evicted generation is
/// lost (see profiler-ebpf's `exec.rs`).
fn lru_entries(tasks: u64, cpus: usize) -> u32 {
    let wanted = tasks.saturating_mul(2).max(cpus as u64 * 128);
    wanted
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
        .clamp(2048, 16_384) as u32
}

/// Threads on the host now (running or not): the total of `/proc/loadavg`'s fourth field
/// (`running/total`); `None` when it cannot be read.
fn host_tasks() -> Option<u64> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    tasks_of_loadavg(&loadavg)
}

fn tasks_of_loadavg(loadavg: &str) -> Option<u64> {
    loadavg
        .split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()
}

/// What [`Sampler::start`] hands back.
pub struct Started {
    /// The sampler.
    pub sampler: Sampler,
    /// Processes sampled for the first time, and files of sampled frames.
    pub events: ProcessEvents,
    /// Each process's exec generation.
    pub exec_generations: KernelExecGenerations,
    /// With the table unwinder: the kernel maps tables go to, and the
    /// number of rows they hold (for a [`crate::unwind::loader::TableLoader`]).
    pub unwind_maps: Option<(KernelUnwindMaps, u32)>,
    /// Whether samples are looked up in the trace-context map, and where.
    pub trace_map: trace_context::TraceMapState,
    /// Where to say which processes publish thread context (`None`: the
    /// kernel's thread pointer offset is unknown, or turned off).
    pub thread_contexts: Option<KernelThreadContexts>,
    /// Where to say which processes run CPython and how to walk their
    /// frames (`None`: turned off, frame pointers only, or the kernel
    /// cannot tell a task's thread pointer or track exec).
    pub python_processes: Option<KernelPythonProcesses>,
    /// The kernel's names of kernel code addresses (`None`: the program
    /// did not load; kernel frames are named from `/proc/kallsyms`).
    pub kernel_names: Option<KernelNamesProgram>,
}

/// A loaded, attached sampler.
pub struct Sampler {
    ebpf: Ebpf,
    config_map: Array<MapData, Config>,
    config: Config,
    stats: PerCpuArray<MapData, u64>,
    counts: [HashMap<MapData, KernelKey, u64>; 2],
    stacks: [HashMap<MapData, StackHash, Stack>; 2],
    deep_stacks: [HashMap<MapData, StackHash, DeepStack>; 2],
    /// How the drained maps' entries are laid out (the same in both sets),
    /// read once.
    layouts: Layouts,
    /// The kernel's fill counters of the sets and the maps' room.
    fill: schedule::SetFill,
    known: HashMap<MapData, u32, u8>,
    /// The processes sampled with a `Target::Pids` selection.
    pid_filter: HashMap<MapData, u32, u8>,
    /// Kept open: the kernel empties a program array when its last
    /// userspace handle closes.
    _tail_calls: (
        ProgramArray<MapData>,
        [ProgramArray<MapData>; 2],
        ProgramArray<MapData>,
    ),
    active: MapSet,
    /// The kinds attached, each with its counters at the last drain.
    kinds: Vec<(ProfileKind, StatCounters)>,
    /// Without the off-CPU kind: its block of counters at the last drain,
    /// where the exit and exec programs count the files they look up
    /// (reported with the CPU kind).
    lifecycle: Option<StatCounters>,
    attached: bool,
    /// CPU time one sample stands for.
    period_ns: u64,
    /// The online CPUs, each with a CPU-clock event.
    cpus: Vec<u32>,
    /// The CPU program's links, one per CPU (none without the CPU kind).
    cpu_links: Vec<PerfEventLinkId>,
    /// A CPU sampling frequency to switch to at the next drain.
    next_frequency: Option<Frequency>,
    /// Held while BPF run-time statistics are wanted (`--max-cpu`).
    run_time_stats: Option<std::os::fd::OwnedFd>,
    /// Page faults one page-fault sample stands for.
    fault_period: u64,
    /// The kinds that measure waits (off-CPU, locks) attached: their
    /// adaptive periods.
    waits: Vec<waits::WaitState>,
    /// Their kept waits.
    wait_events: waits::WaitEvents,
    /// The memory profile's probes and heap, when attached.
    memory: Option<memory::Memory>,
    /// When the last drain flipped the map sets: just before, and once
    /// the programs that read the old set had finished (at start: as the
    /// programs were attached, then as `select`/`select_all` started
    /// sampling).
    flipped: (SystemTime, SystemTime),
}

/// The kernel's index of a kind (its block of counters in `STATS`).
fn kernel_index(kind: ProfileKind) -> u32 {
    match kind {
        ProfileKind::Cpu => kernel_kind::CPU,
        ProfileKind::OffCpu => kernel_kind::OFF_CPU,
        ProfileKind::Locks => kernel_kind::LOCKS,
        ProfileKind::PageFaults => kernel_kind::PAGE_FAULTS,
        ProfileKind::Memory => kernel_kind::MEMORY,
    }
}

impl Sampler {
    /// Loads the object, applies `policy` and attaches the programs of
    /// `kinds` (each at most once; empty means CPU). The locks kind
    /// attaches the off-CPU programs too: user-space lock waits are
    /// off-CPU waits. The programs start with no process selected: they
    /// record nothing until [`Sampler::select`] or [`Sampler::select_all`].
    ///
    /// Also returns the stream of processes sampled for the first time,
    /// and, with the table unwinder, the maps its tables go to.
    pub fn start(policy: &SamplingPolicy, kinds: &[ProfileKind]) -> Result<Started, SamplerError> {
        let cpu = kinds.is_empty() || kinds.contains(&ProfileKind::Cpu);
        let locks = kinds.contains(&ProfileKind::Locks);
        let off_cpu = locks || kinds.contains(&ProfileKind::OffCpu);
        let faults = kinds.contains(&ProfileKind::PageFaults);
        let memory = kinds.contains(&ProfileKind::Memory);
        let cpus = aya::util::online_cpus()
            .map_err(|(path, source)| SamplerError::OnlineCpus { path, source })?;
        let cpu_rate = if cpu {
            u64::from(policy.frequency.hz())
        } else {
            0
        };
        let off_cpu_rate = if off_cpu {
            u64::from(policy.off_cpu_max_rate.per_second())
        } else {
            0
        };
        // Page faults come at the host's pace, not a set rate: room for
        // the CPU profile's rate of distinct samples again.
        let fault_rate = if faults {
            u64::from(Frequency::DEFAULT.hz())
        } else {
            0
        };
        let mut loader = loader();
        let counts_room = map_capacity(cpus.len(), cpu_rate + fault_rate);
        for name in names::COUNTS {
            loader.map_max_entries(name, counts_room);
        }
        // The locks kind's budget is the off-CPU one (`--off-cpu-max-rate`).
        let lock_rate = if locks { off_cpu_rate } else { 0 };
        let wait_ring = waits::ring_bytes(cpus.len(), off_cpu_rate + lock_rate);
        loader.map_max_entries(names::WAIT_EVENTS, wait_ring);
        // Sampled allocations come at the selected processes' pace: room
        // for the CPU profile's rate again.
        let memory_rate = if memory {
            u64::from(Frequency::DEFAULT.hz())
        } else {
            0
        };
        let stacks_room = map_capacity(
            cpus.len(),
            cpu_rate + fault_rate + off_cpu_rate + lock_rate + memory_rate,
        );
        for name in names::STACKS {
            loader.map_max_entries(name, stacks_room);
        }
        for name in names::DEEP_STACKS {
            loader.map_max_entries(name, DEEP_STACKS_ROOM);
        }
        let room = schedule::Room {
            counts: counts_room,
            stacks: stacks_room,
            deep_stacks: DEEP_STACKS_ROOM,
            waits: if off_cpu {
                waits::ring_events(wait_ring)
            } else {
                0
            },
        };
        loader.map_max_entries(names::MEMORY_LIVE, memory::DEFAULT_MAX_LIVE);
        // Unreadable /proc/loadavg: the largest size.
        let lru = lru_entries(host_tasks().unwrap_or(u64::MAX), cpus.len());
        for name in [names::KNOWN_PROCESSES, names::PYTHON_THREADS] {
            loader.map_max_entries(name, lru);
        }
        // A hash map's buckets and an LRU map's entries are allocated at
        // load: the maps of kinds that are off get a token size.
        let python = policy.python && matches!(policy.unwinder, Unwinder::Tables(_));
        let off = [
            (
                memory,
                &[
                    names::MEMORY_LIVE,
                    names::MEMORY_FREES,
                    names::MEMORY_PROCESSES,
                ][..],
            ),
            (locks, &[names::LOCK_START][..]),
            (
                python,
                &[names::PYTHON_PROCESSES, names::PYTHON_THREADS][..],
            ),
            (policy.thread_context, &[names::THREAD_CONTEXTS][..]),
        ];
        for (_, maps) in off.iter().filter(|(on, _)| !on) {
            for name in *maps {
                loader.map_max_entries(name, OFF_MAP_ENTRIES);
            }
        }
        // A ring is allocated whole: one page unless the kind is on.
        loader.map_max_entries(
            names::MEMORY_EVENTS,
            if memory { memory::RING_BYTES } else { 4096 },
        );
        // The chunk-pc array is allocated whole (4 bytes a chunk), the
        // rows as chunks are used; nothing without tables.
        let table_chunks = match policy.unwinder {
            Unwinder::Tables(budget) => budget.rows() / UNWIND_CHUNK_ROWS,
            Unwinder::FramePointers => 1,
        }
        .max(1);
        loader.map_max_entries(names::UNWIND_ROWS, table_chunks);
        loader.map_max_entries(names::UNWIND_CHUNK_PCS, table_chunks);
        let trace_map = trace_context::prepare(&mut loader, &policy.trace_context_map);
        // Fixed for the programs' life: the verifier reads them as
        // constants and skips the code they rule out.
        let features: &'static u32 = match policy.unwinder {
            Unwinder::Tables(_) => &Features::TABLES,
            Unwinder::FramePointers => &0,
        };
        loader.override_global(names::FEATURES, features, true);
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(SamplerError::Load)?;
        // Parsed into `ebpf`: its 2 MiB need not stay resident.
        // SAFETY: `include_bytes_aligned!` puts the object in the binary's
        // read-only data, a private read-only file mapping.
        unsafe { crate::memory::release_file_pages(EBPF_OBJECT) };
        // Nothing is recorded before this: the programs attach below.
        let attaching = SystemTime::now();

        let kernel_names = KernelNamesProgram::load(&mut ebpf)
            .inspect_err(|err| log::info!("kernel frames are named from /proc/kallsyms: {err}"))
            .ok();
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(SamplerError::Missing(name));
        let mut config_map: Array<_, Config> = take(names::CONFIG)?
            .try_into()
            .map_err(map_err(names::CONFIG))?;
        let stats = take(names::STATS)?
            .try_into()
            .map_err(map_err(names::STATS))?;
        let pid_filter: HashMap<_, u32, u8> = take(names::PID_FILTER)?
            .try_into()
            .map_err(map_err(names::PID_FILTER))?;
        let known = take(names::KNOWN_PROCESSES)?
            .try_into()
            .map_err(map_err(names::KNOWN_PROCESSES))?;
        let unwind_maps = KernelUnwindMaps::new(
            take(names::UNWIND_ROWS)?,
            take(names::UNWIND_CHUNK_PCS)?,
            take(names::UNWIND_PROCESSES)?
                .try_into()
                .map_err(map_err(names::UNWIND_PROCESSES))?,
        );
        let mut tail_calls: ProgramArray<MapData> = take(names::TAIL_CALLS)?
            .try_into()
            .map_err(map_err(names::TAIL_CALLS))?;
        let mut off_cpu_tail_calls: [ProgramArray<MapData>; 2] = [
            take(names::OFF_CPU_TAIL_CALLS)?
                .try_into()
                .map_err(map_err(names::OFF_CPU_TAIL_CALLS))?,
            take(names::OFF_CPU_KPROBE_TAIL_CALLS)?
                .try_into()
                .map_err(map_err(names::OFF_CPU_KPROBE_TAIL_CALLS))?,
        ];
        let wait_events = waits::WaitEvents::new(
            take(names::WAIT_EVENTS)?
                .try_into()
                .map_err(map_err(names::WAIT_EVENTS))?,
        );
        let mut lock_tail_calls: ProgramArray<MapData> =
            take(names::LOCK_TAIL_CALLS)?
                .try_into()
                .map_err(map_err(names::LOCK_TAIL_CALLS))?;
        let thread_context_map = take(names::THREAD_CONTEXTS)?;
        let python_map = take(names::PYTHON_PROCESSES)?;
        let ring: RingBuf<MapData> = take(names::PROCESS_EVENTS)?
            .try_into()
            .map_err(map_err(names::PROCESS_EVENTS))?;
        let exec_generations = KernelExecGenerations::new(take(names::EXEC_GEN)?)?;
        let counts = [
            take(names::COUNTS[0])?
                .try_into()
                .map_err(map_err(names::COUNTS[0]))?,
            take(names::COUNTS[1])?
                .try_into()
                .map_err(map_err(names::COUNTS[1]))?,
        ];
        let stacks = [
            take(names::STACKS[0])?
                .try_into()
                .map_err(map_err(names::STACKS[0]))?,
            take(names::STACKS[1])?
                .try_into()
                .map_err(map_err(names::STACKS[1]))?,
        ];
        let deep_stacks = [
            take(names::DEEP_STACKS[0])?
                .try_into()
                .map_err(map_err(names::DEEP_STACKS[0]))?,
            take(names::DEEP_STACKS[1])?
                .try_into()
                .map_err(map_err(names::DEEP_STACKS[1]))?,
        ];
        let layouts = Layouts::of(&counts, &stacks, &deep_stacks)?;
        let fill = schedule::SetFill::new(take(names::SET_FILL)?, room)?;

        let mut config = Config {
            active_set: MapSet::Zero.index() as u32,
            flags: 0,
            off_cpu_period_ns: off_cpu::INITIAL_PERIOD_NS,
            lock_period_ns: off_cpu::INITIAL_PERIOD_NS,
            files: FileOffsets::default(),
            task_fsbase: 0,
            task_tgid: 0,
            task_mm: 0,
            drain_soon_at: room.drain_soon_at(cpus.len()),
            task_group_leader: 0,
            task_start_boottime: 0,
            task_comm: 0,
            ns_per_tick: 0,
        };
        if !policy.include_idle {
            config.flags |= Config::SKIP_IDLE;
        }
        if trace_map.is_on() {
            config.flags |= Config::TRACE_CONTEXT_MAP;
        }
        // Read once for the offsets and for aya's BTF below (each read
        // copies 5 MiB out of the kernel).
        let vmlinux = kernel_btf::read_vmlinux()
            .map_err(|err| log::info!("kernel offsets unknown: {err}"))
            .ok();
        let offsets = vmlinux.as_deref().and_then(|data| {
            kernel_btf::offsets(data)
                .map_err(|err| log::info!("kernel offsets unknown: {err}"))
                .ok()
        });
        let task_fsbase = match offsets.as_ref().map(|o| &o.task_fsbase) {
            Some(Ok(task_fsbase)) => Some(*task_fsbase),
            Some(Err(err)) => {
                if policy.thread_context || policy.python {
                    log::warn!("thread context and Python frames not read: {err}");
                }
                None
            }
            None => None,
        };
        if let Some(task_fsbase) = task_fsbase {
            config.task_fsbase = task_fsbase;
        }
        match offsets.as_ref().map(|o| &o.task_tgid) {
            Some(Ok(task_tgid)) => config.task_tgid = *task_tgid,
            Some(Err(err)) if memory => {
                log::warn!("memory profile: forks not followed (children inherit nothing): {err}")
            }
            _ => {}
        }
        if let Some(Ok(task_mm)) = offsets.as_ref().map(|o| &o.task_mm) {
            config.task_mm = *task_mm;
        }
        // Set below, once exec and exit tracking are known.
        let leader_offsets = match offsets.as_ref().map(|o| &o.leader) {
            Some(Ok(leader)) => Some(*leader),
            Some(Err(err)) => {
                log::info!(
                    "new processes not announced with their start time and name \
                     (read from /proc/PID/stat instead): {err}"
                );
                None
            }
            None => None,
        };
        let mut thread_contexts = match task_fsbase {
            Some(_) if policy.thread_context => {
                config.flags |= Config::THREAD_CONTEXT;
                Some(KernelThreadContexts::thread_contexts(thread_context_map)?)
            }
            _ => None,
        };
        // Python frames are appended by the table unwinder.
        let mut python_processes = match task_fsbase {
            Some(_) if policy.python && matches!(policy.unwinder, Unwinder::Tables(_)) => {
                config.flags |= Config::PYTHON;
                Some(KernelPythonProcesses::python_processes(python_map)?)
            }
            _ => None,
        };
        // Nothing is sampled until [`Sampler::select`] (the selected
        // processes) or [`Sampler::select_all`] (every process), called
        // once the unwind tables of what is running are in.
        config.flags |= Config::FILTER_PIDS;
        config_map
            .set(0, config, 0)
            .map_err(map_err(names::CONFIG))?;

        // The unwinding programs need kernel 5.17+ (bpf_loop); with frame
        // pointers only they are not loaded and their slots stay empty.
        let tables = matches!(policy.unwinder, Unwinder::Tables(_));
        // aya's BTF, parsed only for the kinds with BTF tracepoints
        // (off-CPU, locks, the memory profile's forks): the exec and exit
        // programs are raw tracepoints, so a CPU capture parses none of its
        // own (aya's loader parsed one, which it keeps to itself). Without
        // the kernel's BTF there are no file offsets, so no file recording
        // (and no off-CPU profile, which says so below); exec generations
        // still move (preflight refuses to start without the BTF file
        // anyway).
        let parsed = std::cell::OnceCell::new();
        let btf = || {
            parsed
                .get_or_init(|| {
                    vmlinux
                        .as_deref()
                        .and_then(|data| Btf::parse(data, aya::Endianness::default()).ok())
                })
                .as_ref()
        };
        let file_offsets = offsets.and_then(|o| {
            o.files
                .map_err(|err| log::info!("file recording off: {err}"))
                .ok()
        });
        let mut files = file_offsets.is_some();
        let exec_tracked = process_events::attach_exec(&mut ebpf);
        // The CPU and page-fault programs share their tail calls.
        if cpu || faults {
            if files {
                files &= process_events::load_files_program(
                    &mut ebpf,
                    process_events::FilesHook::Cpu(&mut tail_calls),
                )?;
            }
            if tables {
                for (name, slot) in [
                    (names::UNWIND_PROGRAM, names::TAIL_UNWIND_USER),
                    (names::STORE_PROGRAM, names::TAIL_UNWIND_STORE),
                ] {
                    let fd = tail_called_program(&mut ebpf, name)?;
                    tail_calls
                        .set(slot, &fd, 0)
                        .map_err(map_err(names::TAIL_CALLS))?;
                }
            }
        }
        let cpu_links = if cpu {
            attach_cpu(&mut ebpf, &cpus, policy.frequency)?
        } else {
            Vec::new()
        };
        if faults {
            attach_faults(&mut ebpf, &cpus, policy.page_fault_period)?;
        }
        if off_cpu {
            files &= attach_off_cpu(&mut ebpf, btf(), tables, files, &mut off_cpu_tail_calls)?;
        }
        if locks {
            let btf = btf().ok_or(SamplerError::NoContentionTracepoints)?;
            files &= waits::attach_locks(&mut ebpf, btf, tables, files, &mut lock_tail_calls)?;
        }
        // Loaded here, attached to each selected process later
        // ([`Sampler::attach_memory`]).
        let memory = if memory {
            let (memory, loaded) = memory::Memory::start(
                &mut ebpf,
                btf(),
                u64::from(policy.memory_sample_bytes.bytes()),
                tables,
                files,
            )?;
            files &= loaded;
            Some(memory)
        } else {
            None
        };
        // The kernel's BTF is not needed past here: freed before sampling.
        drop(parsed);
        drop(vmlinux);
        let mut exits_tracked = false;
        if let (true, Some(offsets)) = (files, file_offsets) {
            exits_tracked = process_events::attach_files_exit(&mut ebpf);
            config.files = offsets;
            config.flags |= Config::RECORD_FILES;
            config_map
                .set(0, config, 0)
                .map_err(map_err(names::CONFIG))?;
        }
        // A new process's start and name as the kernel announces them
        // stand for its `stat` only where a snapshot can tell they are of
        // the process and image it reads (the generation bumped at every
        // exec and exit), and where `stat` counts from the same boot time
        // (hostprof in no time namespace that offsets it). So does the
        // start an exit is stamped with.
        if let Some(leader) = leader_offsets {
            if exec_tracked
                && exits_tracked
                && config.flags & Config::RECORD_FILES != 0
                && process_events::boottime_offset_is_zero()
            {
                config.task_group_leader = leader.group_leader;
                config.task_start_boottime = leader.start_boottime;
                config.task_comm = leader.comm;
                config.ns_per_tick = u32::try_from(process_events::ns_per_tick()).unwrap_or(0);
                config_map
                    .set(0, config, 0)
                    .map_err(map_err(names::CONFIG))?;
            } else {
                log::info!(
                    "new processes read from /proc/PID/stat: exec and exit are not tracked \
                     here, or hostprof runs in a time namespace with a boot-time offset"
                );
            }
        }
        // A thread-context location or a Python process is only read in
        // the process image it was found in: that needs the generation
        // bumped at every exec and exit (the exit bump is the files
        // program's).
        if (thread_contexts.is_some() || python_processes.is_some())
            && !(exec_tracked && config.flags & Config::RECORD_FILES != 0)
        {
            log::warn!(
                "thread context and Python frames not read: this kernel cannot track exec \
                 and exit here (needs raw_tp/sched_process_exec and bpf_find_vma, Linux 5.17+)"
            );
            thread_contexts = None;
            python_processes = None;
            config.flags &= !(Config::THREAD_CONTEXT | Config::PYTHON);
            config_map
                .set(0, config, 0)
                .map_err(map_err(names::CONFIG))?;
        }
        let mut attached_kinds = Vec::new();
        if cpu {
            attached_kinds.push((ProfileKind::Cpu, StatCounters::default()));
        }
        if off_cpu {
            attached_kinds.push((ProfileKind::OffCpu, StatCounters::default()));
        }
        if locks {
            attached_kinds.push((ProfileKind::Locks, StatCounters::default()));
        }
        if faults {
            attached_kinds.push((ProfileKind::PageFaults, StatCounters::default()));
        }
        if memory.is_some() {
            attached_kinds.push((ProfileKind::Memory, StatCounters::default()));
        }
        let budget = u64::from(policy.off_cpu_max_rate.per_second()) * cpus.len() as u64;
        let mut wait_states = Vec::new();
        if off_cpu {
            wait_states.push(waits::WaitState::new(ProfileKind::OffCpu, budget));
        }
        if locks {
            wait_states.push(waits::WaitState::new(ProfileKind::Locks, budget));
        }

        let mut sampler = Sampler {
            ebpf,
            config_map,
            config,
            stats,
            counts,
            stacks,
            deep_stacks,
            layouts,
            fill,
            known,
            pid_filter,
            _tail_calls: (tail_calls, off_cpu_tail_calls, lock_tail_calls),
            active: MapSet::Zero,
            kinds: attached_kinds,
            lifecycle: None,
            attached: true,
            period_ns: policy.frequency.period_ns(),
            cpus,
            cpu_links,
            next_frequency: None,
            run_time_stats: None,
            fault_period: u64::from(policy.page_fault_period.faults()),
            waits: wait_states,
            wait_events,
            memory,
            flipped: (attaching, attaching),
        };
        // The counters start at zero with the freshly created maps: no
        // baseline to read (reading one after attaching would leave out
        // the samples taken meanwhile, which the drains do see).
        if !off_cpu {
            sampler.lifecycle = Some(StatCounters::default());
        }
        log_verifier_work(&sampler.ebpf);
        let events = ProcessEvents::new(ring)?;
        let unwind_maps = match policy.unwinder {
            Unwinder::Tables(_) => Some((unwind_maps, table_chunks * UNWIND_CHUNK_ROWS)),
            Unwinder::FramePointers => None,
        };
        Ok(Started {
            sampler,
            events,
            exec_generations,
            unwind_maps,
            trace_map,
            thread_contexts,
            python_processes,
            kernel_names,
        })
    }

    /// Takes every sample recorded since the previous drain.
    ///
    /// Flips the program to the other map set, waits for in-flight program
    /// runs to finish, then reads and empties the set it just left.
    pub fn drain(&mut self) -> Result<Drained, SamplerError> {
        // A new CPU frequency: the old events stop before the flip and the
        // new ones start after it, so each sample of the drained set
        // stands for the old period and each of the next set for the new
        // one (the CPU profile loses the few milliseconds between).
        let frequency = self.next_frequency.take();
        if frequency.is_some() {
            self.detach_cpu_events();
        }
        let drained_set = self.active;
        let before = SystemTime::now();
        self.switch_to(drained_set.other())?;
        quiesce();
        self.flipped = (before, SystemTime::now());
        let samples = self.take_set(drained_set)?;
        let drained = self.drained(samples);
        if let Some(frequency) = frequency {
            // The drained samples are kept whatever happens here.
            if let Err(err) = self.attach_cpu_events(frequency) {
                let cause = std::error::Error::source(&err)
                    .map(|source| format!(": {source}"))
                    .unwrap_or_default();
                log::error!(
                    "CPU sampling stopped: its perf events could not be attached again \
                     ({err}{cause}); the other profile kinds go on"
                );
            }
        }
        drained
    }

    /// Samples CPU time at `frequency` from the next drain on (no effect
    /// without the CPU kind).
    pub fn set_frequency(&mut self, frequency: Frequency) {
        if !self.cpu_links.is_empty() {
            self.next_frequency = Some(frequency);
        }
    }

    /// The map set being filled ([`MapSet::index`]).
    pub fn filling(&self) -> usize {
        self.active.index()
    }

    /// How full the fullest map of the last drained set was, 0 to 1 (a
    /// [`DrainSchedule`] takes it).
    pub fn fill(&self) -> f64 {
        self.fill.last()
    }

    /// CPU time one CPU sample of the set being filled stands for.
    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    fn detach_cpu_events(&mut self) {
        let links = std::mem::take(&mut self.cpu_links);
        if let Ok(program) = perf_program(&mut self.ebpf, names::PROGRAM) {
            for link in links {
                if let Err(err) = program.detach(link) {
                    log::warn!("detaching a CPU-clock event: {err}");
                }
            }
        }
    }

    /// Attaches the CPU events at `frequency`, or again at the old one if
    /// that fails.
    fn attach_cpu_events(&mut self, frequency: Frequency) -> Result<(), SamplerError> {
        let hz = 1_000_000_000 / self.period_ns.max(1);
        let old = Frequency::new(hz as u32).unwrap_or(Frequency::DEFAULT);
        // A CPU gone offline since the last attach has no event to open
        // (ENODEV), and would fail every CPU's: attach to those online now.
        match aya::util::online_cpus() {
            Ok(online) if !online.is_empty() => self.cpus = online,
            Ok(_) => {}
            Err((path, err)) => log::debug!("reading {path}: {err}; attaching to the same CPUs"),
        }
        match attach_cpu_events(&mut self.ebpf, &self.cpus, frequency) {
            Ok(links) => {
                self.cpu_links = links;
                self.period_ns = frequency.period_ns();
                Ok(())
            }
            Err(err) => {
                log::warn!("CPU sampling stays at {old}: {err}");
                self.cpu_links = attach_cpu_events(&mut self.ebpf, &self.cpus, old)?;
                Ok(())
            }
        }
    }

    /// Turns on the kernel's run-time statistics of BPF programs for as
    /// long as the sampler lives (they cost every BPF program on the host
    /// two clock reads a run).
    pub fn count_run_time(&mut self) -> Result<(), SamplerError> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(SamplerError::Stats)?;
        self.run_time_stats = Some(fd);
        Ok(())
    }

    /// Time the kernel has spent running this sampler's programs, with
    /// [`Sampler::count_run_time`] on (tail-called programs' time counts
    /// in the program that called them).
    pub fn run_time(&self) -> Duration {
        self.ebpf
            .programs()
            .filter_map(|(_, program)| program.info().ok())
            .map(|info| info.run_time())
            .sum()
    }

    /// Stops sampling and returns everything not yet drained.
    pub fn stop(&mut self) -> Result<Drained, SamplerError> {
        if self.attached {
            let detach = |action: &str| {
                let action = action.to_owned();
                move |source| SamplerError::Program { action, source }
            };
            for &(kind, _) in &self.kinds {
                match kind {
                    ProfileKind::Cpu => perf_program(&mut self.ebpf, names::PROGRAM)?
                        .unload()
                        .map_err(detach("detach the perf_event program"))?,
                    ProfileKind::PageFaults => perf_program(&mut self.ebpf, names::FAULTS_PROGRAM)?
                        .unload()
                        .map_err(detach("detach the page-fault program"))?,
                    ProfileKind::OffCpu => {
                        // Only the hook in use is loaded.
                        let loaded = |result| match result {
                            Err(ProgramError::NotLoaded) => Ok(()),
                            other => other,
                        };
                        loaded(btf_tracepoint(&mut self.ebpf, names::OFF_CPU_SWITCH_IN)?.unload())
                            .map_err(detach("detach the off-CPU switch-in tracepoint"))?;
                        loaded(kprobe(&mut self.ebpf, names::OFF_CPU_SWITCH_IN_KPROBE)?.unload())
                            .map_err(detach("detach the off-CPU switch-in kprobe"))?;
                        switch_out_program(&mut self.ebpf)?
                            .unload()
                            .map_err(detach("detach the off-CPU sched_switch program"))?;
                    }
                    ProfileKind::Locks => {
                        for name in [names::LOCK_END, names::LOCK_BEGIN] {
                            btf_tracepoint(&mut self.ebpf, name)?
                                .unload()
                                .map_err(detach("detach the lock contention programs"))?;
                        }
                    }
                    ProfileKind::Memory => {
                        if let Some(memory) = &mut self.memory {
                            for pid in memory.attached() {
                                memory.detach(&mut self.ebpf, pid);
                            }
                        }
                    }
                }
            }
            self.attached = false;
        }
        let before = SystemTime::now();
        quiesce();
        self.flipped = (before, SystemTime::now());
        // Both sets may hold samples now: the active one, and none other
        // (the inactive set is always empty between drains), but draining
        // both keeps this correct if a previous drain failed half-way.
        let mut samples = self.take_set(self.active)?;
        samples.extend(self.take_set(self.active.other())?);
        self.drained(samples)
    }

    /// Pairs drained samples with each kind's counters since the last
    /// drain, and adapts the off-CPU period to what was kept.
    fn drained(&mut self, samples: Vec<RawSample>) -> Result<Drained, SamplerError> {
        let mut stats = KindStats::new();
        for i in 0..self.kinds.len() {
            let (kind, last) = self.kinds[i];
            let now = self.read_stats(kind)?;
            stats.insert(kind, now.since(&last));
            self.kinds[i].1 = now;
        }
        if let Some(last) = self.lifecycle {
            let now = self.read_stats(ProfileKind::OffCpu)?;
            let files = now.since(&last).files;
            self.lifecycle = Some(now);
            if let Some(cpu) = stats.get_mut(&ProfileKind::Cpu) {
                cpu.files.recorded += files.recorded;
                cpu.files.lost += files.lost;
                cpu.files.lookup_failed += files.lookup_failed;
            }
        }
        let mut adapted = false;
        for state in &mut self.waits {
            if let Some(delta) = stats.get(&state.kind) {
                adapted |= state.adapt(&mut self.config, delta);
            }
        }
        if adapted {
            self.config_map
                .set(0, self.config, 0)
                .map_err(map_err(names::CONFIG))?;
        }
        Ok(Drained { samples, stats })
    }

    /// When the last drain (or [`Sampler::stop`]) flipped the map sets:
    /// just before, and once every program run that wrote the old set had
    /// finished; before the first drain, when sampling started
    /// ([`Sampler::select`], [`Sampler::select_all`]; before either, when
    /// the programs were attached).
    pub fn last_flip(&self) -> (SystemTime, SystemTime) {
        self.flipped
    }

    /// With a `Target::Pids` policy: starts sampling `pids` (nothing of
    /// them was recorded before). The window starts now.
    pub fn select(&mut self, pids: &[u32]) -> Result<(), SamplerError> {
        self.restart_counters()?;
        for pid in pids {
            self.pid_filter
                .insert(pid, 1, 0)
                .map_err(map_err(names::PID_FILTER))?;
        }
        Ok(())
    }

    /// With a `Target::AllProcesses` policy: starts sampling every
    /// process. The window starts now.
    pub fn select_all(&mut self) -> Result<(), SamplerError> {
        self.restart_counters()?;
        self.config.flags &= !Config::FILTER_PIDS;
        self.config_map
            .set(0, self.config, 0)
            .map_err(map_err(names::CONFIG))?;
        Ok(())
    }

    /// As sampling starts (nothing recorded yet, the programs have only
    /// filtered): the first window starts now, its counters from here
    /// (not the samples filtered while the selection was prepared), and
    /// the wait kinds' rate clocks too.
    fn restart_counters(&mut self) -> Result<(), SamplerError> {
        for i in 0..self.kinds.len() {
            self.kinds[i].1 = self.read_stats(self.kinds[i].0)?;
        }
        for state in &mut self.waits {
            state.restart();
        }
        let now = SystemTime::now();
        self.flipped = (now, now);
        Ok(())
    }

    /// Lets the kernel announce `tgids` again the next time they are sampled
    /// (call when they have exited, so a reused pid is snapshotted afresh).
    pub fn forget_processes(&mut self, tgids: &[u32]) {
        for tgid in tgids {
            // Already evicted by the LRU is fine.
            let _ = self.known.remove(tgid);
        }
    }

    /// With the memory profile: probes the allocator of process `pid`
    /// (in image `exec_gen`) unless it is probed in that image already;
    /// true when probes were attached now.
    pub fn attach_memory(&mut self, pid: u32, exec_gen: u32) -> Result<bool, MemoryAttachError> {
        match &mut self.memory {
            Some(memory) if self.attached => memory.attach(&mut self.ebpf, pid, exec_gen),
            _ => Ok(false),
        }
    }

    /// With the memory profile: what is live now, one sample per stack
    /// and age bucket (the in-use half of a window's memory profile; take
    /// it once per window, as it closes).
    pub fn memory_in_use(&self) -> Drained {
        Drained {
            samples: self
                .memory
                .as_ref()
                .map(memory::Memory::in_use_samples)
                .unwrap_or_default(),
            stats: KindStats::new(),
        }
    }

    /// With the memory profile: forgets the live allocations of processes
    /// gone or replaced by an exec (`gone(tgid, exec_gen)`), the probes of
    /// processes that exited, and the forks of processes no longer
    /// `alive`.
    pub fn forget_memory(
        &mut self,
        gone: impl FnMut(u32, u32) -> bool,
        alive: impl Fn(u32) -> bool,
    ) {
        if let Some(memory) = &mut self.memory {
            memory.forget(&mut self.ebpf, gone, alive);
        }
    }

    /// With the memory profile: applies its events so far, so that a child
    /// just forked has what it inherited before it is probed
    /// ([`Self::attach_memory`]).
    pub fn read_memory_events(&mut self) {
        if let Some(memory) = &mut self.memory {
            memory.read_events();
        }
    }

    /// With the memory profile: the children of probed processes forked
    /// since the last call (read with its events), to probe.
    pub fn take_memory_forks(&mut self) -> Vec<u32> {
        self.memory
            .as_mut()
            .map(memory::Memory::take_forked)
            .unwrap_or_default()
    }

    fn switch_to(&mut self, set: MapSet) -> Result<(), SamplerError> {
        self.config.active_set = set.index() as u32;
        self.config_map
            .set(0, self.config, 0)
            .map_err(map_err(names::CONFIG))?;
        self.active = set;
        Ok(())
    }

    /// Reads and empties map set `set` (the kernel writes the other one):
    /// each map in batched lookup-and-delete calls (see
    /// [`bpf_calls::take_all`]).
    fn take_set(&mut self, set: MapSet) -> Result<Vec<RawSample>, SamplerError> {
        let index = set.index();
        let counts_name = names::COUNTS[index];
        let mut entries = Vec::new();
        bpf_calls::take_all(
            self.counts[index].map(),
            counts_name,
            self.layouts.counts,
            |key, count| entries.push(drain::sum_slots(key, count)),
        )
        .map_err(|source| SamplerError::Drain {
            map: counts_name,
            source,
        })?;
        let mut stacks = StdHashMap::new();
        let short_stacks = take_stacks(
            &self.stacks[index],
            names::STACKS[index],
            self.layouts.stacks,
            &mut stacks,
            Stack::frames,
        )?;
        let deep_stacks = take_stacks(
            &self.deep_stacks[index],
            names::DEEP_STACKS[index],
            self.layouts.deep_stacks,
            &mut stacks,
            DeepStack::frames,
        )?;
        let counted = entries.len();
        let (cpu_period, fault_period) = (self.period_ns, self.fault_period);
        let mut samples = drain::assemble_counted(entries, &stacks, |kind| match kind {
            kernel_kind::PAGE_FAULTS => Some((ProfileKind::PageFaults, fault_period)),
            kernel_kind::CPU => Some((ProfileKind::Cpu, cpu_period)),
            _ => None,
        });
        let assembled = samples.len();
        samples.extend(self.wait_events.take(set, &stacks));
        let taken = schedule::Taken {
            counts: counted,
            stacks: short_stacks,
            deep_stacks,
            waits: samples.len() - assembled,
        };
        self.fill.emptied(index, &taken)?;
        if let Some(memory) = &mut self.memory {
            samples.extend(memory.take(set, &stacks));
        }
        Ok(samples)
    }

    fn read_stats(&self, kind: ProfileKind) -> Result<StatCounters, SamplerError> {
        let base = kernel_index(kind) * Stat::COUNT;
        let mut values = [0; Stat::COUNT as usize];
        for stat in Stat::ALL {
            let per_cpu = self
                .stats
                .get(&(base + stat as u32), 0)
                .map_err(map_err(names::STATS))?;
            values[stat as usize] = per_cpu.iter().sum();
        }
        Ok(StatCounters::new(values))
    }
}

/// How the maps a drain empties are laid out.
struct Layouts {
    counts: bpf_calls::Layout<KernelKey, u64>,
    stacks: bpf_calls::Layout<StackHash, Stack>,
    deep_stacks: bpf_calls::Layout<StackHash, DeepStack>,
}

impl Layouts {
    /// Read from the maps of both sets: each must hold the types the
    /// drain reads, so the two sets' layouts are the same.
    fn of(
        counts: &[HashMap<MapData, KernelKey, u64>; 2],
        stacks: &[HashMap<MapData, StackHash, Stack>; 2],
        deep_stacks: &[HashMap<MapData, StackHash, DeepStack>; 2],
    ) -> Result<Self, SamplerError> {
        fn check<K: aya::Pod, V: aya::Pod>(
            maps: [&MapData; 2],
            names: [&'static str; 2],
            per_cpu: bool,
        ) -> Result<bpf_calls::Layout<K, V>, SamplerError> {
            let of = |i: usize| {
                bpf_calls::Layout::of(maps[i], names[i], per_cpu).map_err(|source| {
                    let map = names[i];
                    if source.kind() == io::ErrorKind::InvalidData {
                        SamplerError::Layout { map, source }
                    } else {
                        SamplerError::Drain { map, source }
                    }
                })
            };
            of(1)?;
            of(0)
        }
        Ok(Self {
            counts: check([counts[0].map(), counts[1].map()], names::COUNTS, false)?,
            stacks: check([stacks[0].map(), stacks[1].map()], names::STACKS, false)?,
            deep_stacks: check(
                [deep_stacks[0].map(), deep_stacks[1].map()],
                names::DEEP_STACKS,
                false,
            )?,
        })
    }
}

/// Reads and empties the stack map `map` (`name`) into `stacks`, each
/// stack's frames as `frames` gives them.
fn take_stacks<V: aya::Pod>(
    map: &HashMap<MapData, StackHash, V>,
    name: &'static str,
    layout: bpf_calls::Layout<StackHash, V>,
    stacks: &mut StdHashMap<StackHash, Vec<u64>>,
    frames: fn(&V) -> &[u64],
) -> Result<usize, SamplerError> {
    bpf_calls::take_all(map.map(), name, layout, |hash, stack| {
        stacks.insert(*hash, frames(&stack[0]).to_vec());
    })
    .map_err(|source| SamplerError::Drain { map: name, source })
}

/// Loads the CPU program and attaches it to the CPU-clock perf event of
/// each of `cpus`; returns the links.
fn attach_cpu(
    ebpf: &mut Ebpf,
    cpus: &[u32],
    frequency: Frequency,
) -> Result<Vec<PerfEventLinkId>, SamplerError> {
    attach_perf(
        ebpf,
        cpus,
        (names::PROGRAM, "the perf_event program"),
        (SoftwareEvent::CpuClock, "CPU-clock"),
        SamplePolicy::Frequency(u64::from(frequency.hz())),
    )
}

/// Attaches the loaded CPU program to the CPU-clock perf event of each of
/// `cpus` at `frequency`; returns the links.
fn attach_cpu_events(
    ebpf: &mut Ebpf,
    cpus: &[u32],
    frequency: Frequency,
) -> Result<Vec<PerfEventLinkId>, SamplerError> {
    attach_events(
        perf_program(ebpf, names::PROGRAM)?,
        cpus,
        (SoftwareEvent::CpuClock, "CPU-clock"),
        SamplePolicy::Frequency(u64::from(frequency.hz())),
    )
}

/// Loads the page-fault program and attaches it to the `page-faults`
/// software event of each of `cpus`, a sample every `period` faults.
fn attach_faults(
    ebpf: &mut Ebpf,
    cpus: &[u32],
    period: PageFaultPeriod,
) -> Result<(), SamplerError> {
    attach_perf(
        ebpf,
        cpus,
        (names::FAULTS_PROGRAM, "the page-fault program"),
        (SoftwareEvent::PageFaults, "page-fault"),
        SamplePolicy::Period(u64::from(period.faults())),
    )
    .map(drop)
}

/// Loads the perf-event program `name` (`what`, for errors) and attaches
/// it to the software `event` (`event_name`) of each of `cpus`.
fn attach_perf(
    ebpf: &mut Ebpf,
    cpus: &[u32],
    (name, what): (&'static str, &str),
    (event, event_name): (SoftwareEvent, &str),
    policy: SamplePolicy,
) -> Result<Vec<PerfEventLinkId>, SamplerError> {
    let program = perf_program(ebpf, name)?;
    program.load().map_err(|source| SamplerError::Program {
        action: format!("load {what} (verifier)"),
        source,
    })?;
    attach_events(program, cpus, (event, event_name), policy)
}

/// Attaches the loaded `program` to the software `event` (`event_name`) of
/// each of `cpus`; returns the links.
fn attach_events(
    program: &mut PerfEvent,
    cpus: &[u32],
    (event, event_name): (SoftwareEvent, &str),
    policy: SamplePolicy,
) -> Result<Vec<PerfEventLinkId>, SamplerError> {
    let mut links = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        let attached = program.attach(
            PerfEventConfig::Software(event),
            PerfEventScope::AllProcessesOneCpu { cpu },
            policy,
            true,
        );
        match attached {
            Ok(link) => links.push(link),
            Err(source) => {
                // None half-attached: the caller may attach again.
                for link in links {
                    let _ = program.detach(link);
                }
                return Err(SamplerError::Program {
                    action: format!("attach to the {event_name} perf event of CPU {cpu}"),
                    source,
                });
            }
        }
    }
    Ok(links)
}

/// Where the off-CPU switch-in attaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchIn {
    /// `tp_btf/sched_exit_tp` (Linux 6.16+): needs no kprobes.
    Tracepoint,
    /// A kprobe on each of these `finish_task_switch*` symbols.
    Kprobe(Vec<String>),
}

/// The switch-in hook this kernel offers: the tracepoint when its BTF has
/// it, else kprobes on the `finish_task_switch*` symbols of kallsyms.
pub fn switch_in_hook(btf: &Btf) -> Result<SwitchIn, SamplerError> {
    let typedef = format!("btf_trace_{}", names::SWITCH_IN_TRACEPOINT);
    if btf
        .id_by_type_name_kind(&typedef, aya_obj::btf::BtfKind::Typedef)
        .is_ok()
    {
        return Ok(SwitchIn::Tracepoint);
    }
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").map_err(SamplerError::Kallsyms)?;
    let symbols = off_cpu::switch_in_symbols(&kallsyms);
    if symbols.is_empty() || !kprobes_available() {
        return Err(SamplerError::NoSwitchIn);
    }
    Ok(SwitchIn::Kprobe(symbols))
}

/// Whether the kernel can attach kprobes (`CONFIG_KPROBES`): its kprobe
/// PMU is registered.
fn kprobes_available() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists()
        || std::path::Path::new("/sys/kernel/debug/tracing/kprobe_events").exists()
}

/// Loads the off-CPU programs and attaches them: the switch-in first (the
/// tracepoint, or kprobes), then the switch-out to `sched_switch` (either
/// order is correct: a switch-in without a noted switch-out is skipped).
/// With `tables`, the hook's unwinding programs go into its slots of
/// `tail_calls` (`[tracepoint, kprobe]`), and with `files` its files
/// program; returns whether that one was loaded.
fn attach_off_cpu(
    ebpf: &mut Ebpf,
    btf: Option<&Btf>,
    tables: bool,
    files: bool,
    tail_calls: &mut [ProgramArray<MapData>; 2],
) -> Result<bool, SamplerError> {
    // Parsed once by `Sampler::start`; read again only for its error.
    let read;
    let btf = match btf {
        Some(btf) => btf,
        None => {
            read = Btf::from_sys_fs().map_err(SamplerError::Btf)?;
            &read
        }
    };
    let [tracepoint_calls, kprobe_calls] = tail_calls;
    let hook = switch_in_hook(btf)?;
    let files = files
        && process_events::load_files_program(
            ebpf,
            match hook {
                SwitchIn::Tracepoint => process_events::FilesHook::Tracepoint {
                    program: names::OFF_CPU_FILES,
                    tracepoint: names::SWITCH_IN_TRACEPOINT,
                    btf,
                    array_name: names::OFF_CPU_TAIL_CALLS,
                    array: tracepoint_calls,
                },
                SwitchIn::Kprobe(_) => process_events::FilesHook::Kprobe {
                    program: names::OFF_CPU_FILES_KPROBE,
                    array_name: names::OFF_CPU_KPROBE_TAIL_CALLS,
                    array: kprobe_calls,
                },
            },
        )?;
    match hook {
        SwitchIn::Tracepoint => {
            if tables {
                waits::load_unwinders(
                    ebpf,
                    btf,
                    names::SWITCH_IN_TRACEPOINT,
                    [names::OFF_CPU_UNWIND, names::OFF_CPU_STORE],
                    (names::OFF_CPU_TAIL_CALLS, tracepoint_calls),
                )?;
            }
            attach_btf_tracepoint(
                ebpf,
                btf,
                names::OFF_CPU_SWITCH_IN,
                names::SWITCH_IN_TRACEPOINT,
            )?;
        }
        SwitchIn::Kprobe(symbols) => {
            if tables {
                for (name, slot) in [
                    (names::OFF_CPU_UNWIND_KPROBE, names::TAIL_UNWIND_USER),
                    (names::OFF_CPU_STORE_KPROBE, names::TAIL_UNWIND_STORE),
                ] {
                    let fd = tail_called_kprobe(ebpf, name)?;
                    kprobe_calls
                        .set(slot, &fd, 0)
                        .map_err(map_err(names::OFF_CPU_KPROBE_TAIL_CALLS))?;
                }
            }
            let program = kprobe(ebpf, names::OFF_CPU_SWITCH_IN_KPROBE)?;
            program.load().map_err(|source| SamplerError::Program {
                action: "load the off-CPU switch-in kprobe (verifier)".into(),
                source,
            })?;
            for symbol in &symbols {
                program
                    .attach(symbol, 0)
                    .map_err(|source| SamplerError::Program {
                        action: format!("attach the off-CPU kprobe to {symbol}"),
                        source,
                    })?;
            }
        }
    }
    let program = switch_out_program(ebpf)?;
    program
        .load("sched_switch", btf)
        .map_err(|source| SamplerError::Program {
            action: "load the off-CPU tp_btf/sched_switch program (verifier)".into(),
            source,
        })?;
    program.attach().map_err(|source| SamplerError::Program {
        action: "attach the off-CPU program to tp_btf/sched_switch".into(),
        source,
    })?;
    Ok(files)
}

/// What a failed load of the tail-called program `name` says.
fn tail_call_load_error(name: &'static str) -> impl FnOnce(ProgramError) -> SamplerError {
    move |source| SamplerError::Program {
        action: format!(
            "load the program {name} (verifier; the table unwinder needs Linux 5.17+, \
             run with --unwinder frame-pointers on older kernels)"
        ),
        source,
    }
}

/// What a failed lookup of the program `name` says.
/// The program `name` of `ebpf` as a program of type `T`.
fn program_as<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, SamplerError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(SamplerError::Missing(name))?
        .try_into()
        .map_err(find_error(name))
}

fn find_error(name: &'static str) -> impl FnOnce(ProgramError) -> SamplerError {
    move |source| SamplerError::Program {
        action: format!("find the program {name}"),
        source,
    }
}

/// At debug level: how many instructions the verifier went through for
/// each program loaded (most of a one-shot capture's start-up cost is the
/// verifier's; Linux 5.16+ reports the count).
fn log_verifier_work(ebpf: &Ebpf) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    for (name, program) in ebpf.programs() {
        if let Some(count) = program
            .info()
            .ok()
            .and_then(|info| info.verified_instruction_count())
        {
            log::debug!("program {name}: the verifier went through {count} instructions");
        }
    }
}

/// Loads the tail-called perf-event program `name` (the verifier checks
/// it here) and returns its descriptor.
fn tail_called_program(ebpf: &mut Ebpf, name: &'static str) -> Result<ProgramFd, SamplerError> {
    let program: &mut PerfEvent = program_as(ebpf, name)?;
    program.load().map_err(tail_call_load_error(name))?;
    program_fd(program.fd(), name)
}

/// Loads the tail-called kprobe program `name` and returns its descriptor.
fn tail_called_kprobe(ebpf: &mut Ebpf, name: &'static str) -> Result<ProgramFd, SamplerError> {
    let program = kprobe(ebpf, name)?;
    program.load().map_err(tail_call_load_error(name))?;
    program_fd(program.fd(), name)
}

fn program_fd(
    fd: Result<&ProgramFd, ProgramError>,
    name: &'static str,
) -> Result<ProgramFd, SamplerError> {
    fd.and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        .map_err(|source| SamplerError::Program {
            action: format!("get the descriptor of {name}"),
            source,
        })
}

fn kprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut KProbe, SamplerError> {
    program_as(ebpf, name)
}

fn switch_out_program(ebpf: &mut Ebpf) -> Result<&mut BtfTracePoint, SamplerError> {
    btf_tracepoint(ebpf, names::OFF_CPU_SWITCH_OUT)
}

/// Loads the `tp_btf` program `name` for `tracepoint` and attaches it.
fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    btf: &Btf,
    name: &'static str,
    tracepoint: &str,
) -> Result<(), SamplerError> {
    let program = btf_tracepoint(ebpf, name)?;
    program
        .load(tracepoint, btf)
        .map_err(|source| SamplerError::Program {
            action: format!("load {name} (verifier)"),
            source,
        })?;
    program.attach().map_err(|source| SamplerError::Program {
        action: format!("attach {name} to tp_btf/{tracepoint}"),
        source,
    })?;
    Ok(())
}

fn btf_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut BtfTracePoint, SamplerError> {
    program_as(ebpf, name)
}

fn perf_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut PerfEvent, SamplerError> {
    ebpf.program_mut(name)
        .ok_or(SamplerError::Missing(name))?
        .try_into()
        .map_err(|source| SamplerError::Program {
            action: "find the perf_event program".into(),
            source,
        })
}

/// Waits until every program run that may have read the old
/// `Config::active_set` has finished.
///
/// BPF perf-event programs run inside an RCU read-side critical section, and
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` is implemented as `synchronize_rcu()`,
/// so its return guarantees that. Kernels booted with `nohz_full` refuse the
/// command; there a pause far longer than any program run stands in.
fn quiesce() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    // With one CPU the kernel skips the grace period the barrier waits
    // for elsewhere (a preempted program run may still be reading).
    // Asked once: sysconf reads /sys each time.
    static ONE_CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: sysconf takes no pointers.
    let one_cpu =
        *ONE_CPU.get_or_init(|| unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } <= 1);
    if rc != 0 || one_cpu {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_maps_follow_the_host_within_bounds() {
        assert_eq!(tasks_of_loadavg("2.01 1.86 1.67 3/104 30035\n"), Some(104));
        assert_eq!(tasks_of_loadavg("2.01 1.86"), None);
        assert_eq!(tasks_of_loadavg("0 0 0 x/y 1"), None);
        // A small host: the floor.
        assert_eq!(lru_entries(104, 2), 2048);
        // Twice the threads, to a power of two.
        assert_eq!(lru_entries(1500, 2), 4096);
        // 128 a CPU.
        assert_eq!(lru_entries(100, 64), 8192);
        // The ceiling, also when the host could not be read.
        assert_eq!(lru_entries(100_000, 2), 16_384);
        assert_eq!(lru_entries(u64::MAX, 512), 16_384);
    }

    /// Every map and program name userspace looks up is defined in the
    /// eBPF object this crate embeds (as a symbol of a map or program
    /// section), so a rename on one side fails here, not at load time.
    #[test]
    fn every_name_exists_in_the_ebpf_object() {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
        let file = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object is ELF");
        let defined: std::collections::HashMap<String, String> = file
            .symbols()
            .filter_map(|symbol| {
                let section = file.section_by_index(symbol.section_index()?).ok()?;
                Some((
                    symbol.name().ok()?.to_owned(),
                    section.name().ok()?.to_owned(),
                ))
            })
            .collect();
        for name in names::MAPS {
            let section = defined.get(*name).map(String::as_str);
            assert!(
                section.is_some_and(|s| s == "maps" || s == ".maps"),
                "map {name}: {section:?}"
            );
        }
        for (programs, prefix) in [
            (names::PROGRAMS, "perf_event"),
            (names::KPROBES, "kprobe"),
            (names::BTF_TRACEPOINTS, "tp_btf/"),
            (names::UPROBES, "u"),
            (names::RAW_TRACEPOINTS, "raw_tp"),
        ] {
            for name in programs {
                let section = defined.get(*name).map(String::as_str);
                assert!(
                    section.is_some_and(|s| s.starts_with(prefix)),
                    "program {name}: {section:?}"
                );
            }
        }
        // The loader writes it (`override_global`, which fails the load
        // without it).
        let section = defined.get(names::FEATURES).map(String::as_str);
        assert!(
            section.is_some_and(|s| s.starts_with(".rodata")),
            "global {}: {section:?}",
            names::FEATURES
        );
    }

    /// True when the user opted out of BPF tests; panics with the reason
    /// when BPF is unusable and they did not (these tests never pass
    /// silently).
    pub(super) fn skip_bpf() -> bool {
        if std::env::var_os("HOSTPROF_SKIP_BPF_TESTS").is_some_and(|v| v == "1") {
            eprintln!("HOSTPROF_SKIP_BPF_TESTS=1: skipping a test that needs BPF");
            return true;
        }
        if let Err(err) = crate::system_info::preflight() {
            panic!(
                "this test loads the real eBPF program and cannot here: {err}\n\
                 (set HOSTPROF_SKIP_BPF_TESTS=1 to skip BPF tests explicitly)"
            );
        }
        false
    }

    /// Burns CPU in this thread for `duration`.
    fn spin_for(duration: Duration) {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < duration {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        std::hint::black_box(x);
    }

    /// The CPU kind's sampler with the default policy, and its events.
    fn cpu_sampler() -> (Sampler, ProcessEvents) {
        let started =
            Sampler::start(&SamplingPolicy::default(), &[ProfileKind::Cpu]).expect("start sampler");
        (started.sampler, started.events)
    }

    /// Privileged: loads the real program, samples the host, drains.
    #[tokio::test]
    async fn samples_every_cpu_and_drains_exactly() {
        if skip_bpf() {
            return;
        }
        let (mut sampler, mut events) = cpu_sampler();
        sampler.select_all().expect("sample every process");
        let spin = std::thread::spawn(|| spin_for(Duration::from_millis(700)));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let first = sampler.drain().expect("drain");
        spin.join().unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let second = sampler.drain().expect("drain");
        let last = sampler.stop().expect("stop");
        let announced = events.try_batch();

        let total = first.total() + second.total() + last.total();
        let cpu = |d: &Drained| d.stats[&ProfileKind::Cpu];
        let recorded = cpu(&first).recorded + cpu(&second).recorded + cpu(&last).recorded;
        assert!(
            total > 50,
            "expected ~160 samples on 2 CPUs in 0.8 s, got {total}"
        );
        assert_eq!(
            total, recorded,
            "drained samples must equal samples the kernel counted"
        );
        assert_eq!(
            cpu(&first).dropped + cpu(&second).dropped + cpu(&last).dropped,
            0
        );
        let me = std::process::id();
        assert!(
            first
                .samples
                .iter()
                .any(|s| s.key.thread.tgid == me && !s.key.user_stack.is_empty()),
            "the spinning test process must be sampled with a user stack"
        );
        // Announced from a thread of its own (not the leader): with the
        // leader's start time and name, as `/proc/PID/stat` has them.
        let leader = announced
            .iter()
            .find_map(|e| match e {
                ProcessEvent::New { tgid, leader, .. } if *tgid == me => Some(*leader),
                _ => None,
            })
            .expect("the spinning test process is announced")
            .expect("with its leader's start time and name (offsets from the kernel's BTF)");
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let comm = &stat[stat.find('(').unwrap() + 1..stat.rfind(')').unwrap()];
        let start_ticks: u64 = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .nth(19)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(leader.name(), comm);
        assert_eq!(
            leader.start_boottime_ns / 10_000_000,
            start_ticks,
            "USER_HZ 100"
        );
    }

    /// Privileged: a CPU that adds its share of entries to the active set
    /// asks for a drain, once per set until the set is drained; a drained
    /// set's counters start again from zero.
    #[tokio::test]
    async fn a_filling_set_asks_for_a_drain() {
        if skip_bpf() {
            return;
        }
        let (mut sampler, mut events) = cpu_sampler();
        let cpus = sampler.cpus.len();
        assert_eq!(
            sampler.config.drain_soon_at,
            sampler.fill.room().drain_soon_at(cpus),
            "the threshold follows the maps' room"
        );
        // Three entries a CPU: a spinning thread's samples (a count entry
        // and a stack or two each) reach it within a few samples.
        sampler.config.drain_soon_at = 3;
        sampler.select_all().expect("sample every process");
        let asked = |events: &mut ProcessEvents| {
            events
                .try_batch()
                .iter()
                .filter(|event| matches!(event, ProcessEvent::DrainSoon { .. }))
                .count()
        };
        let mut fills = Vec::new();
        for round in 0..3 {
            let spin = std::thread::spawn(|| spin_for(Duration::from_millis(300)));
            tokio::time::sleep(Duration::from_millis(400)).await;
            spin.join().unwrap();
            let n = asked(&mut events);
            // Each CPU asks once a set (twice at most, when a CPU-clock
            // sample nests in another program's add).
            assert!(
                (1..=2 * cpus).contains(&n),
                "round {round}: {n} drain requests from {cpus} CPUs"
            );
            sampler.drain().expect("drain");
            fills.push(sampler.fill());
        }
        sampler.stop().expect("stop");
        assert!(
            fills.iter().all(|&fill| fill > 0.0 && fill < 0.5),
            "a few hundred entries of 16 Ki at most: {fills:?}"
        );
    }

    /// Privileged: the verifier accepts both programs (the sampler and the
    /// tail-called unwinder) on this kernel, with either unwinder and the
    /// largest budget.
    #[tokio::test]
    async fn verifier_accepts_the_unwinder() {
        use super::unwinder::TableBudget;
        if skip_bpf() {
            return;
        }
        for unwinder in [
            Unwinder::FramePointers,
            Unwinder::Tables(TableBudget::new(TableBudget::MAX).unwrap()),
        ] {
            let policy = SamplingPolicy {
                unwinder,
                ..SamplingPolicy::default()
            };
            let started = Sampler::start(&policy, ProfileKind::ALL)
                .unwrap_or_else(|err| panic!("{unwinder:?}: {:#}", anyhow::Error::from(err)));
            assert_eq!(
                started.unwind_maps.is_some(),
                matches!(unwinder, Unwinder::Tables(_))
            );
        }
    }

    /// Privileged: the kprobe switch-in (for kernels without
    /// `sched_exit_tp`) passes the verifier here too, even where it is not
    /// the hook in use; its attach needs CONFIG_KPROBES.
    #[test]
    fn verifier_accepts_the_kprobe_switch_in() {
        if skip_bpf() {
            return;
        }
        let mut ebpf = loader().load(EBPF_OBJECT).expect("load the object");
        for name in names::KPROBES {
            kprobe(&mut ebpf, name)
                .and_then(|program| {
                    program.load().map_err(|source| SamplerError::Program {
                        action: format!("load {name}"),
                        source,
                    })
                })
                .unwrap_or_else(|err| panic!("{:#}", anyhow::Error::from(err)));
        }
    }

    #[test]
    fn capacity_scales_with_cpus_and_rate() {
        assert_eq!(map_capacity(2, 99), 16_384);
        assert_eq!(map_capacity(128, 1000), 512_000);
        assert_eq!(map_capacity(4096, 1000), 1 << 20);
        assert_eq!(
            map_capacity(2, 0),
            16_384,
            "an unused kind's maps stay small"
        );
    }
}
