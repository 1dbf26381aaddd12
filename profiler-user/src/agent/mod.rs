//! Continuous profiling: sample without pause, turn every interval into one
//! OTLP export request, and hand requests to an [`Outbox`], whose task
//! sends them with retries; serve [`metrics`] meanwhile.
//!
//! When the collector is slow or down, sampling goes on, the outbox drops
//! its oldest requests (counted), and export resumes on its own. On
//! shutdown, sampling stops, the last window is queued and the outbox
//! flushes what it can within the shutdown timeout.

pub mod metrics;
pub mod server;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::otlp::outbox::{Outbox, SendStats};
use crate::otlp::queue::QueueLimits;
use crate::otlp::retry::Backoff;
use crate::otlp::{build_request, ExportError, Exporter, ExporterConfig, HostIdentity};
use crate::profile::Profile;
use crate::profiler::{PipelineStats, Profiler, ProfilerError, ProfilerOptions};
use crate::system_info;
use metrics::{Metrics, OwnUsage, Snapshot};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Sampling settings.
    pub profiler: ProfilerOptions,
    /// Length of one profile (one export request).
    pub interval: Duration,
    /// Where to export.
    pub exporter: ExporterConfig,
    /// Bounds of the export queue.
    pub queue: QueueLimits,
    /// How long shutdown may spend exporting what is left.
    pub shutdown_timeout: Duration,
    /// Retry delays.
    pub backoff: Backoff,
    /// Where to serve Prometheus metrics and health checks; off when `None`.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// What the agent did, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Profiles built and queued for export.
    pub queued_profiles: u64,
    /// What happened to the queued requests: exported, rejected, failed,
    /// dropped, bytes sent.
    pub sent: SendStats,
    /// Export requests built.
    pub encodes: u64,
    /// Time spent building them, in nanoseconds.
    pub encode_nanos: u64,
}

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Sampling could not start or failed.
    #[error(transparent)]
    Profiler(#[from] ProfilerError),
    /// The exporter settings cannot be used.
    #[error(transparent)]
    Exporter(#[from] ExportError),
    /// The metrics endpoint could not be opened.
    #[error(transparent)]
    Metrics(std::io::Error),
    /// No profile kind asked for can run on this kernel.
    #[error(
        "none of the profile kinds asked for can run on this kernel (see the warnings above, \
         or `hostprof system-info`); add cpu to profiles"
    )]
    NoKinds,
}

struct Shared {
    /// Requests waiting to be exported, and the export counters.
    outbox: Arc<Outbox>,
    /// What building requests cost.
    encoding: Mutex<Encoding>,
    /// Pipeline totals as of the last drain.
    pipeline: Mutex<PipelineStats>,
    /// When the profiling loop last drained.
    last_drain: Mutex<Instant>,
    /// Set once sampling runs.
    sampling: AtomicBool,
    /// The loop counts as stalled after this long without a drain.
    stall_after: Duration,
}

/// Counters of building export requests.
#[derive(Clone, Copy, Debug, Default)]
struct Encoding {
    /// Profiles built and queued for export.
    queued_profiles: u64,
    /// Export requests built.
    encodes: u64,
    /// Time spent building them, in nanoseconds.
    nanos: u64,
}

impl Shared {
    fn stats(&self) -> AgentStats {
        let encoding = *self.encoding.lock().expect("encoding lock");
        AgentStats {
            queued_profiles: encoding.queued_profiles,
            sent: self.outbox.stats(),
            encodes: encoding.encodes,
            encode_nanos: encoding.nanos,
        }
    }

    fn snapshot(&self) -> Snapshot {
        let (queue_requests, queue_bytes) = self.outbox.queued();
        Snapshot {
            pipeline: *self.pipeline.lock().expect("pipeline lock"),
            agent: self.stats(),
            queue_requests,
            queue_bytes,
            own: OwnUsage::read(),
        }
    }
}

impl server::Health for Shared {
    fn live(&self) -> bool {
        self.last_drain.lock().expect("drain lock").elapsed() < self.stall_after
    }

    fn ready(&self) -> bool {
        self.sampling.load(Ordering::Relaxed)
    }
}

/// Runs until `shutdown` completes, then flushes and returns the totals.
pub async fn run(
    options: AgentOptions,
    host: HostIdentity,
    shutdown: impl Future<Output = ()>,
) -> Result<AgentStats, AgentError> {
    // Settings errors first, before anything starts.
    let exporter = Exporter::new(options.exporter.clone())?;
    let listener = match options.metrics_addr {
        Some(addr) => Some((server::bind(addr).await.map_err(AgentError::Metrics)?, addr)),
        None => None,
    };
    let shared = Arc::new(Shared {
        outbox: Arc::new(Outbox::new(options.queue)),
        encoding: Mutex::new(Encoding::default()),
        pipeline: Mutex::new(PipelineStats::default()),
        last_drain: Mutex::new(Instant::now()),
        sampling: AtomicBool::new(false),
        stall_after: (options
            .profiler
            .longest_drain_interval
            .max(options.profiler.drain_interval)
            * 10)
            .max(Duration::from_secs(30)),
    });
    let metrics_server = listener.map(|(listener, addr)| {
        log::info!("serving /metrics, /healthz and /readyz on http://{addr}");
        let source = Arc::clone(&shared);
        let metrics = Arc::new(Metrics::new(Arc::new(move || source.snapshot())));
        tokio::spawn(server::serve(listener, metrics, shared.clone()))
    });
    // A kind the kernel cannot take is left out with a warning; the
    // agent keeps the others.
    let mut profiler_options = options.profiler.clone();
    profiler_options
        .profiles
        .retain(|&kind| match system_info::kind_support(kind) {
            Ok(()) => true,
            Err(err) => {
                log::warn!("{err}; profiling without it");
                false
            }
        });
    if profiler_options.profiles.is_empty() {
        return Err(AgentError::NoKinds);
    }
    let mut profiler = Profiler::start(profiler_options)?;
    shared.sampling.store(true, Ordering::Relaxed);
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let outbox = Arc::clone(&shared.outbox);
    let backoff = options.backoff;
    let mut exporter =
        tokio::spawn(async move { outbox.send(exporter, backoff, stopping_rx).await });
    log::info!(
        "profiling every CPU at {}, exporting every {:?} to {}",
        options.profiler.policy.frequency,
        options.interval,
        options.exporter.endpoint
    );

    tokio::pin!(shutdown);
    loop {
        let mut shutting_down = false;
        let window = async {
            tokio::select! {
                () = &mut shutdown => shutting_down = true,
                () = tokio::time::sleep(options.interval) => {}
            }
        };
        profiler
            .run_until(window, |progress| {
                *shared.pipeline.lock().expect("pipeline lock") = progress.totals;
                *shared.last_drain.lock().expect("drain lock") = Instant::now();
            })
            .await?;
        if shutting_down {
            break;
        }
        let profiles = profiler.take_profiles()?;
        *shared.pipeline.lock().expect("pipeline lock") = profiler.totals();
        enqueue(&shared, &profiles, &host);
    }

    log::info!(
        "shutting down: exporting what was collected (at most {:?})",
        options.shutdown_timeout
    );
    shared.sampling.store(false, Ordering::Relaxed);
    let profiles = profiler.finish()?;
    enqueue(&shared, &profiles, &host);
    // The receiver lives in the exporter task; it only stops when told.
    let _ = stopping_tx.send(true);
    if tokio::time::timeout(options.shutdown_timeout, &mut exporter)
        .await
        .is_err()
    {
        // Stop the exporter (it only yields between whole bookkeeping
        // steps), then count what it held and what still waited.
        exporter.abort();
        let _ = exporter.await;
        shared.outbox.abandon();
        log::warn!("shutdown timeout reached; unsent profiles were dropped");
    }
    if let Some(server) = metrics_server {
        server.abort();
    }
    let stats = shared.stats();
    log::info!(
        "queued {} profiles: exported {} ({} bytes); dropped {} (queue full or shutdown), \
         rejected {}, failed {}",
        stats.queued_profiles,
        stats.sent.exported_profiles,
        stats.sent.bytes_sent,
        stats.sent.dropped.profiles,
        stats.sent.rejected_profiles,
        stats.sent.failed_profiles
    );
    Ok(stats)
}

/// Builds the export request of one window's `profiles` and queues it.
fn enqueue(shared: &Shared, profiles: &[Profile], host: &HostIdentity) {
    let started = Instant::now();
    let request = build_request(profiles, host);
    {
        let mut encoding = shared.encoding.lock().expect("encoding lock");
        encoding.encodes += 1;
        encoding.nanos += started.elapsed().as_nanos() as u64;
        encoding.queued_profiles += request.resource_profiles.len() as u64;
    }
    shared.outbox.push(request);
}
