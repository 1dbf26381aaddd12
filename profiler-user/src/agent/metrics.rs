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
}

impl OwnUsage {
    /// Reads this process's usage (`getrusage`, `/proc/self/statm`); zero
    /// where unavailable.
    pub fn read() -> Self {
        // SAFETY: getrusage fills the struct it is given.
        let usage = unsafe {
            let mut usage = std::mem::zeroed::<libc::rusage>();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        // SAFETY: sysconf has no preconditions.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let resident_pages = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        Self {
            cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            rss_bytes: resident_pages * page,
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
        let dropped = [
            ("map_full", p.capture.dropped),
            ("user_stack_error", p.capture.user_stack_errors),
            ("kernel_stack_error", p.capture.kernel_stack_errors),
            ("stack_not_stored", p.capture.stacks_lost),
        ];
        let mut family = e.encode_descriptor(
            "samples_dropped",
            "Samples lost or degraded, by reason (stack errors keep the sample without that stack)",
            None,
            MetricType::Counter,
        )?;
        for (reason, value) in dropped {
            ConstCounter::new(value).encode(family.encode_family(&[("reason", reason)])?)?;
        }
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
            ConstCounter::new(a.exported_profiles),
        )?;
        emit(
            &mut e,
            "profiles_rejected",
            "Profiles the collector rejected (partial_success)",
            None,
            ConstCounter::new(a.rejected_profiles),
        )?;
        emit(
            &mut e,
            "profiles_dropped",
            "Profiles dropped because the export queue was full or shutdown timed out",
            None,
            ConstCounter::new(a.dropped.profiles),
        )?;
        emit(
            &mut e,
            "profiles_failed",
            "Profiles given up after a non-retryable export error",
            None,
            ConstCounter::new(a.failed_profiles),
        )?;
        emit(
            &mut e,
            "export_failures",
            "Export attempts that failed",
            None,
            ConstCounter::new(a.failed_attempts),
        )?;
        emit(
            &mut e,
            "export_sent",
            "Bytes of export requests the collector accepted",
            Some(&Unit::Bytes),
            ConstCounter::new(a.bytes_sent),
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_from_the_snapshot() {
        let mut snapshot = Snapshot::default();
        snapshot.pipeline.samples = 1234;
        snapshot.pipeline.capture.user_stack_errors = 7;
        snapshot.pipeline.stacks = 42;
        snapshot.agent.exported_profiles = 3;
        snapshot.agent.bytes_sent = 4096;
        snapshot.agent.dropped.profiles = 2;
        snapshot.queue_bytes = 100;
        snapshot.own = OwnUsage {
            cpu_seconds: 1.5,
            rss_bytes: 10 << 20,
        };
        let text = Metrics::new(Arc::new(move || snapshot)).render();
        for line in [
            "hostprof_samples_total 1234",
            "hostprof_samples_dropped_total{reason=\"user_stack_error\"} 7",
            "hostprof_samples_dropped_total{reason=\"map_full\"} 0",
            "hostprof_stacks 42",
            "hostprof_profiles_exported_total 3",
            "hostprof_profiles_dropped_total 2",
            "hostprof_export_sent_bytes_total 4096",
            "hostprof_queue_bytes 100",
            "hostprof_cpu_seconds_total 1.5",
            "hostprof_resident_memory_bytes 10485760",
            "# TYPE hostprof_symbol_cache_hits counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn own_usage_is_read() {
        let usage = OwnUsage::read();
        assert!(usage.rss_bytes > 0);
        assert!(usage.cpu_seconds >= 0.0);
    }
}
