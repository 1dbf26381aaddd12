//! The public entry point: runs the pipeline sampler → drain → (process
//! snapshots) → aggregate → symbolize and hands back a [`Profile`].
//!
//! This module only wires stages together; each stage's logic lives in its
//! own module.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use std::collections::HashSet;

use crate::aggregate::Aggregator;
use crate::filter::ProcessFilter;
use crate::k8s::PodMetadata;
use crate::process::ProcessTable;
use crate::profile::{CaptureStats, Profile};
use crate::sampler::{Drained, ProcessEvents, Sampler, SamplerError, SamplingPolicy};
use crate::symbolize::{CacheStats, Symbolizer};
use crate::system_info::{self, PreflightError};
use crate::unwind::kernel::{check_running_kernel, KernelCheckError};
use crate::unwind::loader::{FileSource, LoaderStats, ProcessTables, TableLoader};
use crate::unwind::registry::{FileKey, MappedFile};
use crate::unwind::Unwinder;

/// How a [`Profiler`] runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfilerOptions {
    /// What to sample and how often.
    pub policy: SamplingPolicy,
    /// The kinds of profile to take, each once (default `[cpu]`). Not read
    /// yet: the profiler takes the CPU profile whatever this says.
    pub profiles: Vec<crate::kind::ProfileKind>,
    /// How often the kernel maps are drained. Shorter keeps the maps small;
    /// longer costs fewer syscalls.
    pub drain_interval: Duration,
    /// Processes to leave out beyond the kernel's pid filter.
    pub filter: ProcessFilter,
    /// This Kubernetes node's name: when set, the pods of the node are
    /// watched for container metadata (needs a tokio runtime).
    pub node_name: Option<String>,
}

impl Default for ProfilerOptions {
    fn default() -> Self {
        Self {
            policy: SamplingPolicy::default(),
            profiles: vec![crate::kind::ProfileKind::Cpu],
            drain_interval: Duration::from_secs(1),
            filter: ProcessFilter::default(),
            node_name: None,
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
    /// The table loader's thread could not be started.
    #[error("could not start the unwind-table loader thread")]
    Loader(#[source] std::io::Error),
}

/// Where a run stands, reported after every drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
}

/// A running whole-host profiler.
pub struct Profiler {
    options: ProfilerOptions,
    sampler: Sampler,
    events: ProcessEvents,
    processes: ProcessTable,
    symbolizer: Symbolizer,
    aggregator: Aggregator,
    start_time: SystemTime,
    started: Instant,
    /// Samples and counters of the windows already taken.
    completed: (u64, CaptureStats),
    /// Kubernetes metadata of containers (empty off Kubernetes).
    pods: PodMetadata,
    /// Builds and loads unwind tables (`None` with frame pointers only).
    tables: Option<TableLoader>,
    /// Processes the table loader was told about.
    with_tables: HashSet<u32>,
}

impl Profiler {
    /// Checks the host, loads the kernel program and starts sampling.
    pub fn start(options: ProfilerOptions) -> Result<Self, ProfilerError> {
        system_info::preflight()?;
        if let Unwinder::Tables(_) = options.policy.unwinder {
            check_running_kernel()?;
        }
        let started = Sampler::start(&options.policy)?;
        let tables = match started.unwind_maps {
            Some((maps, rows)) => {
                Some(TableLoader::spawn(maps, rows).map_err(ProfilerError::Loader)?)
            }
            None => None,
        };
        let (sampler, events) = (started.sampler, started.events);
        // Loading parsed the kernel's BTF (tens of MiB, now freed).
        release_free_memory();
        let pods = match &options.node_name {
            Some(node) => PodMetadata::watch(node.clone()),
            None => PodMetadata::empty(),
        };
        Ok(Self {
            options,
            sampler,
            events,
            processes: ProcessTable::new(),
            symbolizer: Symbolizer::new(),
            aggregator: Aggregator::new(),
            start_time: SystemTime::now(),
            started: Instant::now(),
            completed: (0, CaptureStats::default()),
            pods,
            tables,
            with_tables: HashSet::new(),
        })
    }

    /// Samples until `stop` completes, draining periodically and calling
    /// `progress` after each drain.
    pub async fn run_until(
        &mut self,
        stop: impl Future<Output = ()>,
        mut progress: impl FnMut(&Progress),
    ) -> Result<(), ProfilerError> {
        let mut drain_tick = tokio::time::interval(self.options.drain_interval);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        drain_tick.tick().await; // the first tick is immediate
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return Ok(()),
                tgids = self.events.next_batch() => {
                    for tgid in tgids? {
                        self.observe(tgid);
                    }
                }
                _ = drain_tick.tick() => {
                    let drained = self.sampler.drain()?;
                    self.ingest(drained);
                    progress(&self.progress());
                }
            }
        }
    }

    /// Stops sampling, drains what is left and builds the symbolized profile.
    pub fn finish(mut self) -> Result<Profile, ProfilerError> {
        for tgid in self.events.try_batch() {
            self.observe(tgid);
        }
        let drained = self.sampler.stop()?;
        self.ingest(drained);
        Ok(self.take_window())
    }

    /// Drains now and returns the profile of everything since the start or
    /// the previous call, while sampling goes on (continuous profiling).
    pub fn take_profile(&mut self) -> Result<Profile, ProfilerError> {
        let drained = self.sampler.drain()?;
        self.ingest(drained);
        Ok(self.take_window())
    }

    /// Symbolizes the current window into a profile and starts a new one.
    fn take_window(&mut self) -> Profile {
        let aggregator = std::mem::take(&mut self.aggregator);
        self.completed.0 += aggregator.total_samples();
        self.completed.1.add(&aggregator.stats());
        let profile = aggregator.finish(
            &mut self.processes,
            &mut self.symbolizer,
            &self.pods,
            self.start_time,
            self.started.elapsed(),
            self.options.policy.frequency.hz(),
        );
        self.start_time = SystemTime::now();
        self.started = Instant::now();
        // Forget processes gone since the previous window, and the files
        // only they mapped: memory follows the live processes.
        let unused = self.processes.prune();
        let paths: Vec<_> = unused
            .iter()
            .map(|(id, module)| (*id, module.symbol_path()))
            .collect();
        self.symbolizer.forget(&paths);
        drop(unused); // closes the files, now that no cache refers to them
        let processes = &self.processes;
        let gone: Vec<u32> = self
            .with_tables
            .iter()
            .copied()
            .filter(|&tgid| processes.process(tgid).is_none())
            .collect();
        self.forget_tables(&gone);
        // Symbolizing built and freed large temporaries.
        release_free_memory();
        profile
    }

    /// Where the current window stands.
    pub fn progress(&self) -> Progress {
        Progress {
            elapsed: self.started.elapsed(),
            samples: self.aggregator.total_samples(),
            processes: self.aggregator.process_count(),
            stats: self.aggregator.stats(),
            totals: self.totals(),
        }
    }

    /// Totals since the start and current sizes.
    pub fn totals(&self) -> PipelineStats {
        let mut capture = self.completed.1;
        capture.add(&self.aggregator.stats());
        PipelineStats {
            samples: self.completed.0 + self.aggregator.total_samples(),
            capture,
            stacks: self.aggregator.stack_count(),
            processes: self.processes.len(),
            symbol_cache: self.symbolizer.stats(),
            unwind_tables: self.tables.as_ref().map(|t| t.stats()).unwrap_or_default(),
        }
    }

    /// Snapshots `tgid` if new or changed, and asks for the unwind tables
    /// of a new snapshot.
    fn observe(&mut self, tgid: u32) {
        match self.processes.observe(tgid) {
            Ok(true) => self.request_tables(tgid),
            Ok(false) => {}
            Err(err) => log::debug!("process {tgid}: {err}"),
        }
    }

    /// Queues `tgid`'s mappings for the table loader. hostprof's own
    /// stacks stay on frame pointers: its tables would cost the most and
    /// help the user least.
    fn request_tables(&mut self, tgid: u32) {
        let (Some(tables), Some(info)) = (&self.tables, self.processes.process(tgid)) else {
            return;
        };
        if tgid == std::process::id() || info.mappings.is_empty() {
            return;
        }
        let mut sources = std::collections::HashMap::new();
        let mappings = info
            .mappings
            .iter()
            .map(|mapping| {
                let module = self.processes.module(mapping.module);
                let key = match &module.build_id {
                    Some(id) => FileKey::BuildId(id.clone()),
                    None => FileKey::Module(mapping.module),
                };
                if let Some(file) = module.open_file() {
                    sources.entry(key.clone()).or_insert_with(|| FileSource {
                        file,
                        name: module.path.display().to_string(),
                    });
                }
                MappedFile {
                    start: mapping.start,
                    end: mapping.end,
                    file_offset: mapping.file_offset,
                    key,
                }
            })
            .collect();
        tables.load(ProcessTables {
            tgid,
            mappings,
            sources,
        });
        self.with_tables.insert(tgid);
    }

    /// Snapshots again the processes whose stacks hold code outside their
    /// snapshot (a library loaded with `dlopen` since), and asks for the
    /// new files' unwind tables. Rate-limited per process by the table.
    fn refresh_unmapped(&mut self, drained: &Drained) {
        let mut checked = HashSet::new();
        for sample in &drained.samples {
            let (user, _) = crate::aggregate::split_truncated(&sample.user_stack);
            if sample.tgid == 0 || user.is_empty() || checked.contains(&sample.tgid) {
                continue;
            }
            if self.processes.refresh_if_unmapped(sample.tgid, user) {
                checked.insert(sample.tgid);
                self.request_tables(sample.tgid);
            }
        }
    }

    /// Tells the table loader that `tgids` exited.
    fn forget_tables(&mut self, tgids: &[u32]) {
        let gone: Vec<u32> = tgids
            .iter()
            .copied()
            .filter(|tgid| self.with_tables.remove(tgid))
            .collect();
        if let Some(tables) = &self.tables {
            tables.exited(gone);
        }
    }

    fn ingest(&mut self, drained: Drained) {
        let mut tgids: Vec<u32> = drained.samples.iter().map(|s| s.tgid).collect();
        tgids.sort_unstable();
        tgids.dedup();
        let mut exited = Vec::new();
        for &tgid in tgids.iter().filter(|&&t| t != 0) {
            if Path::new(&format!("/proc/{tgid}")).exists() {
                // Cheap when unchanged; re-snapshots after exec or pid reuse.
                self.observe(tgid);
            } else {
                exited.push(tgid);
            }
        }
        self.refresh_unmapped(&drained);
        // Let a future process reusing the pid be announced again.
        self.sampler.forget_processes(&exited);
        self.forget_tables(&exited);
        if let Some(tables) = &self.tables {
            tables.sampled(tgids.clone());
        }
        let drained = self.apply_filter(drained, &tgids);
        self.aggregator.ingest(drained);
    }

    /// Leaves out the samples of processes the filter rejects, counting
    /// them as filtered; before symbolization, so they cost nothing more.
    fn apply_filter(&self, mut drained: Drained, tgids: &[u32]) -> Drained {
        let filter = &self.options.filter;
        if filter.is_empty() {
            return drained;
        }
        let rejected: HashSet<u32> = tgids
            .iter()
            .copied()
            .filter(|&tgid| {
                let info = self.processes.process(tgid);
                let cgroups = info.map_or(&[][..], |i| &i.cgroups[..]);
                let pod = info
                    .and_then(|i| i.container.as_ref())
                    .and_then(|c| self.pods.container(&c.id));
                !filter.admits(cgroups, pod.as_deref())
            })
            .collect();
        if rejected.is_empty() {
            return drained;
        }
        drained.samples.retain(|sample| {
            let keep = !rejected.contains(&sample.tgid);
            if !keep {
                drained.stats.filtered += sample.count;
            }
            keep
        });
        drained
    }
}

/// Hands memory the allocator holds but no longer uses back to the kernel,
/// so the resident size after a burst (BTF parsing, symbolization) falls
/// back to what is in use; glibc keeps it otherwise.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
