use std::path::Path;
use std::time::Duration;

use super::*;
use crate::kind::ProfileKind;
use crate::otlp::Protocol;
use crate::profiler::{Frequency, OffCpuRate, Target};
use crate::unwind::{TableBudget, Unwinder};

fn parse(text: &str) -> Result<AgentSettings, SettingsError> {
    AgentSettings::from_yaml(text, Path::new("agent.yaml"))
}

fn parse_record(text: &str) -> Result<RecordSettings, SettingsError> {
    RecordSettings::from_yaml(text, Path::new("record.yaml"))
}

const FULL: &str = "\
interval: 30s
profiles: [cpu]
frequency: 49
max_cpu: 0.25
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
    assert_eq!(s.command.interval, Some(Duration::from_secs(30)));
    assert_eq!(s.profiling.profiles, Some(vec![ProfileKind::Cpu]));
    assert_eq!(s.profiling.frequency, Some(Frequency::new(49).unwrap()));
    assert_eq!(s.profiling.max_cpu.map(|m| m.share()), Some(0.0025));
    assert_eq!(s.profiling.pids, Some(vec![1, 2]));
    assert_eq!(s.profiling.no_idle, Some(true));
    assert_eq!(s.export.otlp_protocol, Some(Protocol::HttpProtobuf));
    assert_eq!(
        s.command.metrics_addr,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(s.command.shutdown_timeout, Some(Duration::from_secs(2)));
    assert_eq!(s.profiling.unwinder, Some(UnwinderKind::Tables));
    assert_eq!(
        s.profiling.unwind_table_budget,
        Some(TableBudget::new(128 << 20).unwrap())
    );
    let options = s.resolve(|_| None).unwrap();
    assert_eq!(
        options.profiler.policy.unwinder,
        Unwinder::Tables(TableBudget::new(128 << 20).unwrap())
    );
    assert_eq!(options.profiler.profiles, vec![ProfileKind::Cpu]);
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
    assert!(err.contains("expected one of `interval`"), "{err}");
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

    // A key given twice, and a key of the other command.
    let err = parse("frequency: 49\nno_idle: true\nfrequency: 99\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("agent.yaml:3:1: duplicate field `frequency`"),
        "{err}"
    );
    let err = parse("duration: 10s\n").unwrap_err().to_string();
    assert!(
        err.starts_with(
            "agent.yaml:1:1: unknown field `duration`: it is a setting of `hostprof record`"
        ),
        "{err}"
    );
    let err = parse_record("frequency: 49\ninterval: 10s\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "record.yaml:2:1: unknown field `interval`: it is a setting of `hostprof agent`"
        ),
        "{err}"
    );
    let err = parse("- interval\n").unwrap_err().to_string();
    assert!(err.starts_with("agent.yaml:1:1: invalid type"), "{err}");
}

#[test]
fn flags_override_file_which_overrides_environment() {
    let file = parse(FULL).unwrap();
    let mut flags = AgentSettings::default();
    flags.profiling.frequency = Some(Frequency::new(199).unwrap());
    flags.export.otlp_headers = Some(vec![("tenant".to_owned(), "a".to_owned())]);
    let merged = file.overlay(flags);
    assert_eq!(
        merged.profiling.frequency,
        Some(Frequency::new(199).unwrap())
    );
    assert_eq!(merged.command.interval, Some(Duration::from_secs(30)));
    assert_eq!(merged.export.otlp_headers.as_ref().unwrap().len(), 2);
    let env =
        |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://from-env:4317".to_owned());
    let options = merged.resolve(env).unwrap();
    assert_eq!(options.exporter.endpoint, "https://collector:4318");
    assert_eq!(options.profiler.policy.target, Target::Pids(vec![1, 2]));
    assert!(!options.profiler.policy.include_idle);
    let options = AgentSettings::default().resolve(env).unwrap();
    assert_eq!(options.exporter.endpoint, "http://from-env:4317");
    assert_eq!(options.interval, DEFAULT_INTERVAL);
    assert_eq!(options.metrics_addr, None);
    let mut zero = AgentSettings::default();
    zero.command.queue_max_requests = Some(0);
    assert!(zero.resolve(|_| None).is_err());

    // Headers add up, the higher source winning on equal names.
    let mut flags = AgentSettings::default();
    flags.export.otlp_headers = Some(vec![
        ("authorization".to_owned(), "Bearer flag".to_owned()),
        ("tenant".to_owned(), "b".to_owned()),
    ]);
    let exporter = parse(FULL)
        .unwrap()
        .overlay(flags)
        .resolve(|_| None)
        .unwrap()
        .exporter;
    assert_eq!(
        exporter.headers,
        vec![
            ("authorization".to_owned(), "Bearer flag".to_owned()),
            ("tenant".to_owned(), "b".to_owned()),
        ]
    );
}

/// The sampling policy the agent's config `text` resolves to.
fn policy(text: &str) -> crate::profiler::SamplingPolicy {
    parse(text)
        .unwrap()
        .resolve(|_| None)
        .unwrap()
        .profiler
        .policy
}

#[test]
fn unwinder_keys() {
    let unwinder = |text: &str| policy(text).unwinder;
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
            "agent.yaml:2:1: unwind_table_budget: an unwind table budget (64MiB) only \
             applies to the tables unwinder"
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
    let flags = |unwinder: Option<UnwinderKind>, budget: Option<TableBudget>| {
        let mut flags = AgentSettings::default();
        flags.profiling.unwinder = unwinder;
        flags.profiling.unwind_table_budget = budget;
        flags
    };
    // The file's budget is kept by `--unwinder tables`, dropped with
    // `--unwinder frame-pointers`.
    assert_eq!(
        resolve(&file, flags(Some(UnwinderKind::Tables), None)).unwrap(),
        Unwinder::Tables(budget)
    );
    assert_eq!(
        resolve(&file, flags(Some(UnwinderKind::FramePointers), None)).unwrap(),
        Unwinder::FramePointers
    );
    // A budget flag over a file that chose frame pointers is an error.
    let file = parse("unwinder: frame-pointers\n").unwrap();
    let err = resolve(&file, flags(None, Some(budget)))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "unwind_table_budget: an unwind table budget (256MiB) only applies to the \
             tables unwinder"
        ),
        "{err}"
    );
    assert_eq!(
        resolve(&file, flags(Some(UnwinderKind::Tables), Some(budget))).unwrap(),
        Unwinder::Tables(budget)
    );
}

#[test]
fn effective_settings_round_trip_and_hide_secrets() {
    let options = parse(FULL).unwrap().resolve(|_| None).unwrap();
    let yaml = AgentSettings::effective(&options).to_yaml();
    assert!(!yaml.contains("secret"), "{yaml}");
    assert!(yaml.contains("authorization: <redacted>"), "{yaml}");
    assert!(yaml.contains("profiles:\n- cpu\n"), "{yaml}");
    let again = parse(&yaml).unwrap();
    assert_eq!(again.command.interval, Some(Duration::from_secs(30)));
    assert_eq!(again.profiling.frequency, Some(Frequency::new(49).unwrap()));
    assert_eq!(
        again.export.otlp_endpoint.as_deref(),
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

#[test]
fn profiles() {
    let kinds = |text: &str| {
        parse(text)
            .unwrap()
            .resolve(|_| None)
            .unwrap()
            .profiler
            .profiles
    };
    assert_eq!(kinds(""), vec![ProfileKind::Cpu]);
    assert_eq!(kinds("profiles: [cpu, CPU, cpu]\n"), vec![ProfileKind::Cpu]);
    assert_eq!(
        kinds("profiles: [off-cpu, cpu, off-cpu]\n"),
        vec![ProfileKind::OffCpu, ProfileKind::Cpu]
    );
    let err = parse("frequency: 99\nprofiles: [cpu, heap]\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "agent.yaml:2:11: profiles: \"heap\" is not a profile kind; \
             the kinds are: cpu, off-cpu, locks, page-faults"
        ),
        "{err}"
    );
    let err = parse("frequency: 99\nprofiles: []\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "agent.yaml:2:1: profiles: give at least one profile kind; the kinds are: cpu, off-cpu, locks, page-faults, memory"
    );
    let mut flags = AgentSettings::default();
    flags.profiling.profiles = Some(Vec::new());
    let err = flags.resolve(|_| None).unwrap_err().to_string();
    assert_eq!(
        err,
        "profiles: give at least one profile kind; the kinds are: cpu, off-cpu, locks, page-faults, memory"
    );
}

#[test]
fn the_memory_profile_needs_a_selection_of_processes() {
    let err = parse("profiles: [memory]\n")
        .unwrap()
        .resolve(|_| None)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("profiles: the memory profile traps every allocation")
            && err.contains("--pid, --cgroup, --namespace or --pod-selector"),
        "{err}"
    );
    // Leaving a namespace out selects nothing either.
    assert!(
        parse("profiles: [memory]\nexclude_namespaces: [kube-system]\n")
            .unwrap()
            .resolve(|_| None)
            .is_err()
    );
    for selection in [
        "pids: [42]\n",
        "cgroups: [/system.slice]\n",
        "namespaces: [shop]\n",
        "pod_selector: app=checkout\n",
    ] {
        let options = parse(&format!("profiles: [memory, cpu]\n{selection}"))
            .unwrap()
            .resolve(|_| None)
            .unwrap_or_else(|err| panic!("{selection}: {err}"));
        assert_eq!(
            options.profiler.profiles,
            vec![ProfileKind::Memory, ProfileKind::Cpu]
        );
    }
    let bytes = parse("memory_sample_bytes: 65536\npids: [1]\n")
        .unwrap()
        .resolve(|_| None)
        .unwrap()
        .profiler
        .policy
        .memory_sample_bytes;
    assert_eq!(bytes.bytes(), 65536);
    let err = parse("memory_sample_bytes: 0\n").unwrap_err().to_string();
    assert!(err.contains("invalid memory sampling mean"), "{err}");
}

#[test]
fn each_kind_writes_beside_the_cpu_files() {
    let local = LocalOutputs {
        pprof: "/out/host.pb.gz".into(),
        flamegraph: Some("/out/fg.svg".into()),
        folded: Some("stacks".into()),
    };
    assert_eq!(local.for_kind(ProfileKind::Cpu), local);
    let off = local.for_kind(ProfileKind::OffCpu);
    assert_eq!(off.pprof, Path::new("/out/host.off-cpu.pb.gz"));
    assert_eq!(off.flamegraph.unwrap(), Path::new("/out/fg.off-cpu.svg"));
    assert_eq!(off.folded.unwrap(), Path::new("stacks.off-cpu"));
    let bare = LocalOutputs {
        pprof: ".hidden".into(),
        flamegraph: None,
        folded: None,
    };
    assert_eq!(
        bare.for_kind(ProfileKind::OffCpu).pprof,
        Path::new(".hidden.off-cpu")
    );
}

#[test]
fn off_cpu_max_rate() {
    let rate = |text: &str| policy(text).off_cpu_max_rate;
    assert_eq!(rate(""), OffCpuRate::DEFAULT);
    assert_eq!(rate("off_cpu_max_rate: 250\n").per_second(), 250);
    let err = parse("off_cpu_max_rate: 0\n").unwrap_err().to_string();
    assert!(err.contains("invalid off-CPU rate"), "{err}");
}

#[test]
fn record_settings() {
    let options = RecordSettings::default().resolve(|_| None).unwrap();
    assert_eq!(options.duration, DEFAULT_DURATION);
    assert_eq!(options.exporter, None);
    assert_eq!(options.profiler.policy.frequency.hz(), 99);
    assert_eq!(
        options.local,
        Some(LocalOutputs {
            pprof: DEFAULT_OUTPUT.into(),
            flamegraph: Some("host.svg".into()),
            folded: None,
        })
    );

    let file = parse_record(
        "duration: 2m\noutput: /tmp/x.pb.gz\nfolded: x.folded\nfrequency: 250\n\
         otlp_endpoint: http://collector:4318\notlp_protocol: http/protobuf\n",
    )
    .unwrap();
    let options = file.resolve(|_| None).unwrap();
    assert_eq!(options.duration, Duration::from_secs(120));
    assert_eq!(options.profiler.policy.frequency.hz(), 250);
    let local = options.local.as_ref().unwrap();
    assert_eq!(local.flamegraph, Some("/tmp/x.svg".into()));
    assert_eq!(local.folded, Some("x.folded".into()));
    assert_eq!(
        options.exporter.as_ref().unwrap().http_url(),
        "http://collector:4318/v1development/profiles"
    );
    let yaml = RecordSettings::effective(&options).to_yaml();
    assert!(
        yaml.starts_with("duration: 2m\noutput: /tmp/x.pb.gz\n"),
        "{yaml}"
    );
    let again = parse_record(&yaml).unwrap().resolve(|_| None).unwrap();
    assert_eq!(
        again.exporter.as_ref().unwrap().http_url(),
        options.exporter.as_ref().unwrap().http_url()
    );
    assert_eq!(
        (again.profiler, again.duration),
        (options.profiler.clone(), options.duration)
    );
    assert_eq!(again.local, options.local);

    // `no_local` needs an endpoint, from any source.
    let mut no_local = RecordSettings::default();
    no_local.command.no_local = Some(true);
    let err = no_local.resolve(|_| None).unwrap_err().to_string();
    assert!(
        err.starts_with("no_local: writes no local files, so it needs an OTLP endpoint"),
        "{err}"
    );
    let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://env:4317".into());
    let options = no_local.resolve(env).unwrap();
    assert_eq!(options.local, None);
    assert_eq!(options.exporter.unwrap().endpoint, "http://env:4317");
    let options = file.overlay(no_local).resolve(|_| None).unwrap();
    assert_eq!(options.local, None);
}

#[test]
fn flamegraph_and_no_flamegraph() {
    let flamegraph = |file: &str, flags: RecordOnly| {
        let over = RecordSettings {
            command: flags,
            ..RecordSettings::default()
        };
        parse_record(file)
            .unwrap()
            .overlay(over)
            .resolve(|_| None)
            .map(|o| o.local.unwrap().flamegraph)
    };
    let no = RecordOnly {
        no_flamegraph: Some(true),
        ..RecordOnly::default()
    };
    let at = RecordOnly {
        flamegraph: Some("b.svg".into()),
        ..RecordOnly::default()
    };
    assert_eq!(flamegraph("flamegraph: a.svg\n", no.clone()).unwrap(), None);
    assert_eq!(
        flamegraph("no_flamegraph: true\n", at.clone()).unwrap(),
        Some("b.svg".into())
    );
    assert_eq!(flamegraph("", no.clone()).unwrap(), None);
    let both = RecordOnly {
        no_flamegraph: Some(true),
        ..at
    };
    let err = flamegraph("", both).unwrap_err().to_string();
    assert!(
        err.starts_with("no_flamegraph: a flamegraph is also asked for at b.svg"),
        "{err}"
    );
    let err = parse_record("flamegraph: a.svg\nno_flamegraph: true\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("record.yaml:2:1: no_flamegraph: a flamegraph is also asked for"),
        "{err}"
    );
}

#[test]
fn keys_are_the_long_flags() {
    use clap::{Args, CommandFactory as _};

    #[derive(clap::Parser)]
    struct Agent {
        #[command(flatten)]
        settings: AgentSettings,
    }
    #[derive(clap::Parser)]
    struct Record {
        #[command(flatten)]
        settings: RecordSettings,
    }
    fn longs(command: clap::Command) -> Vec<String> {
        command
            .get_arguments()
            .filter_map(|arg| arg.get_long())
            .filter(|long| *long != "help")
            .map(|long| long.replace('-', "_"))
            .collect()
    }
    // Repeatable flags are singular, their keys plural.
    let plural = |key: &str| match key {
        "pid" | "namespace" | "exclude_namespace" | "cgroup" | "otlp_header" => format!("{key}s"),
        _ => key.to_owned(),
    };
    let agent: Vec<String> = longs(Agent::command()).iter().map(|k| plural(k)).collect();
    assert_eq!(agent, AgentSettings::keys().collect::<Vec<_>>());
    let record: Vec<String> = longs(Record::command()).iter().map(|k| plural(k)).collect();
    assert_eq!(record, RecordSettings::keys().collect::<Vec<_>>());
    // Each group's flags are its keys, in order.
    let group = Profiling::augment_args(clap::Command::new("g"));
    assert_eq!(
        longs(group).iter().map(|k| plural(k)).collect::<Vec<_>>(),
        Profiling::KEYS
    );
}

#[test]
fn config_files_are_regular_files_of_at_most_1_mib() {
    // /dev/zero never ends: refused before a byte is read.
    let err = AgentSettings::load(Path::new("/dev/zero")).unwrap_err();
    assert_eq!(
        format!("{:#}", anyhow::Error::from(err)),
        "cannot read the config file /dev/zero: it is a character device, not a regular file"
    );
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    let mut text = "interval: 10s\n".to_owned();
    while text.len() <= crate::input::MAX_CONFIG_BYTES {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&big, &text).unwrap();
    let err = AgentSettings::load(&big).unwrap_err();
    assert_eq!(
        format!("{:#}", anyhow::Error::from(err)),
        format!(
            "cannot read the config file {}: it is larger than 1 MiB (1048576 bytes), \
             the most hostprof reads from it",
            big.display()
        )
    );
    // Up to the limit is fine.
    text.truncate(crate::input::MAX_CONFIG_BYTES);
    let end = text.rfind('\n').unwrap() + 1;
    text.truncate(end);
    std::fs::write(&big, &text).unwrap();
    let settings = AgentSettings::load(&big).unwrap();
    assert_eq!(settings.command.interval, Some(Duration::from_secs(10)));
}

#[test]
fn queue_bounds_must_hold_a_request() {
    let err = parse("queue_max_bytes: 0\n").unwrap_err().to_string();
    assert!(
        err.starts_with("agent.yaml:1:1: queue_max_bytes: 0 is too small: give at least 65536"),
        "{err}"
    );
    assert!(err.contains("the default, 33554432"), "{err}");
    let err = parse("\nqueue_max_requests: 0\n").unwrap_err().to_string();
    assert!(
        err.starts_with("agent.yaml:2:1: queue_max_requests: must be at least 1"),
        "{err}"
    );
    assert!(parse("queue_max_bytes: 65536\n").is_ok());
    let mut flags = AgentSettings::default();
    flags.command.queue_max_bytes = Some(0);
    let err = flags.resolve(|_| None).unwrap_err().to_string();
    assert!(err.starts_with("queue_max_bytes: 0 is too small"), "{err}");
}

#[test]
fn endpoints_are_checked_where_written() {
    let err = parse("frequency: 49\notlp_endpoint: http://collector:99999\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "agent.yaml:2:1: otlp_endpoint: \"http://collector:99999\" is not an OTLP \
             endpoint: expected a port from 1 to 65535"
        ),
        "{err}"
    );
    assert!(parse("otlp_endpoint: collector:4317\n").is_err());
    // An empty endpoint variable is unset: the agent takes the default,
    // record does not export.
    let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(String::new);
    let options = AgentSettings::default().resolve(env).unwrap();
    assert_eq!(options.exporter.endpoint, "http://localhost:4317");
    assert_eq!(
        RecordSettings::default().resolve(env).unwrap().exporter,
        None
    );
    let err = AgentSettings::default()
        .resolve(|k| (k == "OTEL_EXPORTER_OTLP_TIMEOUT").then(|| "0".to_owned()))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid OTEL_EXPORTER_OTLP_TIMEOUT \"0\""),
        "{err}"
    );
}
