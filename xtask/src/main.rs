//! `cargo xtask`: hostprof's development tasks.
//!
//! Every task that needs tools installs them first (idempotently), so each
//! command works on a fresh machine.

mod bench;
mod bench_agent;
mod bench_churn;
mod bench_kept;
mod bench_kinds;
mod bench_memory;
mod bench_suite;
mod bench_unwind;
mod cmd;
mod deploy;
mod ebpf;
mod fuzz;
mod setup;
// The test workloads' recipes, shared with the end-to-end tests.
#[path = "../../profiler-user/tests/workloads/recipes.rs"]
mod workloads;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "hostprof development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install everything building and testing needs (idempotent; needs root
    /// for the Debian packages).
    Setup {
        /// Only what building hostprof needs (the container image's build stage).
        #[arg(long)]
        build_only: bool,
    },
    /// Check the Helm chart and the plain manifests (render, sync, schemas).
    DeployCheck {
        /// Rewrite deploy/kubernetes/hostprof.yaml from the chart first.
        #[arg(long)]
        update: bool,
    },
    /// Build only the eBPF object and print where it is.
    BuildEbpf,
    /// `cargo fmt --check` and `cargo clippy -D warnings` over the workspace.
    Check,
    /// Set up, then run the whole test suite (extra args go to `cargo test`)
    /// and the deploy checks; with CI=true, every fuzz target briefly too.
    Test {
        /// Passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The stack corpus (issue 15): real programs sampled by hostprof while
    /// gdb snapshots them; prints each one's complete-stack share and gdb
    /// caller chains matched (one program: `--only NAME-PART`).
    Stacks {
        /// Only the programs whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Set up, build hostprof in release mode and run `hostprof record`
    /// (extra args go to it).
    Record {
        /// Passed to `hostprof record`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Issue 16's figures in one run, ending with one table of figure,
    /// measured value, goal and verdict: the agent on a steady host and on
    /// a build host (CPU, RSS + BPF maps), one-shot `hostprof record`
    /// against `perf record` + `perf report` beside it, BPF time per
    /// sample with both unwinders, samples kept at 1 kHz. About 10 minutes
    /// (`--quick`: about 3); fails at the end if a part failed. Needs root.
    Bench {
        #[command(flatten)]
        args: bench_suite::BenchArgs,
    },
    /// Run `hostprof agent` on a busy host for minutes, exporting to a local
    /// receiver, and report its CPU share, memory, bytes on the wire per
    /// minute and encode time per export.
    BenchAgent {
        /// How long the agent runs, in seconds.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// Sampling frequency in Hz.
        #[arg(long, default_value_t = 99)]
        frequency: u32,
        /// Export interval in seconds.
        #[arg(long, default_value_t = 10)]
        interval: u64,
        /// The host's load: `busy` (a busy loop per CPU) or `build` (a
        /// compile loop per CPU, `gcc -O2` and short Python scripts, plus
        /// exec probes: many short-lived processes with large binaries).
        #[arg(long, value_enum, default_value_t = bench_agent::Load::Busy)]
        load: bench_agent::Load,
        /// Measure this `hostprof` binary (another revision's, for a
        /// before/after comparison) instead of building this one.
        #[arg(long)]
        hostprof: Option<PathBuf>,
    },
    /// Simulate one 10 s window's drains and aggregation on hosts of 2 to
    /// 512 CPUs (at 99 Hz and 1 kHz) and print its cost per CPU and per
    /// sample: the drain must grow with the CPUs, not their square.
    BenchScale,
    /// Measure what process churn costs symbolization: the share of
    /// short-lived processes' samples symbolized, and hostprof's CPU and
    /// memory, at each rate of new processes per second.
    BenchChurn {
        /// Length of each capture, in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// New processes per second, comma-separated; one capture each.
        #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
        rates: Vec<u32>,
        /// How long each process runs, in milliseconds.
        #[arg(long, default_value_t = 2)]
        lifetime_ms: u32,
        /// Measure this `hostprof` binary (another revision's, for a
        /// before/after comparison) instead of building this one.
        #[arg(long)]
        hostprof: Option<PathBuf>,
        /// Then run `hostprof agent` this long at each rate and report its
        /// memory (0: skip).
        #[arg(long, default_value_t = 60)]
        agent_seconds: u64,
    },
    /// Build the fuzz targets in fuzz/ (cargo-fuzz, nightly, ASan) and run
    /// each for a while; report the inputs run and fail on a crash.
    Fuzz {
        /// How long each target runs, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (`cargo fuzz list` names them).
        #[arg(long)]
        target: Option<String>,
    },
    /// Measure the in-kernel .eh_frame unwinder against frame pointers in
    /// one run: BPF run time per sample (kernel.bpf_stats_enabled), BPF map
    /// memory of each mode, and unwind-table build speed. Needs root.
    BenchUnwind {
        /// Length of each of the two captures, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// An extra argument for every `hostprof record` (repeatable), to
        /// compare a setting's cost, e.g. `--record-arg=--trace-context-map
        /// --record-arg=none`.
        #[arg(long = "record-arg", value_name = "ARG", allow_hyphen_values = true)]
        record_args: Vec<String>,
        /// Another revision's release `hostprof` binary, run at the same
        /// time as this one in every mode: the report adds this / baseline
        /// per sample, free of the machine's drift between runs.
        #[arg(long, value_name = "HOSTPROF")]
        baseline: Option<PathBuf>,
    },
    /// What the off-CPU profile costs: a pipe ping-pong on one CPU (every
    /// hand-off a context switch) and an idle host, with no profiler,
    /// `--profiles cpu` and `--profiles cpu,off-cpu`: the load's rate,
    /// hostprof's own CPU and its BPF run time (kernel.bpf_stats_enabled).
    /// Needs root.
    BenchOffCpu {
        /// Length of each measurement, in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Passed to `hostprof record --off-cpu-max-rate` (default:
        /// hostprof's).
        #[arg(long)]
        off_cpu_max_rate: Option<u32>,
    },
    /// What the page-fault profile costs: a thread touching fresh memory
    /// (one CPU's worth of page faults) and an idle host, with no
    /// profiler, `--profiles cpu` and `--profiles cpu,page-faults`: the
    /// load's faults per second, hostprof's own CPU and its BPF run time.
    /// Needs root.
    BenchPageFaults {
        /// Length of each measurement, in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// What the memory profile costs: a malloc/free loop alone and under
    /// `hostprof agent --profiles memory --pid`: nanoseconds per pair, the
    /// probes' BPF time per call, the agent's CPU and memory. Needs root.
    BenchMemory {
        /// Length of each run of the load, in seconds.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rounds (alone and profiled each); medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

/// Seconds each fuzz target runs in `cargo xtask test` under CI.
const CI_FUZZ_SECONDS: u64 = 10;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_owned()
}

/// Runs the task; a failure prints its error chain on one line, without a
/// backtrace (CI shows the end of the output: the failing tests' messages
/// must be the last thing there, not the xtask's own frames).
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::Setup { build_only } => setup::run(
            &root,
            if build_only {
                setup::Scope::Build
            } else {
                setup::Scope::All
            },
        ),
        Task::DeployCheck { update } => {
            setup::run(&root, setup::Scope::All)?;
            deploy::check(&root, update)
        }
        Task::BuildEbpf => ebpf::build(&root).map(|_| ()),
        Task::Check => {
            cmd::cargo(&root, &["fmt", "--all", "--", "--check"])?;
            cmd::cargo(
                &root,
                &[
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "profiler-ebpf",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            )
        }
        Task::Test { args } => {
            setup::run(&root, setup::Scope::All)?;
            let mut cargo_args = vec!["test", "--workspace", "--exclude", "profiler-ebpf"];
            cargo_args.extend(args.iter().map(String::as_str));
            cmd::cargo(&root, &cargo_args)?;
            deploy::check(&root, false)?;
            // The fuzz targets' cold build takes minutes more than the
            // suite (ASan, every dependency again): CI pays it, a
            // developer runs `cargo xtask fuzz` when touching a parser.
            if std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1") {
                fuzz::run(&root, CI_FUZZ_SECONDS, None)?;
            }
            Ok(())
        }
        Task::BenchScale => {
            let mut test = std::process::Command::new("cargo");
            test.args(["test", "--release", "-p", "hostprof", "--lib", "--"])
                .args(["sampler::scale::tests::print_table", "--exact", "--ignored"])
                .args(["--nocapture", "--test-threads", "1"])
                .current_dir(&root);
            cmd::run(&mut test)
        }
        Task::Stacks { only } => {
            setup::run(&root, setup::Scope::All)?;
            let mut test = std::process::Command::new("cargo");
            test.args(["test", "-p", "hostprof", "--test", "e2e", "--"])
                .args(["stacks::print_table", "--exact", "--ignored", "--nocapture"])
                .current_dir(&root);
            if let Some(only) = only {
                test.env("HOSTPROF_STACKS_ONLY", only);
            }
            cmd::run(&mut test)
        }
        Task::Record { args } => {
            let hostprof = release_build(&root)?;
            let mut record = vec!["record".to_owned()];
            record.extend(args);
            cmd::run(
                std::process::Command::new(hostprof)
                    .args(&record)
                    .current_dir(&root),
            )
        }
        Task::Bench { args } => {
            let hostprof = release_build(&root)?;
            bench_suite::run(&args, &hostprof, &root)
        }
        Task::BenchAgent {
            seconds,
            frequency,
            interval,
            load,
            hostprof,
        } => {
            let hostprof = match hostprof {
                Some(path) => path,
                None => release_build(&root)?,
            };
            bench_agent::run(
                &bench_agent::AgentBenchOptions {
                    duration: Duration::from_secs(seconds),
                    frequency,
                    interval: Duration::from_secs(interval),
                    hostprof,
                    work_dir: bench::default_work_dir(&root),
                    root,
                },
                load,
            )
            .map(|_| ())
        }
        Task::BenchChurn {
            seconds,
            rates,
            lifetime_ms,
            hostprof,
            agent_seconds,
        } => {
            let hostprof = match hostprof {
                Some(path) => path,
                None => release_build(&root)?,
            };
            bench_churn::run(&bench_churn::ChurnBenchOptions {
                duration: Duration::from_secs(seconds),
                rates,
                lifetime_ms,
                agent_duration: Duration::from_secs(agent_seconds),
                hostprof,
                root: root.clone(),
                work_dir: bench::default_work_dir(&root),
            })
        }
        Task::BenchOffCpu {
            seconds,
            off_cpu_max_rate,
        } => {
            bench_unwind::preflight("bench-off-cpu")?;
            let hostprof = release_build(&root)?;
            bench_kinds::run_off_cpu(&bench_kinds::KindBenchOptions {
                duration: Duration::from_secs(seconds),
                off_cpu_max_rate,
                hostprof,
                work_dir: bench::default_work_dir(&root),
            })
        }
        Task::BenchPageFaults { seconds } => {
            bench_unwind::preflight("bench-page-faults")?;
            let hostprof = release_build(&root)?;
            bench_kinds::run_page_faults(&bench_kinds::KindBenchOptions {
                duration: Duration::from_secs(seconds),
                off_cpu_max_rate: None,
                hostprof,
                work_dir: bench::default_work_dir(&root),
            })
        }
        Task::BenchMemory { seconds, rounds } => {
            bench_unwind::preflight("bench-memory")?;
            let hostprof = release_build(&root)?;
            bench_memory::run(&bench_memory::MemoryBenchOptions {
                duration: Duration::from_secs(seconds),
                rounds: rounds.max(1),
                hostprof,
                root: root.clone(),
                work_dir: bench::default_work_dir(&root),
            })
        }
        Task::Fuzz { seconds, target } => {
            setup::run(&root, setup::Scope::Build)?;
            setup::cargo_fuzz()?;
            fuzz::run(&root, seconds, target.as_deref())
        }
        Task::BenchUnwind {
            seconds,
            record_args,
            baseline,
        } => {
            // Before the release build: it cannot run without root.
            bench_unwind::preflight("bench-unwind")?;
            let hostprof = release_build(&root)?;
            bench_unwind::run(&bench_unwind::UnwindBenchOptions {
                duration: Duration::from_secs(seconds),
                hostprof,
                work_dir: bench::default_work_dir(&root),
                root,
                record_args,
                baseline,
                python: true,
                table_builds: true,
            })
            .map(|_| ())
        }
    }
}

/// Sets up, builds the release binary and returns its path.
fn release_build(root: &Path) -> Result<PathBuf> {
    setup::run(root, setup::Scope::All)?;
    cmd::cargo(root, &["build", "--release", "-p", "hostprof"])?;
    Ok(root.join("target/release/hostprof"))
}
