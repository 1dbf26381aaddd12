//! Command-line interface definition: the subcommands over the library's
//! settings model ([`hostprof::settings`]), which declares every flag.

use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser, Subcommand};
use hostprof::profiler::Target;
use hostprof::settings::{AgentOnly, CommandLine, RecordOnly, SettingsError};

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

    /// Checks the rules between the flags (e.g. a table budget with
    /// `--unwinder frame-pointers`), as the config file's are checked; a
    /// broken rule is a usage error naming the flag.
    pub fn check(&self) -> Result<(), clap::Error> {
        let (name, checked) = match &self.command {
            Command::Record(line) => ("record", line.flags.check()),
            Command::Agent(line) => ("agent", line.flags.check()),
            Command::SystemInfo => return Ok(()),
        };
        let Err(err) = checked else {
            return Ok(());
        };
        let mut cli = Self::command();
        cli.build();
        let sub = cli
            .find_subcommand_mut(name)
            .expect("the subcommand exists");
        let message = match &err {
            SettingsError::Invalid { key, message } => {
                let flag = sub
                    .get_arguments()
                    .find(|arg| arg.get_id() == key)
                    .and_then(|arg| arg.get_long())
                    .unwrap_or(key);
                format!("--{flag}: {message}")
            }
            other => other.to_string(),
        };
        Err(sub.error(ErrorKind::ArgumentConflict, message))
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Profile the whole host (or some processes) once and write pprof,
    /// a flamegraph and optionally folded stacks.
    Record(CommandLine<RecordOnly>),
    /// Profile continuously and export every interval over OTLP to an
    /// OpenTelemetry Collector or any OTLP profiles backend.
    Agent(CommandLine<AgentOnly>),
    /// Print what hostprof depends on (kernel, BTF, capabilities, BPF
    /// features, CPUs) and whether each is OK.
    SystemInfo,
}

/// Fails unless every pid `target` names is a running process.
pub fn check_pids_exist(target: &Target) -> anyhow::Result<()> {
    let Target::Pids(pids) = target else {
        return Ok(());
    };
    for pid in pids {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            anyhow::bail!("--pid {pid}: no such process (check the id with `ps -p {pid}`)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use hostprof::profiler::Frequency;
    use hostprof::settings::{RecordOptions, Settings};
    use hostprof::unwind::{TableBudget, Unwinder, UnwinderKind};

    use super::*;

    fn checked(argv: &[&str]) -> Result<Cli, clap::Error> {
        let cli = Cli::try_parse_from(argv)?;
        cli.check()?;
        Ok(cli)
    }

    /// `hostprof record ARGS`, parsed and checked as `main` does.
    fn record(args: &[&str]) -> Result<CommandLine<RecordOnly>, clap::Error> {
        let mut argv = vec!["hostprof", "record"];
        argv.extend_from_slice(args);
        match checked(&argv)?.command {
            Command::Record(line) => Ok(line),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// `hostprof agent ARGS`, parsed and checked as `main` does.
    fn agent(args: &[&str]) -> Result<CommandLine<AgentOnly>, clap::Error> {
        let mut argv = vec!["hostprof", "agent"];
        argv.extend_from_slice(args);
        match checked(&argv)?.command {
            Command::Agent(line) => Ok(line),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// What `hostprof record ARGS` would run with an empty environment.
    fn resolved(args: &[&str]) -> Result<RecordOptions, String> {
        let line = record(args).map_err(|err| err.to_string())?;
        let settings = line.settings().map_err(|err| err.to_string())?;
        settings.resolve(|_| None).map_err(|err| err.to_string())
    }

    #[test]
    fn agent_flags() {
        let args = agent(&[
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
        let settings = args.flags;
        assert_eq!(settings.command.interval, Some(Duration::from_secs(30)));
        assert_eq!(settings.command.queue_max_requests, Some(5));
        assert_eq!(
            settings.command.shutdown_timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            settings.profiling.frequency, None,
            "unset flags defer to the file"
        );
        assert_eq!(settings.command.metrics_addr, None);
        assert_eq!(settings.profiling.no_idle, None);
    }

    #[test]
    fn defaults() {
        let args = record(&[]).unwrap();
        assert_eq!(args.flags, Settings::default(), "no flag, no setting");
        let options = resolved(&[]).unwrap();
        assert_eq!(options.duration, Duration::from_secs(10));
        assert_eq!(options.profiler.policy.frequency.hz(), 99);
        assert_eq!(options.profiler.policy.target, Target::AllProcesses);
        let local = options.local.unwrap();
        assert_eq!(local.pprof, PathBuf::from("host.pb.gz"));
        assert_eq!(local.flamegraph, Some(PathBuf::from("host.svg")));
        assert_eq!(local.folded, None);
        assert_eq!(options.exporter, None);
    }

    #[test]
    fn flags() {
        let argv = [
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
        ];
        let args = record(&argv).unwrap();
        assert_eq!(args.flags.command.duration, Some(Duration::from_secs(120)));
        assert_eq!(args.flags.profiling.frequency.map(Frequency::hz), Some(250));
        assert_eq!(args.flags.profiling.pids, Some(vec![1, 42]));
        assert_eq!(args.flags.profiling.no_idle, Some(true));
        let options = resolved(&argv).unwrap();
        assert_eq!(options.duration, Duration::from_secs(120));
        assert!(!options.profiler.policy.include_idle);
        assert_eq!(options.profiler.policy.target, Target::Pids(vec![1, 42]));
        let local = options.local.unwrap();
        assert_eq!(local.flamegraph, Some(PathBuf::from("/tmp/x.svg")));
        assert_eq!(local.folded, Some(PathBuf::from("x.folded")));
        assert_eq!(
            resolved(&["--no-flamegraph"])
                .unwrap()
                .local
                .unwrap()
                .flamegraph,
            None
        );
        assert_eq!(
            resolved(&["--profiles", "cpu,cpu", "--profiles", "CPU"])
                .unwrap()
                .profiler
                .profiles,
            vec![hostprof::kind::ProfileKind::Cpu]
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
        let err = record(&["--flamegraph", "a.svg", "--no-flamegraph"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        assert!(
            err.to_string()
                .contains("--no-flamegraph: a flamegraph is also asked for at a.svg"),
            "{err}"
        );
        let err = resolved(&["--no-local"]).unwrap_err();
        assert!(
            err.contains("no_local: writes no local files, so it needs an OTLP endpoint"),
            "--no-local needs an endpoint: {err}"
        );
        let err = record(&["--otlp-protocol", "smoke"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("grpc or http/protobuf"), "{err}");
        assert!(record(&["--otlp-header", "novalue"]).is_err());
        let err = record(&["--profiles", "cpu,heap"]).unwrap_err().to_string();
        assert!(
            err.contains(
                "\"heap\" is not a profile kind; the kinds are: cpu, off-cpu, locks, page-faults"
            ),
            "{err}"
        );
        let err = record(&["--off-cpu-max-rate", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid off-CPU rate"), "{err}");
        assert!(record(&["--profiles", ""]).is_err());
        assert!(record(&["--profiles"]).is_err());
    }

    #[test]
    fn out_of_range_export_settings_are_usage_errors() {
        let err = agent(&["--queue-max-bytes", "0"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        assert!(
            err.to_string()
                .contains("--queue-max-bytes: 0 is too small: give at least 65536"),
            "{err}"
        );
        let err = agent(&["--queue-max-requests", "0"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("--queue-max-requests: must be at least 1"),
            "{err}"
        );
        let err = agent(&["--otlp-endpoint", "http://127.0.0.1:99999"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "--otlp-endpoint: \"http://127.0.0.1:99999\" is not an OTLP endpoint: \
                 expected a port from 1 to 65535"
            ),
            "{err}"
        );
        assert!(record(&["--otlp-endpoint", "collector:4317"]).is_err());
        assert!(agent(&["--otlp-endpoint", "https://collector:4317"]).is_ok());
    }

    #[test]
    fn unwinder_flags() {
        let unwinder = |args: &[&str]| resolved(args).unwrap().profiler.policy.unwinder;
        assert_eq!(unwinder(&[]), Unwinder::default());
        assert_eq!(
            unwinder(&["--unwinder", "frame-pointers"]),
            Unwinder::FramePointers
        );
        assert_eq!(
            unwinder(&["--unwinder", "tables", "--unwind-table-budget", "256mib"]),
            Unwinder::Tables(TableBudget::new(256 << 20).unwrap())
        );
        assert_eq!(
            unwinder(&["--unwind-table-budget", "1048576"]),
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
                    "--unwind-table-budget: an unwind table budget (128MiB) only applies to \
                     the tables unwinder; frame-pointers loads no unwind tables"
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

        let settings = agent(&["--unwinder", "tables", "--unwind-table-budget", "1GB"])
            .unwrap()
            .flags;
        assert_eq!(settings.profiling.unwinder, Some(UnwinderKind::Tables));
        assert_eq!(
            settings.profiling.unwind_table_budget,
            Some(TableBudget::new(1 << 30).unwrap())
        );
        let settings = agent(&[]).unwrap().flags;
        assert_eq!(
            settings.profiling.unwinder, None,
            "unset flags defer to the file"
        );
        assert_eq!(settings.profiling.unwind_table_budget, None);
    }

    #[test]
    fn otlp_flags_and_environment() {
        let options = resolved(&[
            "--otlp-endpoint",
            "http://collector:4318",
            "--otlp-protocol",
            "http",
            "--otlp-header",
            "authorization=Bearer x",
            "--no-local",
        ])
        .unwrap();
        assert_eq!(options.local, None);
        let config = options.exporter.unwrap();
        assert_eq!(
            config.http_url(),
            "http://collector:4318/v1development/profiles"
        );
        assert_eq!(
            config.headers,
            vec![("authorization".into(), "Bearer x".into())]
        );
        let none = record(&[]).unwrap().flags;
        assert!(none
            .export
            .exporter_if_configured(|_| None)
            .unwrap()
            .is_none());
        let from_env = none
            .export
            .exporter_if_configured(|k| {
                (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://env:4317".into())
            })
            .unwrap()
            .unwrap();
        assert_eq!(from_env.endpoint, "http://env:4317");
    }

    #[test]
    fn config_file_under_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.yaml");
        std::fs::write(&path, "frequency: 49\nduration: 1m\nno_flamegraph: true\n").unwrap();
        let config = path.to_str().unwrap();
        let options =
            resolved(&["--config", config, "-F", "250", "--flamegraph", "f.svg"]).unwrap();
        assert_eq!(options.profiler.policy.frequency.hz(), 250);
        assert_eq!(options.duration, Duration::from_secs(60));
        assert_eq!(
            options.local.unwrap().flamegraph,
            Some(PathBuf::from("f.svg"))
        );
        assert!(
            record(&["--config", config, "--print-config"])
                .unwrap()
                .print_config
        );
        std::fs::write(&path, "frequency: 49\ninterval: 1m\n").unwrap();
        let err = resolved(&["-c", config]).unwrap_err();
        assert!(
            err.ends_with(
                "record.yaml:2:1: unknown field `interval`: it is a setting of \
                 `hostprof agent`, not of `hostprof record`"
            ),
            "{err}"
        );
    }

    #[test]
    fn help_states_the_defaults() {
        let mut cli = Cli::command();
        cli.build();
        for name in ["record", "agent"] {
            let help = cli
                .find_subcommand_mut(name)
                .unwrap()
                .render_long_help()
                .to_string();
            assert!(help.contains("[default: 99]"), "{help}");
            assert!(help.contains("[default: cpu]"), "{help}");
            assert!(help.contains("--profiles <KIND[,KIND...]>"), "{help}");
            assert!(help.contains("-c, --config <FILE>"), "{help}");
        }
    }
}
