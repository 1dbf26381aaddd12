//! The public entry point: runs the pipeline kernel → [`crate::sampler`]
//! (drain) → [`crate::process`] (snapshots) → [`crate::filter`] →
//! [`crate::aggregate`] (merge) → [`crate::resolve`] (symbolize) and hands
//! back one [`Profile`] per kind.
//!
//! This module only wires stages together; each stage's logic lives in its
//! own module. [`Pipeline`] is everything after the kernel, driven by
//! drains and free of BPF syscalls, so its orchestration is unit-tested
//! with made-up drains; [`Profiler`] adds the sampler and the drain loop.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use crate::aggregate::Aggregator;
pub use crate::aggregate::WaitTotals;
use crate::filter::ProcessFilter;
use crate::k8s::PodMetadata;
use crate::kind::ProfileKind;
use crate::overhead::Budget;
pub use crate::overhead::OverheadStats;
use crate::process::{
    alive, ContextDiscovery, CpuTimes, Lifecycle, ProcessTable, PythonProcesses, Selection,
};
use crate::profile::{CaptureStats, Profile};
use crate::resolve::{self, Sources, Window};
pub use crate::sampler::DrainCounts;
use crate::sampler::{
    DrainCause, DrainSchedule, Drained, ExecGenerations, ProcessEvent, ProcessEvents, Sampler,
};
use crate::symbolize::Symbolizer;
use crate::system_info::kernel::{check_running_kernel, KernelCheckError};
use crate::system_info::{self, PreflightError};
use crate::unwind::loader::{LoaderStats, TableLoader};
use crate::unwind::requests::TableRequests;
use crate::unwind::Unwinder;

pub use crate::sampler::trace_context::{InvalidTraceContextMap, TraceContextMap, TraceMapState};
pub use crate::sampler::{
    Frequency, InvalidFrequency, InvalidMaxCpu, InvalidMemorySampleBytes, InvalidOffCpuRate,
    InvalidPageFaultPeriod, MaxCpu, MemorySampleBytes, OffCpuRate, PageFaultPeriod, SamplerError,
    SamplingPolicy, Target,
};
pub use crate::symbolize::CacheStats;
use crate::trace_link::DEFAULT_MAX_LINKS_PER_PROCESS;

/// How a [`Profiler`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfilerOptions {
    /// What to sample and how often.
    pub policy: SamplingPolicy,
    /// How often the kernel maps are drained at most. Shorter keeps the
    /// maps small; longer costs fewer syscalls.
    pub drain_interval: Duration,
    /// How long drains may be apart while the maps stay nearly empty (the
    /// interval stretches up to it, and shrinks back as they fill; a CPU
    /// that fills its share of them asks for a drain at once). Not above
    /// `drain_interval`: drains at a fixed interval.
    pub longest_drain_interval: Duration,
    /// Processes to leave out beyond the kernel's pid filter.
    pub filter: ProcessFilter,
    /// This Kubernetes node's name: when set, the pods of the node are
    /// watched for container metadata (needs a tokio runtime).
    pub node_name: Option<String>,
    /// The kinds of profile to collect, each once (default `[cpu]`); each
    /// window yields one profile per kind, in this order.
    pub profiles: Vec<ProfileKind>,
    /// The most distinct trace links a process keeps in one window; later
    /// samples in new spans keep their stacks without a link.
    pub max_links_per_process: usize,
}

impl Default for ProfilerOptions {
    fn default() -> Self {
        Self {
            policy: SamplingPolicy::default(),
            drain_interval: Duration::from_secs(1),
            longest_drain_interval: Duration::from_secs(1),
            filter: ProcessFilter::default(),
            node_name: None,
            profiles: vec![ProfileKind::Cpu],
            max_links_per_process: DEFAULT_MAX_LINKS_PER_PROCESS,
        }
    }
}

/// Errors of a profiling run.
#[derive(Debug, thiserror::Error)]
pub enum ProfilerError {
    /// The host lacks something hostprof needs.
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// The kernel side failed.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// The table unwinder cannot run safely on this kernel.
    #[error(transparent)]
    Kernel(#[from] KernelCheckError),
    /// A profile kind asked for cannot run on this kernel.
    #[error(transparent)]
    Unsupported(#[from] system_info::KindUnsupported),
    /// The table loader's thread could not be started.
    #[error("could not start the unwind-table loader thread")]
    Loader(#[source] std::io::Error),
}

/// Where a run stands, reported after every drain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Time since sampling started.
    pub elapsed: Duration,
    /// Samples collected so far.
    pub samples: u64,
    /// Distinct processes sampled so far.
    pub processes: usize,
    /// Loss counters so far.
    pub stats: CaptureStats,
    /// Totals since the profiler started, for self-metrics.
    pub totals: PipelineStats,
}

/// Totals since a [`Profiler`] started (counters) and its current size
/// (gauges), for self-metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PipelineStats {
    /// Samples collected.
    pub samples: u64,
    /// Loss and filter counters.
    pub capture: CaptureStats,
    /// Distinct (thread, stack) entries in the current window.
    pub stacks: usize,
    /// Processes whose memory-map snapshots are held.
    pub processes: usize,
    /// Symbolization cache counters.
    pub symbol_cache: CacheStats,
    /// Unwind tables (all zero with the frame-pointer unwinder).
    pub unwind_tables: LoaderStats,
    /// Off-CPU intervals the kernel measured and kept.
    pub off_cpu_waits: WaitTotals,
    /// Kernel-lock contentions the kernel measured and kept.
    pub kernel_lock_waits: WaitTotals,
    /// The CPU budget (`--max-cpu`) and the frequency it set; all zero
    /// without one.
    pub overhead: OverheadStats,
    /// Drains of the kernel's maps, by what called for them.
    pub drains: DrainCounts,
}

/// A running whole-host profiler.
pub struct Profiler {
    schedule: DrainSchedule,
    sampler: Sampler,
    events: ProcessEvents,
    pipeline: Pipeline,
    /// With the memory profile: the processes whose allocator is probed.
    memory: Option<Selection>,
    /// With `--max-cpu` and the CPU profile: the frequency's governor.
    budget: Option<Budget>,
}

impl Profiler {
    /// Checks the host, loads the kernel program and starts sampling.
    pub fn start(options: ProfilerOptions) -> Result<Self, ProfilerError> {
        system_info::preflight()?;
        for line in system_info::degraded_capabilities() {
            log::warn!("{line}");
        }
        for &kind in &options.profiles {
            system_info::kind_support(kind)?;
        }
        if let Unwinder::Tables(_) = options.policy.unwinder {
            check_running_kernel()?;
        }
        // Whole-host with unwind tables: what runs now is found while the
        // programs load, so that its tables are in before sampling starts.
        let running = (matches!(options.policy.target, Target::AllProcesses)
            && matches!(options.policy.unwinder, Unwinder::Tables(_)))
        .then(CpuTimes::read);
        let started = Sampler::start(&options.policy, &options.profiles)?;
        match &started.trace_map {
            state @ TraceMapState::Unusable { .. } => log::warn!("{state}"),
            state => log::info!("{state}"),
        }
        let tables = match started.unwind_maps {
            Some((maps, rows)) => Some(TableRequests::new(
                TableLoader::spawn(maps, rows).map_err(ProfilerError::Loader)?,
            )),
            None => None,
        };
        // Loading parsed the kernel's BTF (tens of MiB, now freed).
        crate::memory::release_free();
        let pods = match &options.node_name {
            Some(node) => PodMetadata::watch(node.clone()),
            None => PodMetadata::empty(),
        };
        let mut pipeline =
            Pipeline::new(&options, pods, tables, Box::new(started.exec_generations));
        if let Some(names) = started.kernel_names {
            pipeline.symbolizer.name_kernel_code_with(Box::new(names));
        }
        // Until sampling starts (below, once the selection is prepared),
        // the first window starts as the programs were attached.
        pipeline.start_time = started.sampler.last_flip().0;
        pipeline.contexts = started
            .thread_contexts
            .map(|map| ContextDiscovery::new(Box::new(map)));
        pipeline.python = started
            .python_processes
            .map(|map| PythonProcesses::new(Box::new(map)));
        let memory = options.profiles.contains(&ProfileKind::Memory).then(|| {
            log::warn!(
                "memory profile: every allocation and free of the selected processes traps \
                 into the kernel (microseconds each): allocation-heavy programs run slower \
                 while hostprof runs"
            );
            Selection::of(&options.policy.target)
        });
        let mut profiler = Self {
            // The memory profile's ring of allocations and frees is read at
            // drains and sized for a few seconds of a hot allocator whose
            // few stacks leave the other maps nearly empty: a fixed
            // interval then.
            schedule: DrainSchedule::new(
                options.drain_interval,
                if options.profiles.contains(&ProfileKind::Memory) {
                    options.drain_interval
                } else {
                    options.longest_drain_interval
                },
            ),
            sampler: started.sampler,
            events: started.events,
            pipeline,
            memory,
            budget: None,
        };
        match &options.policy.target {
            Target::Pids(pids) => {
                profiler
                    .pipeline
                    .prepare(pids, "selected", Instant::now() + TABLE_WAIT);
                profiler.sampler.select(pids)?;
            }
            Target::AllProcesses => {
                if let Some(running) = running {
                    let deadline = Instant::now() + BUSY_TABLE_WAIT;
                    let mut busy = running.busy_since();
                    busy.truncate(BUSY_MAX);
                    if !busy.is_empty() {
                        profiler.pipeline.prepare(&busy, "on the CPU", deadline);
                    }
                }
                profiler.sampler.select_all()?;
            }
        }
        profiler.pipeline.start_time = profiler.sampler.last_flip().0;
        profiler.pipeline.started = Instant::now();
        // The first drain is a full interval after sampling started.
        profiler.schedule.start_at(profiler.pipeline.started);
        profiler.budget = options
            .policy
            .max_cpu
            .and_then(|max| profiler.budget(max, &options));
        profiler.probe_memory();
        Ok(profiler)
    }

    /// The governor of `--max-cpu`, fed the kernel programs' run time
    /// when the kernel counts it (else hostprof's threads only, said).
    fn budget(&mut self, max: MaxCpu, options: &ProfilerOptions) -> Option<Budget> {
        if !options.profiles.contains(&ProfileKind::Cpu) {
            log::warn!(
                "--max-cpu {max} has no effect: it lowers the CPU profile's frequency, and \
                 --profiles has no cpu"
            );
            return None;
        }
        if let Err(err) = self.sampler.count_run_time() {
            let cause = std::error::Error::source(&err)
                .map(|source| format!(": {source}"))
                .unwrap_or_default();
            log::warn!("--max-cpu {max} counts hostprof's own threads only: {err}{cause}");
        }
        Some(Budget::new(
            max,
            options.policy.frequency,
            self.sampler.run_time(),
        ))
    }

    /// Drains the kernel's samples into the window; with `--max-cpu`,
    /// weighs hostprof's cost and changes the frequency when due.
    fn drain(&mut self, cause: DrainCause) -> Result<(), ProfilerError> {
        // What each CPU sample of the drained set stands for (a new
        // frequency applies from the next set).
        let period = self.sampler.period_ns();
        let drained = self.sampler.drain()?;
        self.schedule.drained(cause, self.sampler.fill());
        self.ingest(drained);
        self.pipeline.set_period(ProfileKind::Cpu, period);
        self.probe_memory();
        if let Some(budget) = &mut self.budget {
            if let Some(decision) = budget.after_drain(self.sampler.run_time()) {
                self.sampler.set_frequency(decision.frequency);
            }
        }
        Ok(())
    }

    /// With the memory profile: probes the allocator of each process
    /// selected now (new ones, and those that exec'd since), and forgets
    /// the live allocations of processes gone or replaced by an exec.
    fn probe_memory(&mut self) {
        let Some(selection) = &mut self.memory else {
            return;
        };
        // Children whose fork was read at the drain and not followed yet
        // (their wake-up was lost).
        for child in self.sampler.take_memory_forks() {
            selection.follow(child);
        }
        let pipeline = &self.pipeline;
        let due = selection.due(&pipeline.filter, &pipeline.pods, |pid| {
            pipeline.processes.generation(pid)
        });
        self.attach_memory(due);
        let processes = &self.pipeline.processes;
        self.sampler.forget_memory(
            |tgid, exec_gen| !alive(tgid) || processes.generation(tgid) != exec_gen,
            alive,
        );
    }

    /// With the memory profile: a probed process forked (the kernel woke
    /// us): each child forked so far inherits its parent's heap, is
    /// selected too, and is probed now, before it frees much of it.
    fn follow_forks(&mut self) {
        let Some(selection) = &mut self.memory else {
            return;
        };
        self.sampler.read_memory_events();
        let children = self.sampler.take_memory_forks();
        for &child in &children {
            selection.follow(child);
        }
        let processes = &self.pipeline.processes;
        let due = children
            .into_iter()
            .map(|child| (child, processes.generation(child)))
            .collect();
        self.attach_memory(due);
    }

    /// With the memory profile: probes the allocator of each process of
    /// `due` (pid, exec generation).
    fn attach_memory(&mut self, due: Vec<(u32, u32)>) {
        let Some(selection) = &mut self.memory else {
            return;
        };
        for (pid, exec_gen) in due {
            match self.sampler.attach_memory(pid, exec_gen) {
                // Snapshot it and ask for its unwind tables now, before
                // its first sampled allocation: until they are loaded its
                // stacks come from frame pointers, which stop at the
                // first function built without them.
                Ok(true) => self.pipeline.observe(ProcessEvent::New {
                    tgid: pid,
                    cgroup_id: 0,
                    leader: None,
                }),
                Ok(false) => {}
                Err(err) => selection.failed(pid, exec_gen, &anyhow::Error::from(err)),
            }
        }
        self.pipeline.observed();
    }

    /// Takes one event of the kernel's process stream.
    fn take_event(&mut self, event: ProcessEvent) {
        match event {
            // The memory events name the children (this one's wake-up
            // may have come with others lost).
            ProcessEvent::Fork(_) => self.follow_forks(),
            // A request read after the drain of its set is stale.
            ProcessEvent::DrainSoon { set } => {
                if set == self.sampler.filling() {
                    self.schedule.requested();
                }
            }
            event => self.pipeline.observe(event),
        }
    }

    /// Samples until `stop` completes, draining periodically and calling
    /// `progress` after each drain.
    pub async fn run_until(
        &mut self,
        stop: impl Future<Output = ()>,
        mut progress: impl FnMut(&Progress),
    ) -> Result<(), ProfilerError> {
        tokio::pin!(stop);
        loop {
            let quick = self.pipeline.next_quick_check();
            let (drain_at, cause) = self.schedule.due();
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = async {
                    match quick {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                } => self.pipeline.quick_checks(),
                events = self.events.next_batch() => {
                    for event in events? {
                        self.take_event(event);
                    }
                    self.pipeline.observed();
                }
                () = tokio::time::sleep_until(drain_at.into()) => {
                    self.drain(cause)?;
                    progress(&self.progress());
                }
            }
        }
    }

    /// Stops sampling, drains what is left and builds the symbolized
    /// profiles, one per kind of [`ProfilerOptions::profiles`].
    pub fn finish(self) -> Result<Vec<Profile>, ProfilerError> {
        Ok(self.finish_with_totals()?.0)
    }

    /// [`Profiler::finish`], and the totals once the last window was
    /// symbolized.
    pub fn finish_with_totals(mut self) -> Result<(Vec<Profile>, PipelineStats), ProfilerError> {
        for event in self.events.try_batch() {
            self.take_event(event);
        }
        let drained = self.sampler.stop()?;
        self.schedule.count(DrainCause::Window);
        self.ingest(drained);
        // Forgets the processes gone (nothing is attached once stopped).
        self.probe_memory();
        self.ingest(self.sampler.memory_in_use());
        let profiles = self.pipeline.take_window(self.sampler.last_flip());
        Ok((profiles, self.totals()))
    }

    /// Drains now and returns the profiles of everything since the start
    /// or the previous call, while sampling goes on (continuous profiling).
    pub fn take_profiles(&mut self) -> Result<Vec<Profile>, ProfilerError> {
        self.drain(DrainCause::Window)?;
        // What is still live as the window ends (the memory profile).
        self.ingest(self.sampler.memory_in_use());
        Ok(self.pipeline.take_window(self.sampler.last_flip()))
    }

    /// Where the current window stands.
    pub fn progress(&self) -> Progress {
        let mut progress = self.pipeline.progress();
        progress.totals.overhead = self.overhead();
        progress.totals.drains = self.schedule.counts();
        progress
    }

    /// Totals since the start and current sizes.
    pub fn totals(&self) -> PipelineStats {
        PipelineStats {
            overhead: self.overhead(),
            drains: self.schedule.counts(),
            ..self.pipeline.totals()
        }
    }

    fn overhead(&self) -> OverheadStats {
        self.budget.as_ref().map(Budget::stats).unwrap_or_default()
    }

    fn ingest(&mut self, drained: Drained) {
        let exited = self.pipeline.ingest(drained);
        // Let a future process reusing the pid be announced again.
        self.sampler.forget_processes(&exited);
    }
}

/// How long a selection of processes waits for its unwind tables before
/// sampling starts anyway (the largest libraries take about a second).
const TABLE_WAIT: Duration = Duration::from_secs(20);

/// How long whole-host sampling waits at most for the unwind tables of
/// the processes on the CPU as it starts (the others' load as they are
/// first sampled), from just before the second reading of their CPU time.
const BUSY_TABLE_WAIT: Duration = Duration::from_secs(5);

/// The busiest processes whose tables whole-host sampling waits for at
/// most (a host with hundreds of busy processes would otherwise snapshot
/// them all before its first sample; the others load as first sampled).
const BUSY_MAX: usize = 64;

/// Every stage after the kernel: process snapshots, unwind-table requests,
/// the filter, aggregation and symbolization, window by window.
struct Pipeline {
    /// Each kind asked for, with the period one of its samples stands for.
    kinds: Vec<(ProfileKind, u64)>,
    filter: ProcessFilter,
    processes: ProcessTable,
    symbolizer: Symbolizer,
    aggregator: Aggregator,
    /// Kubernetes metadata of containers (empty off Kubernetes).
    pods: PodMetadata,
    /// Unwind-table requests (`None` with frame pointers only).
    tables: Option<TableRequests>,
    /// Processes publishing OpenTelemetry thread context (`None`: not read).
    contexts: Option<ContextDiscovery>,
    /// Python processes and their code objects (`None`: frames not walked).
    python: Option<PythonProcesses>,
    start_time: SystemTime,
    started: Instant,
    /// When the last drain was taken in.
    ingested: Instant,
    /// Samples and counters of the windows already taken.
    completed: (u64, CaptureStats),
}

impl Pipeline {
    fn new(
        options: &ProfilerOptions,
        pods: PodMetadata,
        tables: Option<TableRequests>,
        generations: Box<dyn ExecGenerations + Send>,
    ) -> Self {
        let kinds = options
            .profiles
            .iter()
            .map(|&kind| match kind {
                ProfileKind::Cpu => (kind, options.policy.frequency.period_ns()),
                ProfileKind::PageFaults => {
                    (kind, u64::from(options.policy.page_fault_period.faults()))
                }
                // A sample every R bytes on average.
                ProfileKind::Memory => {
                    (kind, u64::from(options.policy.memory_sample_bytes.bytes()))
                }
                // Each sample is weighted; the period is one event.
                ProfileKind::OffCpu | ProfileKind::Locks => (kind, 1),
            })
            .collect();
        Self {
            kinds,
            filter: options.filter.clone(),
            processes: ProcessTable::with_generations(generations),
            symbolizer: Symbolizer::new(),
            aggregator: Aggregator::with_link_limit(options.max_links_per_process),
            pods,
            tables,
            contexts: None,
            python: None,
            start_time: SystemTime::now(),
            started: Instant::now(),
            ingested: Instant::now(),
            completed: (0, CaptureStats::default()),
        }
    }

    /// Takes in what the kernel told as it sampled: snapshots a process
    /// it announced (and asks for its tables), or remembers the file of a
    /// sampled frame.
    fn observe(&mut self, event: ProcessEvent) {
        let (tgid, cgroup_id, leader) = match event {
            ProcessEvent::New {
                tgid,
                cgroup_id,
                leader,
            } => (tgid, cgroup_id, leader),
            // A fork the memory profile follows: snapshot the child as
            // it is probed ([`Profiler::follow_forks`]).
            ProcessEvent::Fork(tgid) => (tgid, 0, None),
            ProcessEvent::File(mapping) => {
                self.processes.add_file(mapping);
                return;
            }
            // The profiler's (see [`Profiler::take_event`]).
            ProcessEvent::DrainSoon { .. } => return,
        };
        match self.processes.observe_announced(tgid, cgroup_id, leader) {
            // Exited before it could be read: nothing to look for in it.
            Ok(Lifecycle::Gone) => return,
            Ok(state) if state.snapshot() => {
                if let Some(tables) = &mut self.tables {
                    tables.request(tgid, &self.processes);
                }
                if let Some(python) = &mut self.python {
                    python.check(tgid, &self.processes);
                }
            }
            Ok(_) => {}
            Err(err) => log::debug!("process {tgid}: {err}"),
        }
        if let Some(contexts) = &mut self.contexts {
            contexts.check(tgid, Instant::now(), &self.processes);
        }
    }

    /// Ends a batch of [`Self::observe`]: sends its table requests.
    fn observed(&mut self) {
        if let Some(tables) = &mut self.tables {
            tables.flush();
        }
    }

    /// Sets the period one sample of `kind` stands for in the profiles of
    /// this window on (the CPU kind's, when `--max-cpu` moved it).
    fn set_period(&mut self, kind: ProfileKind, period: u64) {
        for (k, p) in &mut self.kinds {
            if *k == kind {
                *p = period;
            }
        }
    }

    /// Before processes are sampled (the `--pid` selection, or those on
    /// the CPU as whole-host sampling starts; `which` says which in the
    /// log): snapshots them and waits for their unwind tables (until
    /// `deadline` at most), so that their first samples are unwound
    /// whole, not stopped at a file whose table is still loading.
    fn prepare(&mut self, pids: &[u32], which: &str, deadline: Instant) {
        for &pid in pids {
            self.observe(ProcessEvent::New {
                tgid: pid,
                cgroup_id: 0,
                leader: None,
            });
        }
        let Some(tables) = &mut self.tables else {
            return;
        };
        let processes = |n: usize| format!("{n} process{}", if n == 1 { "" } else { "es" });
        log::info!(
            "{} {which}: loading their unwind tables before sampling starts",
            processes(pids.len())
        );
        let started = Instant::now();
        let wait = deadline.saturating_duration_since(started);
        let settled = tables.settle(wait, |stats| {
            log::info!(
                "loading unwind tables: {} built, {} to go",
                stats.tables_built,
                stats.queued + 1
            )
        });
        if settled {
            log::info!(
                "unwind tables of the {} {which} loaded in {:.2}s",
                processes(pids.len()),
                started.elapsed().as_secs_f64()
            );
        } else {
            log::warn!(
                "unwind tables of the {} {which} still loading after {:.1}s: \
                 sampling starts now, and stacks through the files not loaded yet end in \
                 [incomplete: unwind table still loading] until they are",
                processes(pids.len()),
                started.elapsed().as_secs_f64()
            );
        }
    }

    /// When a process that published no thread context yet is due a
    /// quick recheck, if any.
    fn next_quick_check(&self) -> Option<Instant> {
        self.contexts.as_ref()?.next_quick()
    }

    /// Runs the quick thread-context rechecks that are due.
    fn quick_checks(&mut self) {
        if let Some(contexts) = &mut self.contexts {
            contexts.quick(Instant::now(), &self.processes);
        }
    }

    /// Takes in one drain; returns the processes found to have exited.
    fn ingest(&mut self, mut drained: Drained) -> Vec<u32> {
        let tracked = self.processes.track(&drained);
        if let Some(tables) = &mut self.tables {
            for &tgid in &tracked.snapshotted {
                tables.request(tgid, &self.processes);
            }
            tables.exited(&tracked.exited);
            tables.sampled(drained.tgids());
        }
        if let Some(contexts) = &mut self.contexts {
            contexts.drained(&drained.tgids(), &tracked.exited, &self.processes);
        }
        if let Some(python) = &mut self.python {
            for &tgid in &tracked.snapshotted {
                python.check(tgid, &self.processes);
            }
        }
        self.filter.apply(&mut drained, &self.processes, &self.pods);
        if let Some(python) = &mut self.python {
            // Named now, while the processes still run; only the samples
            // the filter kept.
            python.drain_started(self.ingested.elapsed());
            for sample in &drained.samples {
                let thread = &sample.key.thread;
                if !sample.key.python_frames.is_empty() {
                    python.learn(thread.tgid, thread.exec_gen, &sample.key.python_frames);
                }
            }
        }
        self.aggregator.ingest(drained);
        self.ingested = Instant::now();
        tracked.exited
    }

    /// Symbolizes the current window into profiles and starts a new one;
    /// `flip` is when the drain that closes it flipped the map sets (just
    /// before, and once the programs that wrote the old set had finished):
    /// every event of the window falls between the previous flip and this
    /// one.
    fn take_window(&mut self, flip: (SystemTime, SystemTime)) -> Vec<Profile> {
        let aggregated = self.aggregator.take();
        let window_samples: u64 = aggregated
            .samples
            .values()
            .map(|m| m.values.first().copied().unwrap_or(0))
            .sum();
        self.completed.0 += window_samples;
        for stats in aggregated.stats.values() {
            self.completed.1.add(stats);
        }
        let profiles = resolve::profiles(
            aggregated,
            &self.kinds,
            Sources {
                processes: &self.processes,
                symbolizer: &mut self.symbolizer,
                pods: &self.pods,
                python: self.python.as_ref(),
            },
            Window {
                start_time: self.start_time,
                duration: flip.1.duration_since(self.start_time).unwrap_or_default(),
            },
        );
        // Resolution counted what it could not resolve; totals carry it.
        for profile in &profiles {
            self.completed.1.unresolved.add(&profile.stats.unresolved);
        }
        self.start_time = flip.0;
        self.started = Instant::now();
        // Forget processes gone since the previous window, and the files
        // only they mapped: memory follows the live processes.
        let unused = self.processes.prune();
        let ids: Vec<_> = unused.iter().map(|(id, _)| *id).collect();
        self.symbolizer.forget(&ids);
        if let Some(python) = &mut self.python {
            python.prune(&ids, &self.processes);
        }
        drop(unused); // closes the files, now that no cache refers to them
        if let Some(tables) = &mut self.tables {
            tables.forget_pruned(&self.processes);
        }
        // Symbolizing built and freed large temporaries.
        crate::memory::release_free();
        profiles
    }

    fn progress(&self) -> Progress {
        Progress {
            elapsed: self.started.elapsed(),
            samples: self.aggregator.total_samples(),
            processes: self.aggregator.process_count(),
            stats: self.aggregator.stats(),
            totals: self.totals(),
        }
    }

    fn totals(&self) -> PipelineStats {
        let mut capture = self.completed.1;
        capture.add(&self.aggregator.stats());
        PipelineStats {
            samples: self.completed.0 + self.aggregator.total_samples(),
            capture,
            stacks: self.aggregator.stack_count(),
            processes: self.processes.len(),
            symbol_cache: self.symbolizer.stats(),
            unwind_tables: self.tables.as_ref().map(|t| t.stats()).unwrap_or_default(),
            off_cpu_waits: self.aggregator.wait_totals(ProfileKind::OffCpu),
            kernel_lock_waits: self.aggregator.wait_totals(ProfileKind::Locks),
            overhead: OverheadStats::default(),
            drains: DrainCounts::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::drain::Thread;
    use crate::sampler::{KindStats, RawSample, SampleKey};

    #[inline(never)]
    fn marker() -> u64 {
        std::hint::black_box(7)
    }

    fn sample(tgid: u32, user_stack: Vec<u64>, count: u64) -> RawSample {
        RawSample {
            key: SampleKey {
                kind: ProfileKind::Cpu,
                thread: Thread {
                    tgid,
                    tid: tgid,
                    comm: "worker".into(),
                    exec_gen: 0,
                },
                user_stack,
                user_stop: None,
                python_frames: vec![],
                kernel_stack: vec![],
                labels: vec![],
                link: None,
            },
            values: vec![count, count * 10_101_010],
            events: vec![],
        }
    }

    fn drained(samples: Vec<RawSample>) -> Drained {
        let recorded = samples.iter().map(RawSample::count).sum();
        Drained {
            samples,
            stats: KindStats::from([(
                ProfileKind::Cpu,
                CaptureStats {
                    recorded,
                    ..Default::default()
                },
            )]),
        }
    }

    fn pipeline(filter: ProcessFilter) -> Pipeline {
        let options = ProfilerOptions {
            filter,
            ..ProfilerOptions::default()
        };
        Pipeline::new(&options, PodMetadata::empty(), None, Box::new(()))
    }

    fn leaf_names(profile: &Profile, pid: u32) -> Vec<String> {
        profile
            .samples
            .iter()
            .filter(|s| profile.process(s.process).pid == pid)
            .map(|s| {
                let leaf = profile.location(s.stack[0]);
                profile.function(leaf.lines[0].function).name.clone()
            })
            .collect()
    }

    #[test]
    fn a_window_symbolizes_what_was_drained_and_names_who_exited() {
        let me = std::process::id();
        let ghost = u32::MAX - 1;
        let mut pipeline = pipeline(ProcessFilter::default());
        let exited = pipeline.ingest(drained(vec![
            sample(me, vec![marker as *const () as u64], 3),
            sample(ghost, vec![0x1000], 2),
        ]));
        assert_eq!(exited, vec![ghost], "the sampler forgets exited pids");
        let progress = pipeline.progress();
        assert_eq!((progress.samples, progress.processes), (5, 2));
        assert_eq!(
            pipeline.totals().processes,
            1,
            "only the live one snapshotted"
        );

        let profiles = pipeline.take_window((SystemTime::now(), SystemTime::now()));
        assert_eq!(profiles.len(), 1, "one profile per kind asked for");
        let profile = &profiles[0];
        assert_eq!(profile.kind, ProfileKind::Cpu);
        assert_eq!(profile.period, 10_101_010, "99 Hz");
        assert_eq!(profile.total_samples(), 5);
        assert_eq!(profile.stats.recorded, 5);
        let names = leaf_names(profile, me);
        assert!(names[0].contains("marker"), "{names:?}");
        assert_eq!(leaf_names(profile, ghost), vec!["[unknown]"]);

        // The next window starts empty; totals carry over.
        let next = pipeline.take_window((SystemTime::now(), SystemTime::now()));
        assert!(next[0].samples.is_empty());
        assert_eq!(next[0].stats, CaptureStats::default());
        assert_eq!(pipeline.totals().samples, 5);
        assert_eq!(pipeline.totals().capture.recorded, 5);
    }

    #[test]
    fn the_filter_runs_before_aggregation_and_counts_what_it_leaves_out() {
        let me = std::process::id();
        let mut pipeline = pipeline(ProcessFilter {
            cgroups: vec!["/hostprof-test/no-such-cgroup".into()],
            ..ProcessFilter::default()
        });
        pipeline.ingest(drained(vec![sample(me, vec![0x1000], 4)]));
        assert_eq!(pipeline.progress().samples, 0);
        assert_eq!(pipeline.progress().stats.filtered, 4);
        let profiles = pipeline.take_window((SystemTime::now(), SystemTime::now()));
        assert!(profiles[0].samples.is_empty());
        assert_eq!(profiles[0].stats.filtered, 4);
        assert_eq!(profiles[0].stats.recorded, 4);
    }
}
