//! Settings of `hostprof agent`: a YAML file whose keys are the long flag
//! names (`interval`, `otlp_endpoint`, ...), overlaid by the flags given on
//! the command line, resolved over the `OTEL_*` environment and defaults.
//!
//! Precedence, highest first: flag, config file, environment variable,
//! default. Unknown keys and bad values are errors that name the key and,
//! for the file, its line and column.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::AgentOptions;
use crate::filter::{parse_selector, ProcessFilter};
use crate::otlp::config::ConfigError;
use crate::otlp::queue::QueueLimits;
use crate::otlp::retry::Backoff;
use crate::otlp::{ExporterConfig, ExporterFlags, Protocol};
use crate::profiler::ProfilerOptions;
use crate::sampler::{Frequency, SamplingPolicy, Target};
use crate::unwind::{TableBudget, Unwinder, UnwinderKind};

/// Default length of one exported profile.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default time shutdown may spend exporting what is left.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Agent settings from one source (file or flags); `None` defers to the
/// next source down.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// Length of each exported profile.
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Samples per second on each CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<Frequency>,
    /// Only profile these process ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<Vec<u32>>,
    /// Leave the idle task out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_idle: Option<bool>,
    /// How user stacks are unwound: `tables` (default) or `frame-pointers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwinder: Option<UnwinderKind>,
    /// Kernel memory for unwind tables (`64MiB`, 1 MiB to 1 GiB); only with
    /// the `tables` unwinder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwind_table_budget: Option<TableBudget>,
    /// OTLP endpoint URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_protocol: Option<Protocol>,
    /// Extra export headers (added to `OTEL_EXPORTER_OTLP_HEADERS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_headers: Option<BTreeMap<String, String>>,
    /// PEM file of the CA that signed the collector's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_certificate: Option<PathBuf>,
    /// Address of the Prometheus metrics and health endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
    /// Most export requests queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_max_requests: Option<usize>,
    /// Most bytes of export requests queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_max_bytes: Option<usize>,
    /// How long shutdown may spend exporting what is left.
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout: Option<Duration>,
    /// Only profile pods in these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Leave out pods in these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_namespaces: Option<Vec<String>>,
    /// Only profile pods with these labels (`app=checkout,tier=web`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<String>,
    /// Only profile processes in these cgroups or below them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups: Option<Vec<String>>,
    /// This Kubernetes node's name (default `$NODE_NAME`); turns on pod
    /// metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read the config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML or holds an unknown key or a bad value.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem (0 when unknown).
        line: usize,
        /// 1-based column of the problem (0 when unknown).
        column: usize,
        /// What is wrong, naming the key or value.
        message: String,
    },
    /// A value that is well-formed but not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// An exporter setting (flag, file or environment) that is wrong.
    #[error(transparent)]
    Exporter(#[from] ConfigError),
}

/// Shown instead of header values, which often carry credentials.
pub const REDACTED: &str = "<redacted>";

impl AgentSettings {
    /// Reads settings from the YAML file at `path`.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses settings from YAML text; `path` only names it in errors.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, SettingsError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let settings: Self = serde_yaml_ng::from_str(text).map_err(|err| {
            let (line, column) = err.location().map_or((0, 0), |at| (at.line(), at.column()));
            let mut message = err.to_string();
            // The location is reported in front, not repeated at the end.
            if let Some(at) = message.find(" at line ") {
                message.truncate(at);
            }
            SettingsError::Parse {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        })?;
        if let (Some(UnwinderKind::FramePointers), Some(budget)) =
            (settings.unwinder, settings.unwind_table_budget)
        {
            let (line, column) = key_location(text, "unwind_table_budget");
            return Err(SettingsError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: format!(
                    "unwind_table_budget: {budget} only applies with `unwinder: tables`; \
                     frame-pointers loads no unwind tables, so remove one of the two"
                ),
            });
        }
        Ok(settings)
    }

    /// `self` with every setting that `over` has replaced by it; header
    /// maps are merged, `over` winning on equal keys.
    pub fn overlay(self, over: AgentSettings) -> AgentSettings {
        let otlp_headers = match (self.otlp_headers, over.otlp_headers) {
            (Some(mut base), Some(over)) => {
                base.extend(over);
                Some(base)
            }
            (base, over) => over.or(base),
        };
        // Frame pointers chosen by `over` leave no tables to budget for.
        let unwind_table_budget = match over.unwinder {
            Some(UnwinderKind::FramePointers) => over.unwind_table_budget,
            _ => over.unwind_table_budget.or(self.unwind_table_budget),
        };
        AgentSettings {
            interval: over.interval.or(self.interval),
            frequency: over.frequency.or(self.frequency),
            pids: over.pids.or(self.pids),
            no_idle: over.no_idle.or(self.no_idle),
            unwinder: over.unwinder.or(self.unwinder),
            unwind_table_budget,
            otlp_endpoint: over.otlp_endpoint.or(self.otlp_endpoint),
            otlp_protocol: over.otlp_protocol.or(self.otlp_protocol),
            otlp_headers,
            otlp_certificate: over.otlp_certificate.or(self.otlp_certificate),
            metrics_addr: over.metrics_addr.or(self.metrics_addr),
            queue_max_requests: over.queue_max_requests.or(self.queue_max_requests),
            queue_max_bytes: over.queue_max_bytes.or(self.queue_max_bytes),
            shutdown_timeout: over.shutdown_timeout.or(self.shutdown_timeout),
            namespaces: over.namespaces.or(self.namespaces),
            exclude_namespaces: over.exclude_namespaces.or(self.exclude_namespaces),
            pod_selector: over.pod_selector.or(self.pod_selector),
            cgroups: over.cgroups.or(self.cgroups),
            node_name: over.node_name.or(self.node_name),
        }
    }

    /// The agent's options: these settings over the environment (read by
    /// `env`) over the defaults.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<AgentOptions, SettingsError> {
        let defaults = QueueLimits::default();
        let queue = QueueLimits {
            max_requests: self.queue_max_requests.unwrap_or(defaults.max_requests),
            max_bytes: self.queue_max_bytes.unwrap_or(defaults.max_bytes),
        };
        if queue.max_requests == 0 {
            return Err(SettingsError::Invalid {
                key: "queue_max_requests",
                message: "must be at least 1".into(),
            });
        }
        let pod_selector = match &self.pod_selector {
            Some(s) => parse_selector(s).map_err(|err| SettingsError::Invalid {
                key: "pod_selector",
                message: err.to_string(),
            })?,
            None => Vec::new(),
        };
        let node_name = self
            .node_name
            .clone()
            .or_else(|| env("NODE_NAME"))
            .filter(|s| !s.is_empty());
        let exporter = ExporterConfig::resolve(
            &ExporterFlags {
                endpoint: self.otlp_endpoint.clone(),
                protocol: self.otlp_protocol,
                headers: self
                    .otlp_headers
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                certificate: self.otlp_certificate.clone(),
            },
            env,
        )?;
        let pids = self.pids.clone().unwrap_or_default();
        let unwinder = Unwinder::from_kind(
            self.unwinder.unwrap_or(UnwinderKind::Tables),
            self.unwind_table_budget,
        )
        .map_err(|err| SettingsError::Invalid {
            key: "unwind_table_budget",
            message: format!(
                "{} is set but the unwinder is frame-pointers, which loads no unwind \
                 tables; set the unwinder to tables or drop the budget",
                err.0
            ),
        })?;
        Ok(AgentOptions {
            profiler: ProfilerOptions {
                policy: SamplingPolicy {
                    frequency: self.frequency.unwrap_or_default(),
                    target: if pids.is_empty() {
                        Target::AllProcesses
                    } else {
                        Target::Pids(pids)
                    },
                    include_idle: !self.no_idle.unwrap_or(false),
                    unwinder,
                },
                filter: ProcessFilter {
                    namespaces: self.namespaces.clone().unwrap_or_default(),
                    exclude_namespaces: self.exclude_namespaces.clone().unwrap_or_default(),
                    pod_selector,
                    cgroups: self.cgroups.clone().unwrap_or_default(),
                },
                node_name,
                ..ProfilerOptions::default()
            },
            interval: self.interval.unwrap_or(DEFAULT_INTERVAL),
            exporter,
            queue,
            shutdown_timeout: self.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            backoff: Backoff::default(),
            metrics_addr: self.metrics_addr,
        })
    }

    /// Every setting as `options` has it, for `--print-config`; header
    /// values are [`REDACTED`].
    pub fn effective(options: &AgentOptions) -> AgentSettings {
        let policy = &options.profiler.policy;
        let filter = &options.profiler.filter;
        let exporter = &options.exporter;
        AgentSettings {
            interval: Some(options.interval),
            frequency: Some(policy.frequency),
            pids: Some(match &policy.target {
                Target::AllProcesses => Vec::new(),
                Target::Pids(pids) => pids.clone(),
            }),
            no_idle: Some(!policy.include_idle),
            unwinder: Some(policy.unwinder.kind()),
            unwind_table_budget: policy.unwinder.table_budget(),
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
                    .map(|(k, _)| (k.clone(), REDACTED.to_owned()))
                    .collect(),
            ),
            otlp_certificate: exporter.certificate.clone(),
            metrics_addr: options.metrics_addr,
            queue_max_requests: Some(options.queue.max_requests),
            queue_max_bytes: Some(options.queue.max_bytes),
            shutdown_timeout: Some(options.shutdown_timeout),
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
            node_name: options.profiler.node_name.clone(),
        }
    }

    /// These settings as YAML, in the config file's format.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("settings always serialize")
    }
}

/// 1-based line and column of the first line of `text` whose key is `key`,
/// or `(0, 0)` when there is none (a flow mapping, say).
fn key_location(text: &str, key: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, line)| {
            let body = line.trim_start();
            let rest = body.strip_prefix(key)?;
            rest.trim_start()
                .starts_with(':')
                .then(|| (i + 1, line.len() - body.len() + 1))
        })
        .unwrap_or((0, 0))
}

/// Durations as humane strings (`10s`, `1m 30s`, `500ms`), never zero.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        crate::agent::config::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a humane duration (`10s`, `2m`, `500ms`) longer than zero; the
/// error says what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(s.trim())
        .map_err(|err| format!("{s:?}: {err}; use a number with a unit, e.g. 10s, 2m, 500ms"))?;
    if duration.is_zero() {
        return Err(format!("{s:?}: the duration must be longer than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentSettings, SettingsError> {
        AgentSettings::from_yaml(text, Path::new("agent.yaml"))
    }

    const FULL: &str = "\
interval: 30s
frequency: 49
pids: [1, 2]
no_idle: true
unwinder: tables
unwind_table_budget: 128MiB
otlp_endpoint: https://collector:4318
otlp_protocol: http/protobuf
otlp_headers:
  authorization: Bearer secret
otlp_certificate: /etc/ca.pem
metrics_addr: 127.0.0.1:9464
queue_max_requests: 7
queue_max_bytes: 1000000
shutdown_timeout: 2s
namespaces: [shop]
exclude_namespaces: [kube-system]
pod_selector: app=checkout
cgroups: [/kubepods.slice]
node_name: node-a
";

    #[test]
    fn every_key_parses() {
        let s = parse(FULL).unwrap();
        assert_eq!(s.interval, Some(Duration::from_secs(30)));
        assert_eq!(s.frequency, Some(Frequency::new(49).unwrap()));
        assert_eq!(s.pids, Some(vec![1, 2]));
        assert_eq!(s.no_idle, Some(true));
        assert_eq!(s.otlp_protocol, Some(Protocol::HttpProtobuf));
        assert_eq!(s.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(s.shutdown_timeout, Some(Duration::from_secs(2)));
        assert_eq!(s.unwinder, Some(UnwinderKind::Tables));
        assert_eq!(
            s.unwind_table_budget,
            Some(TableBudget::new(128 << 20).unwrap())
        );
        let options = s.resolve(|_| None).unwrap();
        assert_eq!(
            options.profiler.policy.unwinder,
            Unwinder::Tables(TableBudget::new(128 << 20).unwrap())
        );
        let filter = &options.profiler.filter;
        assert_eq!(filter.namespaces, vec!["shop".to_owned()]);
        assert_eq!(
            filter.pod_selector,
            vec![("app".to_owned(), "checkout".to_owned())]
        );
        assert_eq!(options.profiler.node_name.as_deref(), Some("node-a"));
        let from_env = AgentSettings::default()
            .resolve(|k| (k == "NODE_NAME").then(|| "node-b".to_owned()))
            .unwrap();
        assert_eq!(from_env.profiler.node_name.as_deref(), Some("node-b"));
        assert!(parse("pod_selector: app\n")
            .unwrap()
            .resolve(|_| None)
            .is_err());
        assert_eq!(parse("").unwrap(), AgentSettings::default());
        assert_eq!(
            parse("# only a comment\n").unwrap(),
            AgentSettings::default()
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_line() {
        let err = parse("interval: 10s\nfrequncy: 99\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("agent.yaml:2:1: unknown field `frequncy`"),
            "{err}"
        );
        let err = parse("frequency: 5000\n").unwrap_err().to_string();
        assert!(err.starts_with("agent.yaml:1:"), "{err}");
        assert!(err.contains("1 to 1000"), "{err}");
        let err = parse("\ninterval: soon\n").unwrap_err().to_string();
        assert!(err.starts_with("agent.yaml:2:"), "{err}");
        assert!(err.contains("e.g. 10s"), "{err}");
        let err = parse("otlp_protocol: pigeon\n").unwrap_err().to_string();
        assert!(err.contains("grpc or http/protobuf"), "{err}");
        let err = parse("metrics_addr: localhost\n").unwrap_err().to_string();
        assert!(err.contains("agent.yaml:1:"), "{err}");
        assert!(parse("shutdown_timeout: 0s\n").is_err());
        assert!(parse("interval: [\n").is_err());
    }

    #[test]
    fn flags_override_file_which_overrides_environment() {
        let file = parse(FULL).unwrap();
        let flags = AgentSettings {
            frequency: Some(Frequency::new(199).unwrap()),
            otlp_headers: Some([("tenant".to_owned(), "a".to_owned())].into()),
            ..AgentSettings::default()
        };
        let merged = file.overlay(flags);
        assert_eq!(merged.frequency, Some(Frequency::new(199).unwrap()));
        assert_eq!(merged.interval, Some(Duration::from_secs(30)));
        assert_eq!(merged.otlp_headers.as_ref().unwrap().len(), 2);
        let env = |k: &str| {
            (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://from-env:4317".to_owned())
        };
        let options = merged.resolve(env).unwrap();
        assert_eq!(options.exporter.endpoint, "https://collector:4318");
        assert_eq!(options.profiler.policy.target, Target::Pids(vec![1, 2]));
        assert!(!options.profiler.policy.include_idle);
        let options = AgentSettings::default().resolve(env).unwrap();
        assert_eq!(options.exporter.endpoint, "http://from-env:4317");
        assert_eq!(options.interval, DEFAULT_INTERVAL);
        assert_eq!(options.metrics_addr, None);
        let zero = AgentSettings {
            queue_max_requests: Some(0),
            ..AgentSettings::default()
        };
        assert!(zero.resolve(|_| None).is_err());
    }

    #[test]
    fn unwinder_keys() {
        let unwinder = |text: &str| {
            parse(text)
                .unwrap()
                .resolve(|_| None)
                .unwrap()
                .profiler
                .policy
                .unwinder
        };
        assert_eq!(unwinder(""), Unwinder::default());
        assert_eq!(
            unwinder("unwinder: frame-pointers\n"),
            Unwinder::FramePointers
        );
        assert_eq!(
            unwinder("unwind_table_budget: 1gib\n"),
            Unwinder::Tables(TableBudget::new(1 << 30).unwrap())
        );
        assert_eq!(
            unwinder("unwinder: tables\nunwind_table_budget: 1048576\n"),
            Unwinder::Tables(TableBudget::new(1 << 20).unwrap())
        );

        let err = parse("frequency: 99\nunwinder: dwarf\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("agent.yaml:2:11: unwinder: "), "{err}");
        assert!(err.contains("\"dwarf\""), "{err}");
        assert!(err.contains("tables or frame-pointers"), "{err}");
        let err = parse("unwind_table_budget: 64 parsecs\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("agent.yaml:1:22: unwind_table_budget: "),
            "{err}"
        );
        assert!(err.contains("\"64 parsecs\": unknown unit"), "{err}");
        assert!(err.contains("B, KiB, MiB or GiB"), "{err}");
        let err = parse("unwind_table_budget: 2GiB\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("from 1MiB to 1GiB"), "{err}");
        let err = parse("unwind_table_budget: 1024\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"1024\": 1024 bytes is out of range"),
            "{err}"
        );

        // Both in one file: an error at the budget's key.
        let err = parse("interval: 10s\nunwind_table_budget: 64MiB\nunwinder: frame-pointers\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "agent.yaml:2:1: unwind_table_budget: 64MiB only applies with `unwinder: tables`"
            ),
            "{err}"
        );
        assert!(parse("{unwinder: frame-pointers, unwind_table_budget: 64MiB}\n").is_err());
    }

    #[test]
    fn unwinder_flags_over_file() {
        let file = parse("unwind_table_budget: 256MiB\n").unwrap();
        let budget = TableBudget::new(256 << 20).unwrap();
        let resolve = |file: &AgentSettings, flags: AgentSettings| {
            file.clone()
                .overlay(flags)
                .resolve(|_| None)
                .map(|options| options.profiler.policy.unwinder)
        };
        // The file's budget is kept by `--unwinder tables`, dropped with
        // `--unwinder frame-pointers`.
        let tables = AgentSettings {
            unwinder: Some(UnwinderKind::Tables),
            ..AgentSettings::default()
        };
        assert_eq!(resolve(&file, tables).unwrap(), Unwinder::Tables(budget));
        let frame_pointers = AgentSettings {
            unwinder: Some(UnwinderKind::FramePointers),
            ..AgentSettings::default()
        };
        assert_eq!(
            resolve(&file, frame_pointers.clone()).unwrap(),
            Unwinder::FramePointers
        );
        // A budget flag over a file that chose frame pointers is an error.
        let file = parse("unwinder: frame-pointers\n").unwrap();
        let flags = AgentSettings {
            unwind_table_budget: Some(budget),
            ..AgentSettings::default()
        };
        let err = resolve(&file, flags).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "unwind_table_budget: 256MiB is set but the unwinder is frame-pointers"
            ),
            "{err}"
        );
        let flags = AgentSettings {
            unwinder: Some(UnwinderKind::Tables),
            unwind_table_budget: Some(budget),
            ..AgentSettings::default()
        };
        assert_eq!(resolve(&file, flags).unwrap(), Unwinder::Tables(budget));
    }

    #[test]
    fn effective_settings_round_trip_and_hide_secrets() {
        let options = parse(FULL).unwrap().resolve(|_| None).unwrap();
        let yaml = AgentSettings::effective(&options).to_yaml();
        assert!(!yaml.contains("secret"), "{yaml}");
        assert!(yaml.contains("authorization: <redacted>"), "{yaml}");
        let again = parse(&yaml).unwrap();
        assert_eq!(again.interval, Some(Duration::from_secs(30)));
        assert_eq!(again.frequency, Some(Frequency::new(49).unwrap()));
        assert_eq!(
            again.otlp_endpoint.as_deref(),
            Some("https://collector:4318/v1development/profiles")
        );
        assert_eq!(again.resolve(|_| None).unwrap().queue, options.queue);
        assert!(
            yaml.contains("unwinder: tables\nunwind_table_budget: 128MiB\n"),
            "{yaml}"
        );
        assert_eq!(
            again.resolve(|_| None).unwrap().profiler.policy.unwinder,
            options.profiler.policy.unwinder
        );
        let options = parse("unwinder: frame-pointers\n")
            .unwrap()
            .resolve(|_| None)
            .unwrap();
        let yaml = AgentSettings::effective(&options).to_yaml();
        assert!(yaml.contains("unwinder: frame-pointers\n"), "{yaml}");
        assert!(!yaml.contains("unwind_table_budget"), "{yaml}");
        assert_eq!(
            parse(&yaml)
                .unwrap()
                .resolve(|_| None)
                .unwrap()
                .profiler
                .policy
                .unwinder,
            Unwinder::FramePointers
        );
    }
}
