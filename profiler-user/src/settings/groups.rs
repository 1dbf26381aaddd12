//! The groups of settings, each declared once (flag, key, type, doc), and
//! how they resolve into the library's options and back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use super::file::{duration, headers, parse_duration};
use super::{settings_group, CommandGroup, Settings, SettingsError, REDACTED};
use crate::agent::AgentOptions;
use crate::filter::{parse_selector, ProcessFilter};
use crate::kind::ProfileKind;
use crate::otlp::config::check_endpoint;
use crate::otlp::queue::QueueLimits;
use crate::otlp::retry::Backoff;
use crate::otlp::{ExporterConfig, ExporterFlags, Protocol};
use crate::profiler::ProfilerOptions;
use crate::profiler::{
    Frequency, MaxCpu, MemorySampleBytes, OffCpuRate, PageFaultPeriod, SamplingPolicy, Target,
    TraceContextMap,
};
use crate::unwind::{TableBudget, Unwinder, UnwinderKind};

/// Default length of one exported profile.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The agent's longest interval between two drains of the kernel's maps,
/// while they stay nearly empty (the shortest is one second).
pub const LONGEST_AGENT_DRAIN: Duration = Duration::from_secs(4);
/// Default time shutdown may spend exporting what is left.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default length of a capture.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Default pprof file of a capture.
pub const DEFAULT_OUTPUT: &str = "host.pb.gz";

settings_group! {
    /// What is profiled and how: kinds, frequency, processes, unwinding.
    /// Unset settings take [`ProfilerOptions::default`]'s values.
    #[command(next_help_heading = "Profiling")]
    pub struct Profiling {
        /// Profile kinds to take, comma-separated; each is taken once:
        /// `cpu` (where CPU time goes), `off-cpu` (where threads wait, and
        /// how long), `locks` (which kernel and user-space locks threads
        /// wait for, and how long), `page-faults` (where resident memory
        /// grows), `memory` (who allocates heap memory and what stays
        /// allocated; needs --pid, --cgroup, --namespace or
        /// --pod-selector) [default: cpu].
        #[arg(long, value_name = "KIND[,KIND...]", value_delimiter = ',')]
        pub profiles: Option<Vec<ProfileKind>>,

        /// Samples per second on each CPU, 1 to 1000 [default: 99].
        #[arg(short = 'F', long)]
        pub frequency: Option<Frequency>,

        /// Most CPU hostprof may use, its threads and kernel programs, in
        /// percent of one core (0.001 to 100), e.g. `0.25`: over it, the
        /// CPU profile's frequency is lowered until the cost fits, and
        /// raised again (up to --frequency) when it drops; each sample
        /// stands for its own period. Default: no budget.
        #[arg(long, value_name = "PERCENT")]
        pub max_cpu: Option<MaxCpu>,

        /// Only profile this process id (repeatable). Default: every process.
        #[arg(short, long = "pid", value_name = "PID")]
        pub pids: Option<Vec<u32>>,

        /// Leave the idle task (pid 0) out, so shares are of busy CPU time.
        #[arg(long, num_args = 0, default_missing_value = "true")]
        pub no_idle: Option<bool>,

        /// How to unwind user stacks [default: tables].
        #[arg(long, value_name = "UNWINDER", ignore_case = true, value_parser = unwinder_parser())]
        pub unwinder: Option<UnwinderKind>,

        /// Kernel memory for unwind tables (`--unwinder tables`), 1MiB to
        /// 1GiB, e.g. `64MiB` [default: 64MiB].
        ///
        /// A whole number of bytes, optionally followed by a unit B, KiB, MiB
        /// or GiB in any case; KB, MB and GB mean the same binary units (1 KB
        /// = 1024 bytes). For example `64MiB`, `512mb`, `1GiB` or `1048576`.
        #[arg(long, value_name = "SIZE")]
        pub unwind_table_budget: Option<TableBudget>,

        /// Off-CPU intervals unwound per second per CPU, at most, 1 to
        /// 100000 [default: 250]. Waits shorter than the adaptive period
        /// are sampled (totals stay exact in expectation).
        #[arg(long, value_name = "EVENTS")]
        pub off_cpu_max_rate: Option<OffCpuRate>,

        /// Page faults per page-fault sample on each CPU (`--profiles
        /// page-faults`), 1 to 1000000 [default: 1000]; each sample stands
        /// for that many faults.
        #[arg(long, value_name = "FAULTS")]
        pub page_fault_period: Option<PageFaultPeriod>,

        /// Mean bytes allocated between two sampled allocations
        /// (`--profiles memory`), 1 to 1073741824 [default: 524288]; only
        /// sampled allocations are unwound, and each stands for its share
        /// of the bytes (totals are right in expectation).
        #[arg(long, value_name = "BYTES")]
        pub memory_sample_bytes: Option<MemorySampleBytes>,

        /// Where the OpenTelemetry trace-context map is pinned (thread →
        /// trace id and span id, filled by an OpenTelemetry eBPF
        /// instrumentation): samples carry the trace and span their thread
        /// ran in. Created and pinned there when absent; `none` turns trace
        /// links off [default: /sys/fs/bpf/otel/traces_ctx_v1].
        #[arg(long, value_name = "PATH")]
        pub trace_context_map: Option<TraceContextMap>,

        /// Distinct trace links one process keeps per window (an exported
        /// profile, or a whole `record`); samples in later spans keep their
        /// stacks without a link, counted [default: 256].
        #[arg(long, value_name = "N")]
        pub max_links_per_process: Option<usize>,

        /// Do not read the thread context OpenTelemetry SDKs publish in
        /// processes (`otel_thread_ctx_v1`, OTEP 4947) for trace links.
        #[arg(long, num_args = 0, default_missing_value = "true")]
        pub no_thread_context: Option<bool>,

        /// Do not walk CPython's frames in Python processes (3.11 to 3.13):
        /// their stacks then show the interpreter's C functions only.
        #[arg(long, num_args = 0, default_missing_value = "true")]
        pub no_python: Option<bool>,
    }
}

settings_group! {
    /// Which processes are kept beyond `--pid`, and the Kubernetes node
    /// whose pods they are matched against.
    #[command(next_help_heading = "Filters")]
    pub struct Filters {
        /// Only profile pods in this Kubernetes namespace (repeatable).
        #[arg(long = "namespace", value_name = "NS")]
        pub namespaces: Option<Vec<String>>,

        /// Leave out pods in this Kubernetes namespace (repeatable).
        #[arg(long = "exclude-namespace", value_name = "NS")]
        pub exclude_namespaces: Option<Vec<String>>,

        /// Only profile pods carrying these labels, e.g. `app=checkout,tier=web`.
        #[arg(long, value_name = "SELECTOR", value_parser = check_selector)]
        pub pod_selector: Option<String>,

        /// Only profile processes in this cgroup or below it, e.g.
        /// `/kubepods.slice` (repeatable).
        #[arg(long = "cgroup", value_name = "PATH")]
        pub cgroups: Option<Vec<String>>,

        /// This Kubernetes node's name; turns on pod metadata (pod, namespace
        /// and container names) from the API server. Default: $NODE_NAME.
        #[arg(long, value_name = "NAME")]
        pub node_name: Option<String>,
    }
}

settings_group! {
    /// Where and how profiles are exported over OTLP; each setting wins
    /// over its `OTEL_EXPORTER_OTLP_*` variable.
    #[command(next_help_heading = "OTLP export")]
    pub struct Export {
        /// OTLP endpoint, e.g. `http://localhost:4317` (gRPC) or
        /// `http://localhost:4318` (HTTP). Default:
        /// OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT.
        /// `record` exports only when an endpoint is set here or there;
        /// `agent` falls back to `http://localhost:4317`.
        #[arg(long, value_name = "URL")]
        pub otlp_endpoint: Option<String>,

        /// OTLP transport: `grpc` or `http` (HTTP/protobuf) [default: grpc].
        #[arg(long, value_name = "PROTOCOL")]
        pub otlp_protocol: Option<Protocol>,

        /// Extra header for the export, e.g. `authorization=Bearer X`
        /// (repeatable); added to OTEL_EXPORTER_OTLP_HEADERS.
        #[arg(long = "otlp-header", value_name = "KEY=VALUE", value_parser = parse_header)]
        #[serde(with = "headers")]
        pub otlp_headers: Option<Vec<(String, String)>>,

        /// PEM file of the CA that signed the collector's TLS certificate, for
        /// `https://` endpoints with a private CA. Default:
        /// OTEL_EXPORTER_OTLP_CERTIFICATE; the system's roots are always trusted.
        #[arg(long, value_name = "PATH")]
        pub otlp_certificate: Option<PathBuf>,
    }
}

settings_group! {
    /// What only `hostprof agent` has: the export interval, the queue, the
    /// metrics endpoint and shutdown.
    #[command(next_help_heading = "Agent")]
    pub struct AgentOnly {
        /// Length of each exported profile, e.g. `10s`, `1m` [default: 10s].
        #[arg(long, value_parser = parse_duration)]
        #[serde(with = "duration")]
        pub interval: Option<Duration>,

        /// Serve Prometheus metrics (`/metrics`) and health checks (`/healthz`,
        /// `/readyz`) on this address, e.g. `127.0.0.1:9464`. Default: off.
        #[arg(long, value_name = "ADDR")]
        pub metrics_addr: Option<SocketAddr>,

        /// Most export requests held while the collector is slow or down, at
        /// least 1; the oldest are dropped (and counted) beyond it [default: 60].
        #[arg(long, value_name = "N")]
        pub queue_max_requests: Option<usize>,

        /// Most bytes of export requests held while the collector is slow or
        /// down, at least 65536 (a request larger than this is dropped)
        /// [default: 33554432].
        #[arg(long, value_name = "BYTES")]
        pub queue_max_bytes: Option<usize>,

        /// How long SIGTERM/SIGINT may spend exporting what was collected
        /// [default: 5s].
        #[arg(long, value_parser = parse_duration)]
        #[serde(with = "duration")]
        pub shutdown_timeout: Option<Duration>,
    }
}

settings_group! {
    /// What only `hostprof record` has: how long, and the local files.
    #[command(next_help_heading = "Record")]
    pub struct RecordOnly {
        /// How long to sample, e.g. `10s`, `1m`, `500ms`; Ctrl-C or SIGTERM
        /// ends early and still writes everything [default: 10s].
        #[arg(short, long, value_parser = parse_duration)]
        #[serde(with = "duration")]
        pub duration: Option<Duration>,

        /// Where to write the gzip-compressed pprof profile [default: host.pb.gz].
        #[arg(short, long, value_name = "PATH")]
        pub output: Option<PathBuf>,

        /// Where to write the flamegraph SVG. Default: beside --output, as
        /// `<name>.svg`.
        #[arg(long, value_name = "PATH")]
        pub flamegraph: Option<PathBuf>,

        /// Do not write a flamegraph.
        #[arg(long, num_args = 0, default_missing_value = "true")]
        pub no_flamegraph: Option<bool>,

        /// Also write folded stacks (one `frame;frame;... count` line per stack).
        #[arg(long, value_name = "PATH")]
        pub folded: Option<PathBuf>,

        /// Write no local files, only export (needs an OTLP endpoint).
        #[arg(long, num_args = 0, default_missing_value = "true")]
        pub no_local: Option<bool>,

        /// Also write the capture's figures (samples, losses, unwinding,
        /// unwind tables, timings; per profile kind) as JSON, for scripts
        /// and benchmarks. Written even with `--no-local`.
        #[arg(long, value_name = "PATH")]
        pub stats_json: Option<PathBuf>,
    }
}

/// The smallest `queue_max_bytes`: one export request of a quiet host
/// is a few KiB, of a busy one hundreds; a queue smaller than the request
/// drops it unsent.
pub const MIN_QUEUE_BYTES: usize = 64 << 10;

impl CommandGroup for AgentOnly {
    const COMMAND: &'static str = "agent";

    fn check(&self) -> Result<(), SettingsError> {
        if self.queue_max_requests == Some(0) {
            return Err(SettingsError::Invalid {
                key: "queue_max_requests",
                message: format!(
                    "must be at least 1 to hold any request; leave it out for the default, {}",
                    QueueLimits::default().max_requests
                ),
            });
        }
        if let Some(bytes) = self.queue_max_bytes.filter(|&b| b < MIN_QUEUE_BYTES) {
            return Err(SettingsError::Invalid {
                key: "queue_max_bytes",
                message: format!(
                    "{bytes} is too small: give at least {MIN_QUEUE_BYTES} (64 KiB), as a \
                     smaller queue drops nearly every request unsent; leave it out for the \
                     default, {}",
                    QueueLimits::default().max_bytes
                ),
            });
        }
        Ok(())
    }
}

impl CommandGroup for RecordOnly {
    const COMMAND: &'static str = "record";

    /// A flamegraph path drops the `no_flamegraph` of the source below,
    /// and `no_flamegraph` its path.
    fn overlay_rules(over: &Self, merged: &mut Self) {
        match (&over.flamegraph, over.no_flamegraph) {
            (Some(_), None) => merged.no_flamegraph = None,
            (None, Some(true)) => merged.flamegraph = None,
            _ => {}
        }
    }

    fn check(&self) -> Result<(), SettingsError> {
        match (&self.flamegraph, self.no_flamegraph) {
            (Some(path), Some(true)) => Err(SettingsError::Invalid {
                key: "no_flamegraph",
                message: format!(
                    "a flamegraph is also asked for at {}; drop one of the two",
                    path.display()
                ),
            }),
            _ => Ok(()),
        }
    }
}

impl Profiling {
    /// The profile kinds, each once, in the order given; an empty list is
    /// an error.
    pub fn profile_kinds(&self) -> Result<Vec<ProfileKind>, SettingsError> {
        let Some(given) = &self.profiles else {
            return Ok(ProfilerOptions::default().profiles);
        };
        if given.is_empty() {
            let known: Vec<_> = ProfileKind::ALL.iter().map(|k| k.name()).collect();
            return Err(SettingsError::Invalid {
                key: "profiles",
                message: format!(
                    "give at least one profile kind; the kinds are: {}",
                    known.join(", ")
                ),
            });
        }
        let mut kinds = Vec::with_capacity(given.len());
        for &kind in given {
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    }

    /// The unwinder these settings ask for. A table budget with frame
    /// pointers is an error: the one statement of that rule, for flags,
    /// file and both together.
    pub fn unwinder(&self) -> Result<Unwinder, SettingsError> {
        let kind = self.unwinder.unwrap_or(Unwinder::default().kind());
        Unwinder::from_kind(kind, self.unwind_table_budget).map_err(|err| SettingsError::Invalid {
            key: "unwind_table_budget",
            message: format!("{err}; set the unwinder to tables or drop the budget"),
        })
    }

    /// The sampling policy these settings ask for.
    pub fn policy(&self) -> Result<SamplingPolicy, SettingsError> {
        let defaults = SamplingPolicy::default();
        Ok(SamplingPolicy {
            frequency: self.frequency.unwrap_or(defaults.frequency),
            max_cpu: self.max_cpu.or(defaults.max_cpu),
            target: match &self.pids {
                Some(pids) if !pids.is_empty() => Target::Pids(pids.clone()),
                _ => Target::AllProcesses,
            },
            include_idle: match self.no_idle {
                Some(no_idle) => !no_idle,
                None => defaults.include_idle,
            },
            unwinder: self.unwinder()?,
            off_cpu_max_rate: self.off_cpu_max_rate.unwrap_or(defaults.off_cpu_max_rate),
            page_fault_period: self.page_fault_period.unwrap_or(defaults.page_fault_period),
            memory_sample_bytes: self
                .memory_sample_bytes
                .unwrap_or(defaults.memory_sample_bytes),
            trace_context_map: self
                .trace_context_map
                .clone()
                .unwrap_or(defaults.trace_context_map),
            thread_context: match self.no_thread_context {
                Some(off) => !off,
                None => defaults.thread_context,
            },
            python: match self.no_python {
                Some(off) => !off,
                None => defaults.python,
            },
        })
    }

    /// Every setting as `options` has it.
    pub fn effective(options: &ProfilerOptions) -> Self {
        let policy = &options.policy;
        Self {
            profiles: Some(options.profiles.clone()),
            frequency: Some(policy.frequency),
            max_cpu: policy.max_cpu,
            pids: Some(match &policy.target {
                Target::AllProcesses => Vec::new(),
                Target::Pids(pids) => pids.clone(),
            }),
            no_idle: Some(!policy.include_idle),
            unwinder: Some(policy.unwinder.kind()),
            unwind_table_budget: policy.unwinder.table_budget(),
            off_cpu_max_rate: Some(policy.off_cpu_max_rate),
            page_fault_period: Some(policy.page_fault_period),
            memory_sample_bytes: Some(policy.memory_sample_bytes),
            trace_context_map: Some(policy.trace_context_map.clone()),
            no_thread_context: Some(!policy.thread_context),
            no_python: Some(!policy.python),
            max_links_per_process: Some(options.max_links_per_process),
        }
    }
}

impl Filters {
    /// The process filter these settings ask for.
    pub fn filter(&self) -> Result<ProcessFilter, SettingsError> {
        let pod_selector = match &self.pod_selector {
            Some(s) => parse_selector(s).map_err(|err| SettingsError::Invalid {
                key: "pod_selector",
                message: err.to_string(),
            })?,
            None => Vec::new(),
        };
        Ok(ProcessFilter {
            namespaces: self.namespaces.clone().unwrap_or_default(),
            exclude_namespaces: self.exclude_namespaces.clone().unwrap_or_default(),
            pod_selector,
            cgroups: self.cgroups.clone().unwrap_or_default(),
        })
    }

    /// The node name: this setting, else `NODE_NAME` as `env` reads it
    /// (the only place hostprof reads it); empty means none.
    pub fn node_name(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| env("NODE_NAME"))
            .filter(|s| !s.is_empty())
    }

    /// Every setting as `options` has it.
    pub fn effective(options: &ProfilerOptions) -> Self {
        let filter = &options.filter;
        Self {
            namespaces: Some(filter.namespaces.clone()),
            exclude_namespaces: Some(filter.exclude_namespaces.clone()),
            pod_selector: (!filter.pod_selector.is_empty()).then(|| {
                filter
                    .pod_selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            cgroups: Some(filter.cgroups.clone()),
            node_name: options.node_name.clone(),
        }
    }
}

impl Export {
    /// Checks the endpoint URL (scheme, host, port from 1 to 65535): for
    /// flags and the file alike, through [`Settings::check`].
    pub fn check(&self) -> Result<(), SettingsError> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(());
        };
        check_endpoint(endpoint).map_err(|expected| SettingsError::Invalid {
            key: "otlp_endpoint",
            message: format!("{endpoint:?} is not an OTLP endpoint: expected {expected}"),
        })
    }

    /// The exporter: these settings over the `OTEL_EXPORTER_OTLP_*`
    /// variables as `env` reads them, over the defaults.
    pub fn exporter(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ExporterConfig, SettingsError> {
        // Equal header names: the last one given wins.
        let mut headers: Vec<(String, String)> = Vec::new();
        for (name, value) in self.otlp_headers.iter().flatten() {
            headers.retain(|(n, _)| n != name);
            headers.push((name.clone(), value.clone()));
        }
        let flags = ExporterFlags {
            endpoint: self.otlp_endpoint.clone(),
            protocol: self.otlp_protocol,
            headers,
            certificate: self.otlp_certificate.clone(),
        };
        Ok(ExporterConfig::resolve(&flags, env)?)
    }

    /// The exporter, or `None` when no endpoint is set here or in the
    /// environment (where an empty variable is unset).
    pub fn exporter_if_configured(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ExporterConfig>, SettingsError> {
        let flags = ExporterFlags {
            endpoint: self.otlp_endpoint.clone(),
            ..ExporterFlags::default()
        };
        ExporterConfig::endpoint_configured(&flags, &env)
            .then(|| self.exporter(env))
            .transpose()
    }

    /// Every setting as `exporter` has it (none without one); header values
    /// are [`REDACTED`].
    pub fn effective(exporter: Option<&ExporterConfig>) -> Self {
        let Some(exporter) = exporter else {
            return Self::default();
        };
        Self {
            otlp_endpoint: Some(if exporter.protocol == Protocol::HttpProtobuf {
                exporter.http_url()
            } else {
                exporter.endpoint.clone()
            }),
            otlp_protocol: Some(exporter.protocol),
            otlp_headers: Some(
                exporter
                    .headers
                    .iter()
                    .map(|(name, _)| (name.clone(), REDACTED.to_owned()))
                    .collect(),
            ),
            otlp_certificate: exporter.certificate.clone(),
        }
    }
}

impl<C: CommandGroup> Settings<C> {
    /// The profiler's options: profiling and filter settings over the
    /// defaults, the node name over `NODE_NAME` as `env` reads it.
    pub fn profiler_options(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ProfilerOptions, SettingsError> {
        let policy = self.profiling.policy()?;
        let profiles = self.profiling.profile_kinds()?;
        let filter = self.filters.filter()?;
        if profiles.contains(&ProfileKind::Memory)
            && policy.target == Target::AllProcesses
            && filter.selects_nothing()
        {
            return Err(SettingsError::Invalid {
                key: "profiles",
                message: "the memory profile traps every allocation of the processes it \
                          profiles, so it profiles selected ones only: give --pid, --cgroup, \
                          --namespace or --pod-selector (allocation-heavy programs slow down \
                          while it runs)"
                    .to_owned(),
            });
        }
        Ok(ProfilerOptions {
            policy,
            profiles,
            filter,
            node_name: self.filters.node_name(env),
            max_links_per_process: self
                .profiling
                .max_links_per_process
                .unwrap_or(ProfilerOptions::default().max_links_per_process),
            ..ProfilerOptions::default()
        })
    }
}

impl Settings<AgentOnly> {
    /// The agent's options: these settings over the environment (read by
    /// `env`) over the defaults.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<AgentOptions, SettingsError> {
        self.check()?;
        let agent = &self.command;
        let defaults = QueueLimits::default();
        let queue = QueueLimits {
            max_requests: agent.queue_max_requests.unwrap_or(defaults.max_requests),
            max_bytes: agent.queue_max_bytes.unwrap_or(defaults.max_bytes),
        };
        Ok(AgentOptions {
            profiler: ProfilerOptions {
                // Continuous: the fewest drains the maps allow (a one-shot
                // capture reports progress at each drain, every second).
                longest_drain_interval: LONGEST_AGENT_DRAIN,
                ..self.profiler_options(&env)?
            },
            interval: agent.interval.unwrap_or(DEFAULT_INTERVAL),
            exporter: self.export.exporter(&env)?,
            queue,
            shutdown_timeout: agent.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            backoff: Backoff::default(),
            metrics_addr: agent.metrics_addr,
        })
    }

    /// Every setting as `options` has it, for `--print-config`; header
    /// values are [`REDACTED`].
    pub fn effective(options: &AgentOptions) -> Self {
        Self {
            command: AgentOnly {
                interval: Some(options.interval),
                metrics_addr: options.metrics_addr,
                queue_max_requests: Some(options.queue.max_requests),
                queue_max_bytes: Some(options.queue.max_bytes),
                shutdown_timeout: Some(options.shutdown_timeout),
            },
            profiling: Profiling::effective(&options.profiler),
            filters: Filters::effective(&options.profiler),
            export: Export::effective(Some(&options.exporter)),
        }
    }
}

/// How `hostprof record` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordOptions {
    /// What to profile and how.
    pub profiler: ProfilerOptions,
    /// How long to sample.
    pub duration: Duration,
    /// The files to write; `None` with `no_local`.
    pub local: Option<LocalOutputs>,
    /// Where to export the profile, if anywhere.
    pub exporter: Option<ExporterConfig>,
    /// Where to write the capture's figures as JSON, if anywhere.
    pub stats_json: Option<PathBuf>,
}

/// The local files `hostprof record` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalOutputs {
    /// The gzip-compressed pprof profile.
    pub pprof: PathBuf,
    /// The flamegraph SVG, if one is written.
    pub flamegraph: Option<PathBuf>,
    /// The folded stacks, if they are written.
    pub folded: Option<PathBuf>,
}

impl LocalOutputs {
    /// The files of the profile of `kind`: these paths for the CPU
    /// profile, and for any other kind the same paths with `.KIND` before
    /// their extension: `host.pb.gz` → `host.off-cpu.pb.gz`, `host.svg` →
    /// `host.off-cpu.svg`.
    pub fn for_kind(&self, kind: ProfileKind) -> LocalOutputs {
        if kind == ProfileKind::Cpu {
            return self.clone();
        }
        let name = |path: &PathBuf| with_kind(path, kind.name());
        LocalOutputs {
            pprof: name(&self.pprof),
            flamegraph: self.flamegraph.as_ref().map(name),
            folded: self.folded.as_ref().map(name),
        }
    }
}

/// `path` with `.{kind}` inserted before its extension (`.pb.gz` counts
/// as one), or appended when it has none.
fn with_kind(path: &Path, kind: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, extension) = match name.strip_suffix(".pb.gz") {
        Some(stem) => (stem, ".pb.gz"),
        None => match name.rfind('.') {
            Some(dot) if dot > 0 => name.split_at(dot),
            _ => (name.as_str(), ""),
        },
    };
    path.with_file_name(format!("{stem}.{kind}{extension}"))
}

impl Settings<RecordOnly> {
    /// The capture's options: these settings over the environment (read by
    /// `env`) over the defaults. `no_local` without an endpoint is an error.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<RecordOptions, SettingsError> {
        self.check()?;
        let record = &self.command;
        let exporter = self.export.exporter_if_configured(&env)?;
        let local = if record.no_local == Some(true) {
            if exporter.is_none() {
                return Err(SettingsError::Invalid {
                    key: "no_local",
                    message: "writes no local files, so it needs an OTLP endpoint \
                              (otlp_endpoint, or OTEL_EXPORTER_OTLP_ENDPOINT)"
                        .into(),
                });
            }
            None
        } else {
            let pprof = record
                .output
                .clone()
                .unwrap_or_else(|| DEFAULT_OUTPUT.into());
            let flamegraph = match (record.no_flamegraph, &record.flamegraph) {
                (Some(true), _) => None,
                (_, Some(path)) => Some(path.clone()),
                (_, None) => Some(beside(&pprof, "svg")),
            };
            Some(LocalOutputs {
                flamegraph,
                folded: record.folded.clone(),
                pprof,
            })
        };
        Ok(RecordOptions {
            profiler: self.profiler_options(&env)?,
            duration: record.duration.unwrap_or(DEFAULT_DURATION),
            local,
            exporter,
            stats_json: record.stats_json.clone(),
        })
    }

    /// Every setting as `options` has it, for `--print-config`; header
    /// values are [`REDACTED`].
    pub fn effective(options: &RecordOptions) -> Self {
        let local = options.local.as_ref();
        Self {
            command: RecordOnly {
                duration: Some(options.duration),
                output: local.map(|l| l.pprof.clone()),
                flamegraph: local.and_then(|l| l.flamegraph.clone()),
                no_flamegraph: local.map(|l| l.flamegraph.is_none()),
                folded: local.and_then(|l| l.folded.clone()),
                no_local: Some(local.is_none()),
                stats_json: options.stats_json.clone(),
            },
            profiling: Profiling::effective(&options.profiler),
            filters: Filters::effective(&options.profiler),
            export: Export::effective(options.exporter.as_ref()),
        }
    }
}

/// `output` with its pprof extension (`.pb.gz`, `.gz` or `.pb`) replaced by
/// `.{extension}`: `host.pb.gz` → `host.svg`.
fn beside(output: &Path, extension: &str) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".pb.gz")
        .or_else(|| name.strip_suffix(".gz"))
        .or_else(|| name.strip_suffix(".pb"))
        .unwrap_or(&name);
    output.with_file_name(format!("{stem}.{extension}"))
}

/// `tables` or `frame-pointers`, with what each means for `--help`.
fn unwinder_parser() -> impl TypedValueParser<Value = UnwinderKind> {
    PossibleValuesParser::new([
        PossibleValue::new(UnwinderKind::Tables.name()).help(
            "unwind user stacks from .eh_frame tables loaded into the kernel, \
             falling back to frame pointers where a file has none",
        ),
        PossibleValue::new(UnwinderKind::FramePointers.name()).help(
            "frame pointers only: the cheapest, up to 127 frames; needed on kernels \
             5.19 to 6.3 without the bpf_probe_read_user fix",
        ),
    ])
    .map(|name| name.parse().expect("a possible value"))
}

/// A pod selector, checked when given as a flag (the file's is checked
/// when resolved).
fn check_selector(s: &str) -> Result<String, String> {
    parse_selector(s)
        .map(|_| s.to_owned())
        .map_err(|err| err.to_string())
}

/// One `--otlp-header KEY=VALUE`.
fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}
