//! Command-line interface definition.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
use clap::error::ErrorKind;
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use hostprof::agent::config::{parse_duration, AgentSettings};
use hostprof::filter::{parse_selector, ProcessFilter};
use hostprof::otlp::config::ConfigError;
use hostprof::otlp::{ExporterConfig, ExporterFlags, Protocol};
use hostprof::profiler::ProfilerOptions;
use hostprof::profiler::{Frequency, InvalidFrequency, SamplingPolicy, Target};
use hostprof::unwind::{ParseTableBudgetError, TableBudget, Unwinder, UnwinderKind};

/// hostprof: whole-host CPU profiler built on eBPF.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line like [`Parser::parse`], then checks what
    /// clap cannot; exits with clap's usage error either way.
    pub fn parse_checked() -> Self {
        let cli = Self::parse();
        if let Err(err) = cli.check() {
            err.exit();
        }
        cli
    }

    /// Checks flags that only make sense together, e.g. a table budget
    /// with `--unwinder frame-pointers`.
    pub fn check(&self) -> Result<(), clap::Error> {
        let (name, sampling) = match &self.command {
            Command::Record(args) => ("record", &args.sampling),
            Command::Agent(args) => ("agent", &args.sampling),
            Command::SystemInfo => return Ok(()),
        };
        match sampling.unwinder() {
            Ok(_) => Ok(()),
            Err(message) => {
                let mut cli = Self::command();
                cli.build();
                let sub = cli
                    .find_subcommand_mut(name)
                    .expect("the subcommand exists");
                Err(sub.error(ErrorKind::ArgumentConflict, message))
            }
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Profile the whole host (or some processes) once and write pprof,
    /// a flamegraph and optionally folded stacks.
    Record(RecordArgs),
    /// Profile continuously and export every interval over OTLP to an
    /// OpenTelemetry Collector or any OTLP profiles backend.
    Agent(AgentArgs),
    /// Print what hostprof depends on (kernel, BTF, capabilities, BPF
    /// features, CPUs) and whether each is OK.
    SystemInfo,
}

/// Arguments of `hostprof record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// How long to sample, e.g. `10s`, `1m`, `500ms`. Ctrl-C ends early and
    /// still writes everything.
    #[arg(short, long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// What to sample.
    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// Where to write the gzip-compressed pprof profile.
    #[arg(short, long, default_value = "host.pb.gz")]
    pub output: PathBuf,

    /// Where to write the flamegraph SVG. Default: beside --output, as `<name>.svg`.
    #[arg(long, value_name = "PATH", conflicts_with = "no_flamegraph")]
    pub flamegraph: Option<PathBuf>,

    /// Do not write a flamegraph.
    #[arg(long)]
    pub no_flamegraph: bool,

    /// Also write folded stacks (one `frame;frame;... count` line per stack).
    #[arg(long, value_name = "PATH")]
    pub folded: Option<PathBuf>,

    /// Where and how to export over OTLP.
    #[command(flatten)]
    pub otlp: OtlpArgs,

    /// Write no local files (only with an OTLP endpoint).
    #[arg(long, requires = "otlp_endpoint")]
    pub no_local: bool,
}

/// Arguments of `hostprof agent`. Every setting can also come from the
/// `--config` file (same names, `_` for `-`); flags win over the file,
/// which wins over `OTEL_*` variables, which win over the defaults.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// YAML config file with the same keys as these flags, e.g.
    /// `interval: 30s` or `otlp_endpoint: http://collector:4317`.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (flags over file over environment
    /// over defaults; header values hidden) as YAML and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Length of each exported profile, e.g. `10s`, `1m` [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub interval: Option<Duration>,

    /// What to sample.
    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// Where and how to export over OTLP.
    #[command(flatten)]
    pub otlp: OtlpArgs,

    /// Serve Prometheus metrics (`/metrics`) and health checks (`/healthz`,
    /// `/readyz`) on this address, e.g. `127.0.0.1:9464`. Default: off.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Most export requests held while the collector is slow or down; the
    /// oldest are dropped (and counted) beyond it [default: 60].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(usize))]
    pub queue_max_requests: Option<usize>,

    /// Most bytes of export requests held while the collector is slow or
    /// down [default: 33554432].
    #[arg(long, value_name = "BYTES")]
    pub queue_max_bytes: Option<usize>,

    /// How long SIGTERM/SIGINT may spend exporting what was collected
    /// [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
}

impl AgentArgs {
    /// The settings given as flags; unset flags are `None`.
    pub fn settings(&self) -> AgentSettings {
        AgentSettings {
            interval: self.interval,
            frequency: self.sampling.frequency,
            pids: (!self.sampling.pids.is_empty()).then(|| self.sampling.pids.clone()),
            no_idle: self.sampling.no_idle.then_some(true),
            unwinder: self.sampling.unwinder,
            unwind_table_budget: self.sampling.unwind_table_budget,
            otlp_endpoint: self.otlp.otlp_endpoint.clone(),
            otlp_protocol: self.otlp.otlp_protocol,
            otlp_headers: (!self.otlp.otlp_headers.is_empty())
                .then(|| self.otlp.otlp_headers.iter().cloned().collect()),
            otlp_certificate: self.otlp.otlp_certificate.clone(),
            metrics_addr: self.metrics_addr,
            queue_max_requests: self.queue_max_requests,
            queue_max_bytes: self.queue_max_bytes,
            shutdown_timeout: self.shutdown_timeout,
            namespaces: (!self.sampling.namespaces.is_empty())
                .then(|| self.sampling.namespaces.clone()),
            exclude_namespaces: (!self.sampling.exclude_namespaces.is_empty())
                .then(|| self.sampling.exclude_namespaces.clone()),
            pod_selector: self.sampling.pod_selector.clone(),
            cgroups: (!self.sampling.cgroups.is_empty()).then(|| self.sampling.cgroups.clone()),
            node_name: self.sampling.node_name.clone(),
        }
    }
}

/// Sampling flags shared by `record` and `agent`.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Samples per second on each CPU, 1 to 1000 [default: 99].
    #[arg(short = 'F', long, value_parser = parse_frequency)]
    pub frequency: Option<Frequency>,

    /// Only profile this process id (repeatable). Default: every process.
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Leave the idle task (pid 0) out, so shares are of busy CPU time.
    #[arg(long)]
    pub no_idle: bool,

    /// How to unwind user stacks [default: tables].
    #[arg(long, value_name = "UNWINDER", ignore_case = true, value_parser = unwinder_parser())]
    pub unwinder: Option<UnwinderKind>,

    /// Kernel memory for unwind tables (`--unwinder tables`), 1MiB to 1GiB,
    /// e.g. `64MiB` [default: 64MiB].
    ///
    /// A whole number of bytes, optionally followed by a unit B, KiB, MiB or
    /// GiB in any case; KB, MB and GB mean the same binary units (1 KB = 1024
    /// bytes). For example `64MiB`, `512mb`, `1GiB` or `1048576`.
    #[arg(long, value_name = "SIZE", value_parser = parse_table_budget)]
    pub unwind_table_budget: Option<TableBudget>,

    /// Only profile pods in this Kubernetes namespace (repeatable).
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,

    /// Leave out pods in this Kubernetes namespace (repeatable).
    #[arg(long = "exclude-namespace", value_name = "NS")]
    pub exclude_namespaces: Vec<String>,

    /// Only profile pods carrying these labels, e.g. `app=checkout,tier=web`.
    #[arg(long, value_name = "SELECTOR", value_parser = check_selector)]
    pub pod_selector: Option<String>,

    /// Only profile processes in this cgroup or below it, e.g.
    /// `/kubepods.slice` (repeatable).
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<String>,

    /// This Kubernetes node's name; turns on pod metadata (pod, namespace
    /// and container names) from the API server. Default: $NODE_NAME.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
}

impl SamplingArgs {
    /// The sampling policy these flags ask for; unknown pids are an error.
    pub fn policy(&self) -> anyhow::Result<SamplingPolicy> {
        check_pids_exist(&self.pids)?;
        Ok(SamplingPolicy {
            frequency: self.frequency.unwrap_or_default(),
            target: if self.pids.is_empty() {
                Target::AllProcesses
            } else {
                Target::Pids(self.pids.clone())
            },
            include_idle: !self.no_idle,
            unwinder: self.unwinder().map_err(anyhow::Error::msg)?,
        })
    }

    /// The unwinder these flags ask for; a budget with frame pointers is
    /// an error.
    pub fn unwinder(&self) -> Result<Unwinder, String> {
        let kind = self.unwinder.unwrap_or(UnwinderKind::Tables);
        Unwinder::from_kind(kind, self.unwind_table_budget).map_err(|err| {
            format!(
                "--unwind-table-budget {} cannot be used with --unwinder frame-pointers, \
                 which loads no unwind tables; drop one of the two",
                err.0
            )
        })
    }
}

/// `tables` or `frame-pointers`, with what each means for `--help`.
fn unwinder_parser() -> impl clap::builder::TypedValueParser<Value = UnwinderKind> {
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

fn parse_table_budget(s: &str) -> Result<TableBudget, String> {
    s.parse()
        .map_err(|err: ParseTableBudgetError| err.to_string())
}

impl SamplingArgs {
    /// Profiler options for `record`: policy, filters and the node name
    /// (flag, else `$NODE_NAME`).
    pub fn profiler_options(&self) -> anyhow::Result<ProfilerOptions> {
        Ok(ProfilerOptions {
            policy: self.policy()?,
            filter: ProcessFilter {
                namespaces: self.namespaces.clone(),
                exclude_namespaces: self.exclude_namespaces.clone(),
                pod_selector: match &self.pod_selector {
                    Some(s) => parse_selector(s)?,
                    None => Vec::new(),
                },
                cgroups: self.cgroups.clone(),
            },
            node_name: self
                .node_name
                .clone()
                .or_else(|| std::env::var("NODE_NAME").ok().filter(|s| !s.is_empty())),
            ..ProfilerOptions::default()
        })
    }
}

fn check_selector(s: &str) -> Result<String, String> {
    parse_selector(s)
        .map(|_| s.to_owned())
        .map_err(|err| err.to_string())
}

/// Fails unless every pid names a running process.
pub fn check_pids_exist(pids: &[u32]) -> anyhow::Result<()> {
    for pid in pids {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            anyhow::bail!("--pid {pid}: no such process (check the id with `ps -p {pid}`)");
        }
    }
    Ok(())
}

/// OTLP export flags; each overrides its `OTEL_EXPORTER_OTLP_*` variable.
#[derive(Debug, Args)]
pub struct OtlpArgs {
    /// Also export the profile to this OTLP endpoint, e.g.
    /// `http://localhost:4317` (gRPC) or `http://localhost:4318` (HTTP).
    /// Default: OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT;
    /// with neither set, nothing is exported.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: `grpc` or `http` (HTTP/protobuf). Default: grpc.
    #[arg(long, value_name = "PROTOCOL", value_parser = parse_protocol)]
    pub otlp_protocol: Option<Protocol>,

    /// Extra header for the export, e.g. `authorization=Bearer X` (repeatable).
    #[arg(long = "otlp-header", value_name = "KEY=VALUE", value_parser = parse_header)]
    pub otlp_headers: Vec<(String, String)>,

    /// PEM file of the CA that signed the collector's TLS certificate, for
    /// `https://` endpoints with a private CA. Default:
    /// OTEL_EXPORTER_OTLP_CERTIFICATE; the system's roots are always trusted.
    #[arg(long, value_name = "PATH")]
    pub otlp_certificate: Option<PathBuf>,
}

impl OtlpArgs {
    /// The exporter settings, or `None` when no endpoint is configured.
    pub fn exporter_config(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ExporterConfig>, ConfigError> {
        let configured = self.otlp_endpoint.is_some()
            || env("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        if !configured {
            return Ok(None);
        }
        let flags = ExporterFlags {
            endpoint: self.otlp_endpoint.clone(),
            protocol: self.otlp_protocol,
            headers: self.otlp_headers.clone(),
            certificate: self.otlp_certificate.clone(),
        };
        ExporterConfig::resolve(&flags, env).map(Some)
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.parse().map_err(|err: ConfigError| err.to_string())
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

impl RecordArgs {
    /// The flamegraph path, if one is to be written.
    pub fn flamegraph_path(&self) -> Option<PathBuf> {
        if self.no_flamegraph {
            return None;
        }
        Some(self.flamegraph.clone().unwrap_or_else(|| {
            let name = self
                .output
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = name
                .strip_suffix(".pb.gz")
                .or_else(|| name.strip_suffix(".gz"))
                .or_else(|| name.strip_suffix(".pb"))
                .unwrap_or(&name);
            self.output.with_file_name(format!("{stem}.svg"))
        }))
    }
}

fn parse_frequency(s: &str) -> Result<Frequency, String> {
    s.parse().map_err(|err: InvalidFrequency| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(args: &[&str]) -> Result<RecordArgs, clap::Error> {
        let mut argv = vec!["hostprof", "record"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Record(args) => Ok(args),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn agent_flags() {
        let cli = Cli::try_parse_from([
            "hostprof",
            "agent",
            "--interval",
            "30s",
            "--otlp-endpoint",
            "http://c:4317",
            "--queue-max-requests",
            "5",
            "--shutdown-timeout",
            "2s",
        ])
        .unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not agent");
        };
        let settings = args.settings();
        assert_eq!(settings.interval, Some(Duration::from_secs(30)));
        assert_eq!(settings.queue_max_requests, Some(5));
        assert_eq!(settings.shutdown_timeout, Some(Duration::from_secs(2)));
        assert_eq!(settings.frequency, None, "unset flags defer to the file");
        assert_eq!(settings.metrics_addr, None);
    }

    #[test]
    fn defaults() {
        let args = record(&[]).unwrap();
        assert_eq!(args.duration, Duration::from_secs(10));
        assert_eq!(args.sampling.policy().unwrap().frequency.hz(), 99);
        assert!(args.sampling.pids.is_empty());
        assert_eq!(args.output, PathBuf::from("host.pb.gz"));
        assert_eq!(args.flamegraph_path(), Some(PathBuf::from("host.svg")));
        assert_eq!(args.folded, None);
    }

    #[test]
    fn flags() {
        let args = record(&[
            "--duration",
            "2m",
            "-F",
            "250",
            "--pid",
            "1",
            "--pid",
            "42",
            "--no-idle",
            "-o",
            "/tmp/x.pb.gz",
            "--folded",
            "x.folded",
        ])
        .unwrap();
        assert_eq!(args.duration, Duration::from_secs(120));
        assert_eq!(args.sampling.frequency.map(Frequency::hz), Some(250));
        assert_eq!(args.sampling.pids, vec![1, 42]);
        assert!(args.sampling.no_idle);
        assert_eq!(args.flamegraph_path(), Some(PathBuf::from("/tmp/x.svg")));
        assert_eq!(args.folded, Some(PathBuf::from("x.folded")));
        assert_eq!(
            record(&["--no-flamegraph"]).unwrap().flamegraph_path(),
            None
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err = record(&["--frequency", "5000"]).unwrap_err().to_string();
        assert!(err.contains("1 to 1000"), "{err}");
        let err = record(&["--frequency", "0"]).unwrap_err().to_string();
        assert!(err.contains("1 to 1000"), "{err}");
        let err = record(&["--duration", "ten"]).unwrap_err().to_string();
        assert!(err.contains("10s"), "{err}");
        assert!(record(&["--duration", "0s"]).is_err());
        assert!(record(&["--pid", "abc"]).is_err());
        assert!(record(&["--flamegraph", "a.svg", "--no-flamegraph"]).is_err());
        assert!(
            record(&["--no-local"]).is_err(),
            "--no-local needs an endpoint"
        );
        let err = record(&["--otlp-protocol", "smoke"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("grpc or http/protobuf"), "{err}");
        assert!(record(&["--otlp-header", "novalue"]).is_err());
    }

    fn checked(argv: &[&str]) -> Result<Cli, clap::Error> {
        let cli = Cli::try_parse_from(argv)?;
        cli.check()?;
        Ok(cli)
    }

    #[test]
    fn unwinder_flags() {
        let policy = |args: &[&str]| record(args).unwrap().sampling.policy().unwrap();
        assert_eq!(policy(&[]).unwinder, Unwinder::default());
        assert_eq!(
            policy(&["--unwinder", "frame-pointers"]).unwinder,
            Unwinder::FramePointers
        );
        assert_eq!(
            policy(&["--unwinder", "tables", "--unwind-table-budget", "256mib"]).unwinder,
            Unwinder::Tables(TableBudget::new(256 << 20).unwrap())
        );
        assert_eq!(
            policy(&["--unwind-table-budget", "1048576"]).unwinder,
            Unwinder::Tables(TableBudget::new(1 << 20).unwrap())
        );
        for command in ["record", "agent"] {
            let err = checked(&[
                "hostprof",
                command,
                "--unwinder",
                "frame-pointers",
                "--unwind-table-budget",
                "128MiB",
            ])
            .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
            let err = err.to_string();
            assert!(
                err.contains(
                    "--unwind-table-budget 128MiB cannot be used with --unwinder frame-pointers"
                ),
                "{err}"
            );
            assert!(checked(&["hostprof", command, "--unwinder", "frame-pointers"]).is_ok());
        }
        let err = record(&["--unwinder", "dwarf"]).unwrap_err().to_string();
        assert!(err.contains("tables, frame-pointers"), "{err}");
        let err = record(&["--unwind-table-budget", "64 parsecs"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"64 parsecs\": unknown unit"), "{err}");
        let err = record(&["--unwind-table-budget", "2GiB"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("from 1MiB to 1GiB"), "{err}");

        let Command::Agent(args) = checked(&[
            "hostprof",
            "agent",
            "--unwinder",
            "tables",
            "--unwind-table-budget",
            "1GB",
        ])
        .unwrap()
        .command
        else {
            panic!("not agent");
        };
        let settings = args.settings();
        assert_eq!(settings.unwinder, Some(UnwinderKind::Tables));
        assert_eq!(
            settings.unwind_table_budget,
            Some(TableBudget::new(1 << 30).unwrap())
        );
        let Command::Agent(args) = checked(&["hostprof", "agent"]).unwrap().command else {
            panic!("not agent");
        };
        let settings = args.settings();
        assert_eq!(settings.unwinder, None, "unset flags defer to the file");
        assert_eq!(settings.unwind_table_budget, None);
    }

    #[test]
    fn otlp_flags_and_environment() {
        let args = record(&[
            "--otlp-endpoint",
            "http://collector:4318",
            "--otlp-protocol",
            "http",
            "--otlp-header",
            "authorization=Bearer x",
            "--no-local",
        ])
        .unwrap();
        assert!(args.no_local);
        let config = args.otlp.exporter_config(|_| None).unwrap().unwrap();
        assert_eq!(
            config.http_url(),
            "http://collector:4318/v1development/profiles"
        );
        assert_eq!(
            config.headers,
            vec![("authorization".into(), "Bearer x".into())]
        );
        let none = record(&[]).unwrap();
        assert!(none.otlp.exporter_config(|_| None).unwrap().is_none());
        let from_env = none
            .otlp
            .exporter_config(|k| {
                (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://env:4317".into())
            })
            .unwrap()
            .unwrap();
        assert_eq!(from_env.endpoint, "http://env:4317");
    }
}
