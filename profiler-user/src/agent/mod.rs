//! Continuous profiling: sample without pause, turn every interval into one
//! OTLP export request, and ship requests through a bounded [`queue`] to an
//! exporter task that retries with backoff ([`retry`]).
//!
//! When the collector is slow or down, sampling goes on, the queue drops
//! its oldest requests (counted), and export resumes on its own. On
//! shutdown, sampling stops, the last window is queued and the exporter
//! flushes what it can within the shutdown timeout.

pub mod metrics;
pub mod queue;
pub mod retry;
pub mod server;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostprof_proto::otlp::collector::profiles::v1development::ExportProfilesServiceRequest;
use prost::Message;
use tokio::sync::{watch, Notify};

use crate::otlp::{build_request, ExportError, Exporter, ExporterConfig, HostIdentity};
use crate::profile::Profile;
use crate::profiler::{PipelineStats, Profiler, ProfilerError, ProfilerOptions};
use metrics::{Metrics, OwnUsage, Snapshot};
use queue::{BoundedQueue, Dropped, QueueLimits};
use retry::{Backoff, Verdict};

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
    /// Profiles the collector accepted.
    pub exported_profiles: u64,
    /// Profiles the collector rejected (`partial_success`; never retried).
    pub rejected_profiles: u64,
    /// Export attempts that failed.
    pub failed_attempts: u64,
    /// Profiles given up after a non-retryable error.
    pub failed_profiles: u64,
    /// Requests and profiles dropped because the queue was full, or left
    /// over when the shutdown timeout ran out.
    pub dropped: Dropped,
    /// Request bytes sent.
    pub bytes_sent: u64,
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
}

struct Shared {
    queue: Mutex<BoundedQueue<ExportProfilesServiceRequest>>,
    ready: Notify,
    stats: Mutex<AgentStats>,
    /// Profiles of the request the exporter is working on.
    in_flight: Mutex<u64>,
    /// When a full queue was last reported, to keep logs quiet in an outage.
    last_drop_warning: Mutex<Option<Instant>>,
    /// Pipeline totals as of the last drain.
    pipeline: Mutex<PipelineStats>,
    /// When the profiling loop last drained.
    last_drain: Mutex<Instant>,
    /// Set once sampling runs.
    sampling: AtomicBool,
    /// The loop counts as stalled after this long without a drain.
    stall_after: Duration,
}

/// A full queue is reported at most this often.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(60);

impl Shared {
    fn stats(&self) -> AgentStats {
        let mut stats = *self.stats.lock().expect("stats lock");
        let dropped = self.queue.lock().expect("queue lock").dropped();
        stats.dropped.requests += dropped.requests;
        stats.dropped.profiles += dropped.profiles;
        stats
    }

    fn snapshot(&self) -> Snapshot {
        let (queue_requests, queue_bytes) = {
            let queue = self.queue.lock().expect("queue lock");
            (queue.len(), queue.bytes())
        };
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
        queue: Mutex::new(BoundedQueue::new(options.queue)),
        ready: Notify::new(),
        stats: Mutex::new(AgentStats::default()),
        in_flight: Mutex::new(0),
        last_drop_warning: Mutex::new(None),
        pipeline: Mutex::new(PipelineStats::default()),
        last_drain: Mutex::new(Instant::now()),
        sampling: AtomicBool::new(false),
        stall_after: (options.profiler.drain_interval * 10).max(Duration::from_secs(30)),
    });
    let metrics_server = listener.map(|(listener, addr)| {
        log::info!("serving /metrics, /healthz and /readyz on http://{addr}");
        let source = Arc::clone(&shared);
        let metrics = Arc::new(Metrics::new(Arc::new(move || source.snapshot())));
        tokio::spawn(server::serve(listener, metrics, shared.clone()))
    });
    let mut profiler = Profiler::start(options.profiler.clone())?;
    shared.sampling.store(true, Ordering::Relaxed);
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let mut exporter = tokio::spawn(export_loop(
        Arc::clone(&shared),
        exporter,
        options.backoff,
        stopping_rx,
    ));
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
        let profile = profiler.take_profile()?;
        *shared.pipeline.lock().expect("pipeline lock") = profiler.totals();
        enqueue(&shared, &profile, &host);
    }

    log::info!(
        "shutting down: exporting what was collected (at most {:?})",
        options.shutdown_timeout
    );
    shared.sampling.store(false, Ordering::Relaxed);
    let profile = profiler.finish()?;
    enqueue(&shared, &profile, &host);
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
        let mut queue = shared.queue.lock().expect("queue lock");
        let mut stats = shared.stats.lock().expect("stats lock");
        let in_flight = std::mem::take(&mut *shared.in_flight.lock().expect("in-flight lock"));
        if in_flight > 0 {
            stats.dropped.requests += 1;
            stats.dropped.profiles += in_flight;
        }
        while let Some((_, profiles)) = queue.pop() {
            stats.dropped.requests += 1;
            stats.dropped.profiles += profiles;
        }
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
        stats.exported_profiles,
        stats.bytes_sent,
        stats.dropped.profiles,
        stats.rejected_profiles,
        stats.failed_profiles
    );
    Ok(stats)
}

/// Builds the export request of `profile` and queues it.
fn enqueue(shared: &Shared, profile: &Profile, host: &HostIdentity) {
    let started = Instant::now();
    let request = build_request(profile, host);
    let bytes = request.encoded_len();
    let profiles = request.resource_profiles.len() as u64;
    {
        let mut stats = shared.stats.lock().expect("stats lock");
        stats.encodes += 1;
        stats.encode_nanos += started.elapsed().as_nanos() as u64;
        stats.queued_profiles += profiles;
    }
    if profiles == 0 {
        return;
    }
    let mut queue = shared.queue.lock().expect("queue lock");
    let before = queue.dropped();
    queue.push(request, bytes, profiles);
    let after = queue.dropped();
    if after != before {
        let mut last = shared.last_drop_warning.lock().expect("warning lock");
        if last.is_none_or(|at| at.elapsed() >= DROP_WARNING_INTERVAL) {
            *last = Some(Instant::now());
            log::warn!(
                "export queue full ({} requests, {} bytes): dropping the oldest; \
                 {} profiles dropped so far",
                queue.len(),
                queue.bytes(),
                after.profiles
            );
        }
    }
    drop(queue);
    shared.ready.notify_one();
}

async fn export_loop(
    shared: Arc<Shared>,
    exporter: Exporter,
    backoff: Backoff,
    mut stopping: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        let next = shared.queue.lock().expect("queue lock").pop();
        *shared.in_flight.lock().expect("in-flight lock") = next.as_ref().map_or(0, |(_, p)| *p);
        let Some((request, profiles)) = next else {
            if *stopping.borrow() {
                return;
            }
            tokio::select! {
                () = shared.ready.notified() => {}
                _ = stopping.changed() => {}
            }
            continue;
        };
        let mut attempt = 0;
        loop {
            match exporter.export(&request).await {
                Ok(outcome) => {
                    if failing {
                        log::info!("export to {} works again", exporter.config().endpoint);
                        failing = false;
                    }
                    let rejected = outcome.rejected_profiles.max(0) as u64;
                    if rejected > 0 || !outcome.message.is_empty() {
                        log::warn!(
                            "the collector rejected {rejected} profiles: {}",
                            outcome.message
                        );
                    }
                    let mut stats = shared.stats.lock().expect("stats lock");
                    stats.exported_profiles += profiles.saturating_sub(rejected);
                    stats.rejected_profiles += rejected;
                    stats.bytes_sent += outcome.bytes_sent as u64;
                    *shared.in_flight.lock().expect("in-flight lock") = 0;
                    break;
                }
                Err(err) => {
                    shared.stats.lock().expect("stats lock").failed_attempts += 1;
                    match retry::classify(&err) {
                        Verdict::GiveUp => {
                            log::error!("export failed and will not be retried: {err}");
                            shared.stats.lock().expect("stats lock").failed_profiles += profiles;
                            *shared.in_flight.lock().expect("in-flight lock") = 0;
                            break;
                        }
                        Verdict::Retry(hint) => {
                            // One line per outage, not one per attempt.
                            if !failing {
                                log::warn!("{err}; retrying with backoff");
                                failing = true;
                            }
                            // Newer requests wait in the bounded queue
                            // meanwhile, which drops its oldest when full.
                            let delay = backoff.delay(attempt, rand::random::<f64>(), hint);
                            attempt += 1;
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
            }
        }
    }
}
